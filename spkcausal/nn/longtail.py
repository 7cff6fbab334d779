"""Long-tail options of the margin heads that change the embedding (docs/causal.md, "Long-tail methods that
reach the embedding"): LDAM class-aware margins, sub-centres and feature transfer to tail speakers.

The heads (`spkcausal.nn.heads`: `aam`, `causal_norm_aam`) own the options; this module holds the parts that
do not depend on the head kind: option checking, the per-class margin scale, the head / tail split and the
feature-transfer module with its running statistics. Everything a trained head needs later is a registered
buffer, so a checkpoint rebuilt without the class counts (inference, exact resume) gets it back from its state.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import UsageError

EPS = 1e-12
CLASS_MARGINS = ("ldam",)
FT_KEYS = ("enabled", "head_share", "head_min_count", "strength", "momentum")


def check_class_margins(value: Any) -> str | None:
    """`head.class_margins`: None / 'none' / false (off) or 'ldam'."""
    if value is None or value is False or value == "none":
        return None
    if value not in CLASS_MARGINS:
        raise UsageError(f"head.class_margins={value!r}; expected one of {list(CLASS_MARGINS)} or none")
    return str(value)


def check_subcenters(value: Any) -> int:
    """`head.subcenters`: a whole number >= 1 (1 = one centre per class, the plain head)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"head.subcenters={value!r}; expected a whole number >= 1")
    return int(value)


def _number(cfg: Mapping[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise UsageError(f"head.feature_transfer.{key}={v!r}; expected a number in [{lo}, {hi}]")
    return float(v)


def check_feature_transfer(value: Any) -> dict[str, Any] | None:
    """`head.feature_transfer`: None / false (off), true (defaults) or a mapping of FT_KEYS; returns the options."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise UsageError(f"head.feature_transfer must be a mapping (keys {list(FT_KEYS)}) or true/false, "
                         f"got {value!r}")
    bad = set(value) - set(FT_KEYS)
    if bad:
        raise UsageError(f"unknown key(s) {sorted(bad)} in head.feature_transfer; expected some of {list(FT_KEYS)}")
    enabled = value.get("enabled", True)
    if not isinstance(enabled, bool):
        raise UsageError(f"head.feature_transfer.enabled={enabled!r}; expected true or false")
    if not enabled:
        return None
    min_count = value.get("head_min_count")
    if min_count is not None and (isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1):
        raise UsageError(f"head.feature_transfer.head_min_count={min_count!r}; expected a whole number >= 1")
    if min_count is not None and "head_share" in value:
        raise UsageError("head.feature_transfer: give head_share or head_min_count, not both")
    return {"head_share": _number(value, "head_share", 0.0, 1.0, 0.2), "head_min_count": min_count,
            "strength": _number(value, "strength", 0.0, 1.0, 1.0),
            "momentum": _number(value, "momentum", 0.0, 0.999999, 0.9)}


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
