"""Classifier heads: linear, cosine, AAM (ArcFace), Causal Norm and Causal Norm AAM (docs/design.md section 2).

Every head maps (embeddings (B, D), labels (B,) or None) to logits (B, C) and keeps its class weights in
`.weight` (C, D), or (C, K, D) for K sub-centres per class (`subcenters`, AAM and Causal Norm AAM). Margins are
applied only in training mode and only when labels are given, so eval-time logits are margin-free. The Causal
Norm heads track the moving-average feature `mean_feature` (x_bar) as a registered buffer, updated inside
forward in training mode from the detached raw embeddings: `x_bar <- mu * x_bar + mean_batch(x)` (no (1 - mu)
factor, as in the reference code; both forms give exactly the same direction from a zero start, and only the
direction is used).

Precision: the cosine, AAM and Causal Norm heads compute their whole logit path (normalisation, the cosine
matmul, the margin, the scale) in float32 even inside an autocast region: autocast is switched off in their
methods and bf16/fp16 inputs are cast up (float64 stays float64). In bf16 a cosine near 1 rounds to 1, where
sin(theta) and with it cos(theta + m) lose all precision. The plain linear head is left to autocast.

Long-tail options of `aam` and `causal_norm_aam` (spkcausal.nn.longtail; docs/causal.md): `class_margins: ldam`
(per-class margin m_c = m * (n_min / n_c)^(1/4)), `subcenters: K` (class score = best sub-centre) and
`feature_transfer` (tail features spread like the head's, training only). All default off, and off they leave
the head exactly as it was (same parameters, buffers and numbers).
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry, check_kwargs
from ..utils import UsageError
from .longtail import (
    FeatureTransfer,
    check_class_margins,
    check_feature_transfer,
    check_subcenters,
    class_centres,
    ldam_margin_scale,
)

EPS = 1e-12

HEADS: Registry[type[nn.Module]] = Registry("head")


def split_heads(x: Tensor, num_heads: int) -> tuple[Tensor, ...]:
    """Split the last axis into `num_heads` contiguous equal chunks; the feature size must divide evenly."""
    d = x.shape[-1]
    if num_heads < 1 or d % num_heads:
        raise UsageError(f"feature size {d} is not divisible by num_heads={num_heads}")
    return torch.split(x, d // num_heads, dim=-1)


def normalize_heads(x: Tensor, num_heads: int) -> Tensor:
    """x^k / ||x^k|| for every chunk k, concatenated back to the full width."""
    return torch.cat([F.normalize(c, dim=-1, eps=EPS) for c in split_heads(x, num_heads)], dim=-1)


FEATURE_NORMS = ("l2", "capsule")


def squash_heads(x: Tensor, num_heads: int) -> Tensor:
    """Capsule squash of every chunk, ||x^k|| / (1 + ||x^k||) * x^k / ||x^k||, concatenated to the full width."""
    parts = []
    for c in split_heads(x, num_heads):
        n = c.norm(dim=-1, keepdim=True)
        parts.append(c / (1.0 + n))  # = n / (1 + n) * c / n, without dividing by a zero norm
    return torch.cat(parts, dim=-1)


def feature_heads(x: Tensor, num_heads: int, feature_norm: str = "l2") -> Tensor:
    """The per-chunk feature normalisation of a Causal Norm head: unit length (l2) or the capsule squash."""
    if feature_norm == "capsule":
        return squash_heads(x, num_heads)
    return normalize_heads(x, num_heads)


def check_feature_norm(value: Any) -> str:
    """The head option feature_norm, checked: one of FEATURE_NORMS."""
    if value not in FEATURE_NORMS:
        raise UsageError(f"head feature_norm must be one of {', '.join(FEATURE_NORMS)}, got {value!r}")
    return str(value)


def causal_norm_weight(weight: Tensor, num_heads: int, gamma: float) -> Tensor:
    """w_i^k / (||w_i^k|| + gamma) for every class i and chunk k, concatenated back to (C, D)."""
    return torch.cat([c / (c.norm(dim=-1, keepdim=True) + gamma) for c in split_heads(weight, num_heads)], dim=-1)


_F = TypeVar("_F", bound=Callable[..., Tensor])


def _float32(t: Tensor) -> Tensor:
    """t in float32 if it is half precision (bf16 / fp16); float32 and float64 tensors are returned as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _in_float32(method: _F) -> _F:
    """Run a head method on x (its first argument) with autocast off and x in at least float32 precision."""
    @functools.wraps(method)
    def wrapper(self: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # Autocast would re-cast F.linear's inputs to bf16 even when x is float32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return method(self, _float32(x), *args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _arc_margin(cos: Tensor, margin: float | Tensor, easy_margin: bool) -> Tensor:
    """cos(theta + m) with ArcFace's easy-margin / threshold handling so the target logit stays monotonic; m is
    a number or a tensor broadcast against cos (per-row margins, (B, 1))."""
    # At cos exactly 1 the clamp masks the (infinite) sqrt gradient to 0 instead of producing NaN, unlike an
    # acos-based formula.
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(0.0))
    if isinstance(margin, Tensor):
        m = margin.to(cos.dtype)
        phi = cos * torch.cos(m) - sin * torch.sin(m)
        cos_threshold, mm = -torch.cos(m), torch.sin(m) * m  # cos(pi - m), sin(pi - m) * m
    else:
        phi = cos * math.cos(margin) - sin * math.sin(margin)
        cos_threshold = math.cos(math.pi - margin)
        mm = math.sin(math.pi - margin) * margin
    if easy_margin:
        return torch.where(cos > 0, phi, cos)
    # Beyond theta = pi - m, cos(theta + m) would increase again; ArcFace substitutes a linear penalty.
    return torch.where(cos > cos_threshold, phi, cos - mm)


def _apply_margin(cos: Tensor, labels: Tensor, margin: float | Tensor, easy_margin: bool) -> Tensor:
    """Replace the target-class cosine of each row by cos(theta + m) (m a number or per row, (B, 1))."""
    target = F.one_hot(labels.long(), cos.shape[-1]).to(torch.bool)
    return torch.where(target, _arc_margin(cos, margin, easy_margin), cos)


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Plain softmax classifier: logits = x W^T (+ b)."""

    def __init__(self, embed_dim: int, num_classes: int, bias: bool = False):
        super().__init__()
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, C); labels are accepted for a uniform interface and ignored."""
        return F.linear(x, self.weight, self.bias)


@HEADS.register("cosine")
class CosineHead(nn.Module):
    """Normalised softmax: logits = s * cos(x, w_i)."""

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.embed_dim, self.num_classes, self.scale = embed_dim, num_classes, float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    @_in_float32
    def cosine(self, x: Tensor) -> Tensor:
        """Plain cosine between every embedding and every class weight, (B, C), in float32 or float64."""
        return F.linear(F.normalize(x, dim=-1, eps=EPS), F.normalize(_float32(self.weight), dim=-1, eps=EPS))

    @_in_float32
    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, C)."""
        return self.scale * self.cosine(x)


class _LongTailOptions(nn.Module):
    """The long-tail options shared by the margin heads: LDAM margins, sub-centres, feature transfer."""

    margin: float
    weight: nn.Parameter

    def _init_long_tail(self, embed_dim: int, num_classes: int, class_counts: Any, class_margins: Any,
                        subcenters: Any, feature_transfer: Any) -> None:
        self.class_margins = check_class_margins(class_margins)
        self.subcenters = check_subcenters(subcenters)
        ft = check_feature_transfer(feature_transfer)
        if self.class_margins == "ldam":
            # Without counts (a head rebuilt from a checkpoint) the scale comes back with the state dict.
            self.register_buffer("margin_scale", torch.ones(num_classes) if class_counts is None
                                 else ldam_margin_scale(class_counts, num_classes))
        if self.subcenters > 1:
            self.weight = nn.Parameter(torch.empty(num_classes, self.subcenters, embed_dim))
            bound = 1.0 / math.sqrt(embed_dim)
            nn.init.uniform_(self.weight, -bound, bound)
        self.feature_transfer = None if ft is None else FeatureTransfer(num_classes, class_counts, **ft)

    def class_margin(self, labels: Tensor) -> float | Tensor:
        """The margin of each row's class: m, or with LDAM m * (n_min / n_y)^(1/4) as a (B, 1) tensor."""
        if self.class_margins is None:
            return self.margin
        return (self.margin * self.margin_scale[labels.long()]).unsqueeze(-1)

    def transfer(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """Feature transfer to tail classes, in training mode with labels only; x itself otherwise."""
        if self.feature_transfer is None or labels is None or not self.training:
            return x
        return self.feature_transfer(x, labels, class_centres(_float32(self.weight), x, labels))

    def long_tail_repr(self) -> str:
        return (f", class_margins={self.class_margins}, subcenters={self.subcenters}, "
                f"feature_transfer={self.feature_transfer is not None}")


@HEADS.register("aam")
class AAMHead(CosineHead, _LongTailOptions):
    """Additive angular margin (ArcFace): the target logit is s * cos(theta + m) during training.

    With K sub-centres, cos(x, class i) = max_j cos(x, w_ij) before the margin (Deng et al., ECCV 2020)."""

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 32.0, margin: float = 0.2,
                 easy_margin: bool = False, class_margins: str | None = None, subcenters: int = 1,
                 feature_transfer: dict[str, Any] | bool | None = None, class_counts: Any = None):
        super().__init__(embed_dim, num_classes, scale)
        self.easy_margin = bool(easy_margin)
        self.margin = float(margin)
        self._init_long_tail(embed_dim, num_classes, class_counts, class_margins, subcenters, feature_transfer)

    def set_margin(self, m: float) -> None:
        """Set the margin (driven by the trainer's margin schedule)."""
        self.margin = float(m)

    @_in_float32
    def subcenter_cosine(self, x: Tensor) -> Tensor:
        """Cosine to every sub-centre, (B, C, K) (K = 1 without sub-centres)."""
        w = _float32(self.weight)
        w = w.reshape(-1, w.shape[-1])
        cos = F.linear(F.normalize(x, dim=-1, eps=EPS), F.normalize(w, dim=-1, eps=EPS))
        return cos.view(x.shape[0], self.num_classes, self.subcenters)

    @_in_float32
    def cosine(self, x: Tensor) -> Tensor:
        """Class cosine (B, C): the plain cosine, or the best sub-centre's."""
        if self.subcenters == 1:
            return super().cosine(x)
        return self.subcenter_cosine(x).amax(dim=-1)

    @_in_float32
    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, C); the margin (and feature transfer) only in training mode when labels are given."""
        x = self.transfer(x, labels)
        cos = self.cosine(x)
        if labels is not None and self.training and self.margin != 0.0:
            cos = _apply_margin(cos, labels, self.class_margin(labels), self.easy_margin)
        return self.scale * cos

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, scale={self.scale}, "
                f"margin={self.margin}, easy_margin={self.easy_margin}" + self.long_tail_repr())


@HEADS.register("causal_norm")
class CausalNormHead(nn.Module):
    """Multi-head Causal Norm classifier with the moving-average feature x_bar (Tang et al., NeurIPS 2020).

    y_i = tau/K * sum_k (w_i^k . x^k) / ((||w_i^k|| + gamma) * ||x^k||).

    `feature_norm: capsule` (the paper's Capsule row) replaces x^k / ||x^k|| by the squash
    ||x^k|| / (1 + ||x^k||) * x^k / ||x^k||; gamma = 0 gives the (K-chunk) cosine classifier.
    """

    def __init__(self, embed_dim: int, num_classes: int, num_heads: int = 2, tau: float = 16.0,
                 gamma: float = 1.0 / 32, momentum: float | str = 0.9, sync_mean: bool = True,
                 feature_norm: str = "l2"):
        super().__init__()
        if embed_dim % num_heads:
            raise UsageError(f"embed_dim {embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.num_heads, self.tau, self.gamma = int(num_heads), float(tau), float(gamma)
        # "auto": the trainer sets mu at every epoch start from the lr (schedules.momentum_at, the paper's code)
        self.momentum_auto = momentum == "auto"
        if not self.momentum_auto and not isinstance(momentum, (int, float)):
            raise UsageError(f"head momentum must be a number in [0, 1) or 'auto', got {momentum!r}")
        self.momentum, self.sync_mean = 0.9 if self.momentum_auto else float(momentum), bool(sync_mean)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        self.register_buffer("mean_feature", torch.zeros(embed_dim))
        self.feature_norm = check_feature_norm(feature_norm)

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
        return causal_norm_weight(_float32(self.weight), self.num_heads, self.gamma)

    @_in_float32
    def classify_normalized(self, e: Tensor) -> Tensor:
        """The head on features that are already per-chunk normalised (or TDE'd): tau/K * e . w~ (no x norm);
        with sub-centres ((C, S, D) weights) the best sub-centre's logit per class."""
        w = self.normalized_weight()
        if w.ndim == 2:
            return (self.tau / self.num_heads) * F.linear(e, w)
        y = F.linear(e, w.reshape(-1, w.shape[-1])).view(e.shape[0], w.shape[0], w.shape[1])
        return (self.tau / self.num_heads) * y.amax(dim=-1)

    @_in_float32
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
class CausalNormAAMHead(CausalNormHead, _LongTailOptions):
    """Causal Norm with an additive angular margin per chunk.

    y_i = s/K * sum_k r_i^k * cos(theta_i^k + m [i == label]),  r_i^k = ||w_i^k|| / (||w_i^k|| + gamma).
    With m = 0 this is exactly CausalNormHead with tau = s. With S sub-centres per class, class i uses its
    sub-centre j* = argmax_j of the margin-free logit s/K sum_k r_ij^k cos(theta_ij^k) (one sub-centre for all
    chunks), and the margin goes on that sub-centre's chunk cosines.
    """

    def __init__(self, embed_dim: int, num_classes: int, num_heads: int = 2, tau: float = 32.0,
                 gamma: float = 1.0 / 32, momentum: float | str = 0.9, margin: float = 0.2, easy_margin: bool = False,
                 sync_mean: bool = True, class_margins: str | None = None, subcenters: int = 1,
                 feature_transfer: dict[str, Any] | bool | None = None, class_counts: Any = None,
                 feature_norm: str = "l2"):
        super().__init__(embed_dim, num_classes, num_heads, tau, gamma, momentum, sync_mean, feature_norm)
        self.margin, self.easy_margin = float(margin), bool(easy_margin)
        self._init_long_tail(embed_dim, num_classes, class_counts, class_margins, subcenters, feature_transfer)

    def set_margin(self, m: float) -> None:
        """Set the margin (driven by the trainer's margin schedule)."""
        self.margin = float(m)

    @_in_float32
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
        for xk, wk in zip(split_heads(x, self.num_heads), split_heads(_float32(self.weight), self.num_heads)):
            wn = wk.norm(dim=-1)
            cos = F.linear(F.normalize(xk, dim=-1, eps=EPS), wk / wn.clamp_min(EPS).unsqueeze(-1))
            out = out + (wn / (wn + self.gamma)) * self.chunk_scale(xk) * _apply_margin(cos, labels, margin,
                                                                                         self.easy_margin)
        return (self.tau / self.num_heads) * out

    def _subcenter_margin_logits(self, x: Tensor, labels: Tensor, margin: float | Tensor) -> Tensor:
        """Training logits with sub-centres: each class's best sub-centre (margin-free), then the chunk margins."""
        b, c, s = x.shape[0], self.num_classes, self.subcenters
        coss, ratios = [], []
        for xk, wk in zip(split_heads(x, self.num_heads), split_heads(_float32(self.weight), self.num_heads)):
            wn = wk.norm(dim=-1)  # (C, S)
            wu = (wk / wn.clamp_min(EPS).unsqueeze(-1)).reshape(c * s, -1)
            coss.append(F.linear(F.normalize(xk, dim=-1, eps=EPS), wu).view(b, c, s))
            q = self.chunk_scale(xk)  # capsule: the squash factor of this chunk, (B, 1)
            q = q.unsqueeze(-1) if isinstance(q, Tensor) else q
            ratios.append((wn / (wn + self.gamma) * q).expand(b, c, s))
        best = sum(r * cs for r, cs in zip(ratios, coss)).argmax(dim=-1, keepdim=True)  # (B, C, 1)
        out = 0.0
        for cs, r in zip(coss, ratios):
            out = out + r.gather(-1, best).squeeze(-1) * _apply_margin(cs.gather(-1, best).squeeze(-1), labels,
                                                                        margin, self.easy_margin)
        return (self.tau / self.num_heads) * out

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", margin={self.margin}, easy_margin={self.easy_margin}"
                + self.long_tail_repr())


def check_head_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The head section's keys as the head class takes them (a Causal Norm head's `scale` is its `tau`); a key it
    does not have, or a value of the wrong kind, is a UsageError naming it."""
    cls, kwargs = HEADS.get(name), dict(kwargs)
    if issubclass(cls, CausalNormHead) and "scale" in kwargs:
        if "tau" in kwargs and kwargs["tau"] != kwargs["scale"]:
            raise UsageError("give either tau or scale for a Causal Norm head, not both")
        kwargs["tau"] = kwargs.pop("scale")
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "embed_dim", "num_classes", "class_counts"}
    bad = set(kwargs) - params
    if bad:
        raise UsageError(f"unknown key(s) {sorted(bad)} in config section 'head' for head {name!r}; expected "
                         f"some of {sorted(params)}")
    check_kwargs(cls, kwargs, "head")
    return kwargs


def build_head(name: str, embed_dim: int, num_classes: int, class_counts: Any = None, **kwargs: Any) -> nn.Module:
    """Build a head by registry name; for Causal Norm heads `scale` is accepted as an alias of `tau`.

    `class_counts` (training utterances per class) reach the heads that use them (LDAM margins, feature
    transfer) and are dropped for the others; an option the head does not have is a UsageError naming it."""
    cls = HEADS.get(name)
    kwargs = check_head_kwargs(name, kwargs)
    if "class_counts" in inspect.signature(cls.__init__).parameters:
        kwargs["class_counts"] = class_counts
    return cls(embed_dim, num_classes, **kwargs)


def is_causal(head: nn.Module | str) -> bool:
    """True for a Causal Norm head (an instance or a registry name): it tracks x_bar, so TDE applies to it."""
    if isinstance(head, str):
        return head in HEADS and issubclass(HEADS.get(head), CausalNormHead)
    return isinstance(head, CausalNormHead)


from . import oltr as _oltr  # noqa: E402,F401  (registers the "oltr" head; it builds on this module)
