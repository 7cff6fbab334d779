"""OLTR's dynamic meta-embedding head (Liu et al., CVPR 2019, "Large-scale long-tailed recognition in an open
world"), trained in two stages inside one run (docs/causal.md, "OLTR and Decouple-OLTR").

- Stage 1 (epochs 1 .. stage1_epochs): a plain AAM classifier on the extractor's embedding x, the baseline.
  In its last epoch the head sums the detached direct features per class.
- The direct feature is v = x / ||x||: speaker embeddings are scored by cosine, and their length is arbitrary
  (the AAM loss ignores it), so the squared distances of the memory and the centroid loss are taken on the unit
  sphere; on raw embeddings the centroid loss drove their norms to ~1e7 within an epoch of the tiny demo.
- At the first stage-2 epoch the visual memory M (class centroids c_i) is set to those class means and the
  hallucinator to the stage-1 class directions (`init_memory`).
- Stage 2: meta-embedding
      o = softmax(T_hal v),  v_memory = o^T M,  e = tanh(T_sel v),  gamma = min_i ||v - c_i||_2,
      v_meta = (r / gamma) * (v + e * v_memory)                (r = reach_scale, 10 in the authors' code)
  classified by the cosine-norm classifier  y_i = s * ||v_meta|| / (1 + ||v_meta||) * cos(v_meta, w_i),
  plus the discriminative centroid loss on the direct features (`centroid_loss`), which the training step adds
  to the classification loss (`extra_loss`).

The trainer tells the head the epoch (`set_epoch`); everything the switch needs (the class sums, the memory,
the stage flag) is state, so a resumed run repeats the uninterrupted one exactly. Parameters a stage does not
use enter its logits with weight zero, so DDP sees every parameter in every step.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ...schema import NonNegative, Positive
from ...utils import UsageError
from .margins import apply_margin
from .ops import EPS, HEADS, float32, in_float32

__all__ = ["OLTRHead", "centroid_loss", "cos_norm_logits", "meta_embedding", "stage1_epoch_count"]


def meta_embedding(v: Tensor, centroids: Tensor, hallucinator: nn.Module, selector: nn.Module,
                   reach_scale: float = 10.0) -> Tensor:
    """v_meta = (r / min_i ||v - c_i||) * (v + tanh(T_sel v) * softmax(T_hal v) M), (B, D)."""
    reach = reach_scale / torch.cdist(v, centroids).amin(dim=1, keepdim=True).clamp_min(EPS)
    memory = torch.softmax(hallucinator(v), dim=1) @ centroids
    return reach * (v + torch.tanh(selector(v)) * memory)


def cos_norm_logits(v: Tensor, weight: Tensor, scale: float) -> Tensor:
    """s * ||v|| / (1 + ||v||) * cos(v, w_i), (B, C): the authors' cosine-norm classifier."""
    norm = v.norm(dim=1, keepdim=True)
    return scale * (norm / (1.0 + norm)) * F.linear(F.normalize(v, dim=1, eps=EPS), F.normalize(weight, dim=1,
                                                                                                 eps=EPS))


def centroid_loss(v: Tensor, labels: Tensor, centroids: Tensor, margin: float = 10.0,
                  repel_weight: float = 0.01) -> Tensor:
    """Discriminative centroid loss: sum_b ||v_b - c_yb||^2 / (2B) + repel_weight * max(0, margin - mean of
    ||v_b - c_j||^2 over all (b, j) with the own-class pairs counted as 0)."""
    d2 = torch.cdist(v, centroids).pow(2)  # (B, C)
    own_col = labels.long().unsqueeze(1)
    # gather and scatter, not a boolean index: d2[mask] has a data-dependent size, a GPU wait at every step
    own = torch.zeros_like(d2, dtype=torch.bool).scatter_(1, own_col, True)
    attract = d2.gather(1, own_col).sum() / (2.0 * len(v))
    repel = (margin - d2.masked_fill(own, 0.0).mean()).clamp_min(0.0)
    return attract + repel_weight * repel


def stage1_epoch_count(value: Any, epochs: int) -> int | None:
    """head.stage1_epochs: a whole number of epochs, or a share in (0, 1) of train.epochs (at least 1)."""
    if value is None:
        return None
    if isinstance(value, float) and 0.0 < value < 1.0:
        return max(1, int(round(value * epochs)))
    return int(value)


def _mirror_stage(head: OLTRHead, _incompatible: Any) -> None:
    """After a state dict is loaded: the host mirror of the stage buffer (one read per load, not per step)."""
    head._memory_ready = int(head.stage) >= 2


@HEADS.register("oltr")
class OLTRHead(nn.Module):
    """OLTR: AAM stage 1, then the dynamic meta-embedding with a cosine-norm classifier (module docstring)."""

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 16.0, margin: float = 0.2,
                 easy_margin: bool = False, stage1_epochs: float | int | None = 0.5, reach_scale: Positive = 10.0,
                 centroid_weight: NonNegative = 0.01, centroid_margin: float = 10.0, repel_weight: float = 0.01):
        super().__init__()
        s1 = stage1_epochs
        if s1 is not None and (isinstance(s1, bool) or not isinstance(s1, (int, float)) or s1 <= 0
                               or (isinstance(s1, float) and s1 >= 1 and not s1.is_integer())):
            raise UsageError(f"config key head.stage1_epochs: expected a whole number >= 1, a share in (0, 1) of "
                             f"train.epochs, or null (memory set by init_memory, e.g. Decouple-OLTR), got {s1!r}")
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.scale, self.margin, self.easy_margin = float(scale), float(margin), bool(easy_margin)
        self.stage1_epochs, self.reach_scale = s1, float(reach_scale)
        self.centroid_weight, self.centroid_margin = float(centroid_weight), float(centroid_margin)
        self.repel_weight = float(repel_weight)
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        self.hallucinator = nn.Linear(embed_dim, num_classes)
        self.selector = nn.Linear(embed_dim, embed_dim)
        # zero until the switch: weight decay keeps a zero parameter at zero, so stage 1 leaves it untouched
        self.centroids = nn.Parameter(torch.zeros(num_classes, embed_dim))
        self.register_buffer("class_sum", torch.zeros(num_classes, embed_dim, dtype=torch.float64))
        self.register_buffer("class_count", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))  # 0: stage 1, 2: the memory is set
        # A host mirror of `stage`: reading the buffer in every forward would wait for the GPU at every step.
        # It changes only in init_memory and when a state dict is loaded (the hook below).
        self._memory_ready = False
        self.register_load_state_dict_post_hook(_mirror_stage)
        self.accumulate = False
        self.extra_loss: Tensor | None = None

    @property
    def memory_ready(self) -> bool:
        """True once the memory is set (stage 2: the meta-embedding classifies)."""
        return self._memory_ready

    def set_margin(self, m: float) -> None:
        """Set the stage-1 AAM margin (driven by the trainer's margin schedule; stage 2 has no margin)."""
        self.margin = float(m)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer at every epoch start (0-based epoch of `epochs`), also right after a resume:
        class sums in the last stage-1 epoch, the memory set at the first stage-2 epoch."""
        s1 = stage1_epoch_count(self.stage1_epochs, epochs)
        if s1 is not None and s1 >= epochs:  # refused (also by nn.network.check_schedule): it would be its baseline
            raise UsageError(f"config key head.stage1_epochs: {self.stage1_epochs} leaves OLTR no stage 2 in "
                             f"train.epochs={epochs}; expected fewer stage-1 epochs than {epochs}")
        self.accumulate = s1 is not None and epoch == s1 - 1 and not self.memory_ready
        if s1 is not None and epoch >= s1 and not self.memory_ready:
            self.init_memory(self.class_means())

    @torch.no_grad()
    def class_means(self) -> Tensor:
        """The summed stage-1 features per class over their counts; a class without any gets its classifier
        direction at the mean centroid length."""
        have = self.class_count > 0
        if not have.any():
            raise UsageError("OLTR: no stage-1 features were accumulated (stage1_epochs beyond the run?)")
        means = self.class_sum / self.class_count.clamp_min(1.0).unsqueeze(1)
        length = means[have].norm(dim=1).mean()
        fallback = F.normalize(self.weight.detach().double(), dim=1, eps=EPS) * length
        return torch.where(have.unsqueeze(1), means, fallback).to(self.centroids.dtype)

    @torch.no_grad()
    def init_memory(self, centroids: Tensor, directions: Tensor | None = None) -> None:
        """Set the memory M to `centroids` (C, D) and the hallucinator to s * (class directions) / mean ||c||, so
        that its attention starts as the softmax of s * cos(v, direction) (the authors start it from the stage-1
        classifier); directions default to the classifier weights."""
        c = centroids.to(self.centroids.dtype).to(self.centroids.device)
        d = self.weight.detach() if directions is None else directions.to(c)
        self.centroids.copy_(c)
        self.hallucinator.weight.copy_(F.normalize(d, dim=1, eps=EPS) * (self.scale / c.norm(dim=1).mean()
                                                                         .clamp_min(EPS)))
        self.hallucinator.bias.zero_()
        self.stage.fill_(2)
        self._memory_ready = True
        self.accumulate = False

    @torch.no_grad()
    def _accumulate(self, x: Tensor, labels: Tensor) -> None:
        """Add a batch's detached features to the class sums (all ranks' batches under DDP: equal state)."""
        x, labels = x.detach(), labels.detach()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            xs, ys = [torch.empty_like(x) for _ in range(dist.get_world_size())], \
                [torch.empty_like(labels) for _ in range(dist.get_world_size())]
            dist.all_gather(xs, x.contiguous())
            dist.all_gather(ys, labels.contiguous())
            x, labels = torch.cat(xs), torch.cat(ys)
        self.class_sum.index_add_(0, labels.long(), x.double())
        self.class_count.index_add_(0, labels.long(), torch.ones_like(labels, dtype=torch.float64))

    def _unused(self, *params: Tensor) -> Tensor:
        """0 with a graph to every parameter: DDP expects a gradient for each one in every step."""
        return sum(p.sum() for p in params) * 0.0

    @in_float32
    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, C): stage 1 AAM on x (margin in training with labels), stage 2 the cosine-norm classifier
        on the meta-embedding of v = x / ||x||; in training with labels, stage 2 leaves the centroid loss in
        `extra_loss`."""
        self.extra_loss = None
        w, v = float32(self.weight), F.normalize(x, dim=-1, eps=EPS)
        if not self.memory_ready:
            if self.training and labels is not None and self.accumulate:
                self._accumulate(v, labels)
            cos = F.linear(v, F.normalize(w, dim=-1, eps=EPS))
            if labels is not None and self.training and self.margin != 0.0:
                cos = apply_margin(cos, labels, self.margin, self.easy_margin)
            out = self.scale * cos
            if self.training:
                out = out + self._unused(self.centroids, *self.hallucinator.parameters(), *self.selector.parameters())
            return out
        c = float32(self.centroids)
        out = cos_norm_logits(meta_embedding(v, c, self.hallucinator, self.selector, self.reach_scale), w, self.scale)
        if self.training and labels is not None and self.centroid_weight > 0:
            self.extra_loss = self.centroid_weight * centroid_loss(v, labels, c, self.centroid_margin,
                                                                   self.repel_weight)
        return out

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, scale={self.scale}, "
                f"margin={self.margin}, stage1_epochs={self.stage1_epochs}, reach_scale={self.reach_scale}, "
                f"centroid_weight={self.centroid_weight}")
