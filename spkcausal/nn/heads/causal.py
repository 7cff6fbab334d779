"""The Causal Norm heads (Tang et al., NeurIPS 2020): Causal Norm and Causal Norm AAM, with the moving-average
feature x_bar that TDE removes (spkcausal.nn.tde)."""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ...schema import AtLeast1
from ...utils import UsageError
from ..longtail import ClassMargins, FeatureTransferOption
from .margins import LongTailOptions, apply_margin
from .ops import EPS, HEADS, FeatureNorm, causal_norm_weight, feature_heads, float32, in_float32, split_heads

__all__ = ["CausalNormHead", "CausalNormAAMHead", "is_causal"]


@HEADS.register("causal_norm")
class CausalNormHead(nn.Module):
    """Multi-head Causal Norm classifier with the moving-average feature x_bar (Tang et al., NeurIPS 2020).

    y_i = tau/K * sum_k (w_i^k . x^k) / ((||w_i^k|| + gamma) * ||x^k||).

    `feature_norm: capsule` (the paper's Capsule row) replaces x^k / ||x^k|| by the squash
    ||x^k|| / (1 + ||x^k||) * x^k / ||x^k||; gamma = 0 gives the (K-chunk) cosine classifier.
    """

    def __init__(self, embed_dim: int, num_classes: int, num_heads: AtLeast1 = 2, tau: float = 16.0,
                 gamma: float = 1.0 / 32, momentum: float | Literal["auto"] = 0.9, sync_mean: bool = True,
                 feature_norm: FeatureNorm = "l2"):
        super().__init__()
        if embed_dim % num_heads:
            raise UsageError(f"embed_dim {embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.num_heads, self.tau, self.gamma = int(num_heads), float(tau), float(gamma)
        # "auto": the trainer sets mu at every epoch start from the lr (schedules.momentum_at, the paper's code)
        self.momentum_auto = momentum == "auto"
        self.momentum, self.sync_mean = 0.9 if self.momentum_auto else float(momentum), bool(sync_mean)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        self.register_buffer("mean_feature", torch.zeros(embed_dim))
        self.feature_norm = feature_norm  # checked by its annotation (build_head)

    @property
    def scale(self) -> float:
        """Alias of tau (the logit scale s)."""
        return self.tau

    @torch.no_grad()
    def update_mean(self, x: Tensor) -> None:
        """x_bar <- mu * x_bar + mean over the batch (summed over all ranks when torch.distributed is up)."""
        x = x.detach().to(self.mean_feature.dtype)
        stats = torch.cat([x.sum(dim=0), x.new_tensor([x.shape[0]])])
        if self.sync_mean and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        n = stats[-1].clamp_min(1.0)
        self.mean_feature.mul_(self.momentum).add_(stats[:-1] / n)

    def normalized_weight(self) -> Tensor:
        """w_i^k / (||w_i^k|| + gamma), (C, D)."""
        return causal_norm_weight(float32(self.weight), self.num_heads, self.gamma)

    @in_float32
    def classify_normalized(self, e: Tensor) -> Tensor:
        """The head on features that are already per-chunk normalised (or TDE'd): tau/K * e . w~ (no x norm);
        with sub-centres ((C, S, D) weights) the best sub-centre's logit per class."""
        w = self.normalized_weight()
        if w.ndim == 2:
            return (self.tau / self.num_heads) * F.linear(e, w)
        y = F.linear(e, w.reshape(-1, w.shape[-1])).view(e.shape[0], w.shape[0], w.shape[1])
        return (self.tau / self.num_heads) * y.amax(dim=-1)

    @in_float32
    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, C); updates x_bar in training mode."""
        if self.training:
            self.update_mean(x)
        return self.classify_normalized(feature_heads(x, self.num_heads, self.feature_norm))

    def chunk_scale(self, xk: Tensor) -> Tensor | float:
        """What the feature normalisation multiplies a chunk's unit vector by: 1 (l2) or ||x^k|| / (1 + ||x^k||)."""
        if self.feature_norm != "capsule":
            return 1.0
        n = xk.norm(dim=-1, keepdim=True)
        return n / (1.0 + n)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, num_heads={self.num_heads}, "
                f"tau={self.tau}, gamma={self.gamma}, momentum={'auto' if self.momentum_auto else self.momentum}"
                + ("" if self.feature_norm == "l2" else f", feature_norm={self.feature_norm}"))


@HEADS.register("causal_norm_aam")
class CausalNormAAMHead(CausalNormHead, LongTailOptions):
    """Causal Norm with an additive angular margin per chunk.

    y_i = s/K * sum_k r_i^k * cos(theta_i^k + m [i == label]),  r_i^k = ||w_i^k|| / (||w_i^k|| + gamma).
    With m = 0 this is exactly CausalNormHead with tau = s. With S sub-centres per class, class i uses its
    sub-centre j* = argmax_j of the margin-free logit s/K sum_k r_ij^k cos(theta_ij^k) (one sub-centre for all
    chunks), and the margin goes on that sub-centre's chunk cosines.
    """

    def __init__(self, embed_dim: int, num_classes: int, num_heads: AtLeast1 = 2, tau: float = 32.0,
                 gamma: float = 1.0 / 32, momentum: float | Literal["auto"] = 0.9, margin: float = 0.2,
                 easy_margin: bool = False, sync_mean: bool = True, class_margins: ClassMargins = None,
                 subcenters: AtLeast1 = 1, feature_transfer: FeatureTransferOption = None, class_counts: Any = None,
                 feature_norm: FeatureNorm = "l2"):
        super().__init__(embed_dim, num_classes, num_heads, tau, gamma, momentum, sync_mean, feature_norm)
        self.margin, self.easy_margin = float(margin), bool(easy_margin)
        self._init_long_tail(embed_dim, num_classes, class_counts, class_margins, subcenters, feature_transfer)

    def set_margin(self, m: float) -> None:
        """Set the margin (driven by the trainer's margin schedule)."""
        self.margin = float(m)

    @in_float32
    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, C); margin (and feature transfer) only in training mode with labels; updates x_bar (from
        the features before any transfer) in training mode."""
        if self.training:
            self.update_mean(x)
        x = self.transfer(x, labels)
        if labels is None or not self.training or self.margin == 0.0:
            return self.classify_normalized(feature_heads(x, self.num_heads, self.feature_norm))
        margin = self.class_margin(labels)
        if self.subcenters > 1:
            return self._subcenter_margin_logits(x, labels, margin)
        out = 0.0
        for xk, wk in zip(split_heads(x, self.num_heads), split_heads(float32(self.weight), self.num_heads)):
            wn = wk.norm(dim=-1)
            cos = F.linear(F.normalize(xk, dim=-1, eps=EPS), wk / wn.clamp_min(EPS).unsqueeze(-1))
            out = out + (wn / (wn + self.gamma)) * self.chunk_scale(xk) * apply_margin(cos, labels, margin,
                                                                                         self.easy_margin)
        return (self.tau / self.num_heads) * out

    def _subcenter_margin_logits(self, x: Tensor, labels: Tensor, margin: float | Tensor) -> Tensor:
        """Training logits with sub-centres: each class's best sub-centre (margin-free), then the chunk margins."""
        b, c, s = x.shape[0], self.num_classes, self.subcenters
        coss, ratios = [], []
        for xk, wk in zip(split_heads(x, self.num_heads), split_heads(float32(self.weight), self.num_heads)):
            wn = wk.norm(dim=-1)  # (C, S)
            wu = (wk / wn.clamp_min(EPS).unsqueeze(-1)).reshape(c * s, -1)
            coss.append(F.linear(F.normalize(xk, dim=-1, eps=EPS), wu).view(b, c, s))
            q = self.chunk_scale(xk)  # capsule: the squash factor of this chunk, (B, 1)
            q = q.unsqueeze(-1) if isinstance(q, Tensor) else q
            ratios.append((wn / (wn + self.gamma) * q).expand(b, c, s))
        best = sum(r * cs for r, cs in zip(ratios, coss)).argmax(dim=-1, keepdim=True)  # (B, C, 1)
        out = 0.0
        for cs, r in zip(coss, ratios):
            out = out + r.gather(-1, best).squeeze(-1) * apply_margin(cs.gather(-1, best).squeeze(-1), labels,
                                                                        margin, self.easy_margin)
        return (self.tau / self.num_heads) * out

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", margin={self.margin}, easy_margin={self.easy_margin}"
                + self.long_tail_repr())


def is_causal(head: nn.Module | str) -> bool:
    """True for a Causal Norm head (an instance or a registry name): it tracks x_bar, so TDE applies to it."""
    if isinstance(head, str):
        return head in HEADS and issubclass(HEADS.get(head), CausalNormHead)
    return isinstance(head, CausalNormHead)
