"""Long-tail options of the margin heads that change the embedding (docs/causal.md, "Long-tail methods that
reach the embedding"): LDAM class-aware margins, sub-centres and feature transfer to tail speakers.

The heads (`spkcausal.nn.heads`: `aam`, `causal_norm_aam`) own the options; this module holds the parts that
do not depend on the head kind: option checking, the per-class margin scale, the head / tail split and the
feature-transfer module with its running statistics. Everything a trained head needs later is a registered
buffer, so a checkpoint rebuilt without the class counts (inference, exact resume) gets it back from its state.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..schema import AtLeast1, Range, coerce
from ..utils import UsageError

EPS = 1e-12
# `head.class_margins`: off (null, none or false) or LDAM's class-aware margins.
ClassMargins = Literal["ldam", "none", False] | None
Share = Annotated[float, Range(0, 1)]


@dataclass(frozen=True)
class FeatureTransferKeys:
    """`head.feature_transfer` as a mapping (true: all defaults): the head classes are the `head_share` most
    frequent, or those with at least `head_min_count` utterances (not both); `strength` and `momentum` are
    FeatureTransfer's."""

    enabled: bool = True
    head_share: Share = 0.2
    head_min_count: AtLeast1 | None = None
    strength: Share = 1.0
    momentum: Annotated[float, Range(0, 0.999999)] = 0.9


FeatureTransferOption = FeatureTransferKeys | bool | None


def class_margins_option(value: Any) -> str | None:
    """`head.class_margins` (checked by its annotation, ClassMargins) as the heads hold it: None (off) or 'ldam'."""
    value = coerce(value, ClassMargins, "head.class_margins")
    return None if value in (None, False, "none") else str(value)


def feature_transfer_options(value: Any) -> dict[str, Any] | None:
    """`head.feature_transfer` (null / false: off, true: defaults, or a mapping of FeatureTransferKeys' fields) as
    FeatureTransfer's options, None when off; a key or value out of place is a UsageError naming it."""
    value = coerce(value, FeatureTransferOption, "head.feature_transfer")
    if value is None or value is False:
        return None
    given = {} if value is True else value
    if given.get("head_min_count") is not None and "head_share" in given:
        raise UsageError("config key head.feature_transfer: give head_share or head_min_count, not both")
    opts = {**asdict(FeatureTransferKeys()), **given}
    return opts if opts.pop("enabled") else None


def _counts(class_counts: Sequence[float] | np.ndarray | Tensor, num_classes: int) -> np.ndarray:
    c = np.asarray(class_counts.cpu() if isinstance(class_counts, Tensor) else class_counts, dtype=np.float64)
    if c.shape != (num_classes,) or (c < 0).any() or not (c > 0).any():
        raise UsageError(f"class counts must be {num_classes} non-negative numbers, not all zero; got shape "
                         f"{c.shape}")
    return c


def ldam_margin_scale(class_counts: Sequence[float] | np.ndarray | Tensor, num_classes: int) -> Tensor:
    """(n_min / n_c)^(1/4) per class (Cao et al. 2019), n_min over classes with data; classes without any get 1."""
    c = _counts(class_counts, num_classes)
    n_min = c[c > 0].min()
    return torch.from_numpy(np.where(c > 0, (n_min / np.maximum(c, 1e-300)) ** 0.25, 1.0)).float()


def head_class_mask(class_counts: Sequence[float] | np.ndarray | Tensor, num_classes: int, head_share: float,
                    head_min_count: int | None) -> Tensor:
    """True for the head classes: count >= head_min_count, else the ceil(share * C) most frequent (ties: lower id)."""
    c = _counts(class_counts, num_classes)
    if head_min_count is not None:
        return torch.from_numpy(c >= head_min_count)
    n_head = int(math.ceil(head_share * num_classes))
    mask = np.zeros(num_classes, dtype=bool)
    mask[np.argsort(-c, kind="stable")[:n_head]] = True
    return torch.from_numpy(mask)


class FeatureTransfer(nn.Module):
    """Transfer the head classes' angular spread to tail-class features (after Liu et al., CVPR 2020).

    theta = angle(x, c_y) to the sample's class centre c_y (unit, detached). Running means of theta^2 over head
    and over tail samples (`spread` = [head, tail], EMA with `momentum`, the first batch taken as it is) are
    buffers. A tail sample's direction u is moved in the tangent space at c_y: z = log_c(u) (|z| = theta),
    z' = z + g with g ~ N(0, s^2/(D-1) I) projected orthogonal to c_y, s^2 = strength * max(0, m2_head - m2_tail),
    u' = exp_c(z') (|z'| clamped to pi), so E|z'|^2 = theta^2 + s^2: the tail cloud's mean squared angle reaches
    the head's. The feature keeps its norm; the shift ||x|| (u' - u) is added without gradient, so the gradient
    to x is that of the augmented point. Noise comes from torch's global RNG, which the trainer seeds per rank and
    saves in every checkpoint (exact resume).
    """

    def __init__(self, num_classes: int, class_counts: Sequence[float] | np.ndarray | Tensor | None = None,
                 head_share: float = 0.2, head_min_count: int | None = None, strength: float = 1.0,
                 momentum: float = 0.9):
        super().__init__()
        self.strength, self.momentum = float(strength), float(momentum)
        # Without counts (a head rebuilt for inference or resume) the mask comes back with the state dict.
        mask = (torch.zeros(num_classes, dtype=torch.bool) if class_counts is None
                else head_class_mask(class_counts, num_classes, head_share, head_min_count))
        self.register_buffer("head_mask", mask)
        self.register_buffer("spread", torch.zeros(2))
        self.register_buffer("seen", torch.zeros(2))

    @torch.no_grad()
    def update(self, theta2: Tensor, is_head: Tensor) -> None:
        """EMA of the mean squared angle over head and tail samples (summed over ranks when distributed)."""
        h = is_head.to(theta2.dtype)
        stats = torch.stack([(theta2 * h).sum(), (theta2 * (1 - h)).sum(), h.sum(), (1 - h).sum()]).float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        n = stats[2:]
        batch = stats[:2] / n.clamp_min(1.0)
        ema = torch.where(self.seen > 0, self.momentum * self.spread + (1 - self.momentum) * batch, batch)
        self.spread.copy_(torch.where(n > 0, ema, self.spread))
        self.seen.copy_(torch.where(n > 0, torch.ones_like(self.seen), self.seen))

    def forward(self, x: Tensor, labels: Tensor, centres: Tensor) -> Tensor:
        """x with every tail-class row moved around its centre (rows of `centres`, unit length); heads untouched."""
        with torch.no_grad():
            xd = x.detach()
            norm = xd.norm(dim=-1, keepdim=True)
            u = xd / norm.clamp_min(EPS)
            w = centres.detach().to(u.dtype)
            cos = (u * w).sum(-1, keepdim=True).clamp(-1.0, 1.0)
            theta = torch.acos(cos)
            is_head = self.head_mask[labels.long()]
            self.update(theta.squeeze(-1) ** 2, is_head)
            s2 = self.strength * (self.spread[0] - self.spread[1]).clamp_min(0.0)
            perp = u - cos * w  # |perp| = sin(theta)
            z = perp * (theta / perp.norm(dim=-1, keepdim=True).clamp_min(EPS))
            g = torch.randn(u.shape, device=u.device, dtype=u.dtype)
            g = (g - (g * w).sum(-1, keepdim=True) * w) * torch.sqrt(s2 / max(1, u.shape[-1] - 1))
            z2 = z + g
            length = z2.norm(dim=-1, keepdim=True)
            u2 = torch.cos(length.clamp(max=math.pi)) * w + torch.sin(length.clamp(max=math.pi)) * (
                z2 / length.clamp_min(EPS))
            shift = torch.where(is_head.unsqueeze(-1), torch.zeros_like(u), norm * (u2 - u))
        return x + shift.to(x.dtype)


def nearest_subcenter(cos: Tensor) -> Tensor:
    """Index (...) of the best sub-centre along the last axis of per-sub-centre scores (..., K)."""
    return cos.argmax(dim=-1)


def class_centres(weight: Tensor, x: Tensor, labels: Tensor) -> Tensor:
    """Unit direction of each sample's class weight (B, D); with sub-centres (C, K, D), the one nearest to x."""
    w = F.normalize(weight.detach()[labels.long()].to(x.dtype), dim=-1, eps=EPS)  # (B, D) or (B, K, D)
    if w.ndim == 2:
        return w
    cos = torch.einsum("bkd,bd->bk", w, F.normalize(x.detach(), dim=-1, eps=EPS))
    return w[torch.arange(len(w), device=w.device), nearest_subcenter(cos)]
