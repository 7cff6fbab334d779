"""The margin heads: linear, cosine and AAM (ArcFace), with the long-tail options they share with Causal Norm
AAM (LDAM margins, sub-centres, feature transfer: spkcausal.nn.longtail), and ArcFace's margin itself."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...schema import AtLeast1, coerce
from ..longtail import (
    ClassMargins,
    FeatureTransfer,
    FeatureTransferOption,
    class_centres,
    class_margins_option,
    feature_transfer_options,
    ldam_margin_scale,
)
from .ops import EPS, HEADS, float32, in_float32

__all__ = ["arc_margin", "apply_margin", "LinearHead", "CosineHead", "LongTailOptions", "AAMHead"]


def arc_margin(cos: Tensor, margin: float | Tensor, easy_margin: bool) -> Tensor:
    """cos(theta + m) with ArcFace's easy-margin / threshold handling so the target logit stays monotonic; m is
    a number or a tensor broadcast against cos (per-row margins, (B, 1))."""
    # At |cos| exactly 1, sqrt's gradient is infinite. A clamp_min(0) passes the gradient at its bound in some
    # torch releases (2.11: NaN) and not in others, so the bound is masked with two wheres: the sqrt never sees
    # a non-positive input, and there sin is 0 with a zero gradient, in every release.
    sin2 = 1.0 - cos * cos
    inside = sin2 > 0
    sin = torch.where(inside, torch.sqrt(torch.where(inside, sin2, torch.ones_like(sin2))), torch.zeros_like(sin2))
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


def apply_margin(cos: Tensor, labels: Tensor, margin: float | Tensor, easy_margin: bool) -> Tensor:
    """Replace the target-class cosine of each row by cos(theta + m) (m a number or per row, (B, 1))."""
    target = F.one_hot(labels.long(), cos.shape[-1]).to(torch.bool)
    return torch.where(target, arc_margin(cos, margin, easy_margin), cos)


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

    @in_float32
    def cosine(self, x: Tensor) -> Tensor:
        """Plain cosine between every embedding and every class weight, (B, C), in float32 or float64."""
        return F.linear(F.normalize(x, dim=-1, eps=EPS), F.normalize(float32(self.weight), dim=-1, eps=EPS))

    @in_float32
    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, C)."""
        return self.scale * self.cosine(x)


class LongTailOptions(nn.Module):
    """The long-tail options shared by the margin heads: LDAM margins, sub-centres, feature transfer."""

    margin: float
    weight: nn.Parameter

    def _init_long_tail(self, embed_dim: int, num_classes: int, class_counts: Any, class_margins: Any,
                        subcenters: Any, feature_transfer: Any) -> None:
        self.class_margins = class_margins_option(class_margins)
        self.subcenters = coerce(subcenters, AtLeast1, "head.subcenters")  # sizes a parameter: also when built directly
        ft = feature_transfer_options(feature_transfer)
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
        return self.feature_transfer(x, labels, class_centres(float32(self.weight), x, labels))

    def long_tail_repr(self) -> str:
        return (f", class_margins={self.class_margins}, subcenters={self.subcenters}, "
                f"feature_transfer={self.feature_transfer is not None}")


@HEADS.register("aam")
class AAMHead(CosineHead, LongTailOptions):
    """Additive angular margin (ArcFace): the target logit is s * cos(theta + m) during training.

    With K sub-centres, cos(x, class i) = max_j cos(x, w_ij) before the margin (Deng et al., ECCV 2020)."""

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 32.0, margin: float = 0.2,
                 easy_margin: bool = False, class_margins: ClassMargins = None, subcenters: AtLeast1 = 1,
                 feature_transfer: FeatureTransferOption = None, class_counts: Any = None):
        super().__init__(embed_dim, num_classes, scale)
        self.easy_margin = bool(easy_margin)
        self.margin = float(margin)
        self._init_long_tail(embed_dim, num_classes, class_counts, class_margins, subcenters, feature_transfer)

    def set_margin(self, m: float) -> None:
        """Set the margin (driven by the trainer's margin schedule)."""
        self.margin = float(m)

    @in_float32
    def subcenter_cosine(self, x: Tensor) -> Tensor:
        """Cosine to every sub-centre, (B, C, K) (K = 1 without sub-centres)."""
        w = float32(self.weight)
        w = w.reshape(-1, w.shape[-1])
        cos = F.linear(F.normalize(x, dim=-1, eps=EPS), F.normalize(w, dim=-1, eps=EPS))
        return cos.view(x.shape[0], self.num_classes, self.subcenters)

    @in_float32
    def cosine(self, x: Tensor) -> Tensor:
        """Class cosine (B, C): the plain cosine, or the best sub-centre's."""
        if self.subcenters == 1:
            return super().cosine(x)
        return self.subcenter_cosine(x).amax(dim=-1)

    @in_float32
    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (B, C); the margin (and feature transfer) only in training mode when labels are given."""
        x = self.transfer(x, labels)
        cos = self.cosine(x)
        if labels is not None and self.training and self.margin != 0.0:
            cos = apply_margin(cos, labels, self.class_margin(labels), self.easy_margin)
        return self.scale * cos

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, scale={self.scale}, "
                f"margin={self.margin}, easy_margin={self.easy_margin}" + self.long_tail_repr())
