"""Long-tail losses: cross-entropy, focal loss, class-balanced re-weighting (inverse / effective number).

Class weights are normalised to sum to the number of classes (Cui et al., CVPR 2019), and a weighted loss is
the sum of per-sample weighted losses divided by the batch size (not by the sum of weights), so a balanced
corpus gives weights of 1 and the plain loss.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry
from ..utils import UsageError

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")


def class_weights(class_counts: np.ndarray | Tensor | list, scheme: str, beta: float = 0.9999) -> Tensor:
    """Per-class weights summing to C: 'inverse' (1/n_c) or 'effective_number' ((1-beta)/(1-beta^n_c))."""
    n = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    if n.ndim != 1 or len(n) == 0:
        raise ValueError("class_counts must be a non-empty 1-D sequence")
    if (n <= 0).any():
        raise ValueError(f"every class needs at least one training sample; zero counts at {torch.nonzero(n <= 0)}")
    if scheme == "inverse":
        w = 1.0 / n
    elif scheme == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise UsageError(f"beta must be in [0, 1), got {beta}")
        w = (1.0 - beta) / (1.0 - torch.pow(beta, n))
    else:
        raise UsageError(f"unknown weighting {scheme!r}; expected 'inverse' or 'effective_number'")
    return (w * len(n) / w.sum()).float()


class WeightedLoss(nn.Module):
    """Focal loss -(1-p_t)^gamma log p_t with optional class weights; gamma = 0 is (weighted) cross-entropy."""

    def __init__(self, gamma: float = 0.0, weight: Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if gamma < 0:
            raise UsageError(f"focal gamma must be >= 0, got {gamma}")
        if label_smoothing and gamma:
            raise UsageError("label smoothing is only supported with gamma = 0 (cross-entropy)")
        self.gamma, self.label_smoothing = float(gamma), float(label_smoothing)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean over the batch of the per-sample (weighted, focal) loss."""
        logits = logits.float()
        labels = labels.long()
        if self.label_smoothing:
            per = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)
        else:
            logp_t = F.log_softmax(logits, dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)
            per = -logp_t
            if self.gamma:
                per = per * (1.0 - logp_t.exp()).clamp_min(0.0).pow(self.gamma)
        if self.weight is not None:
            per = per * self.weight.to(per.device)[labels]
        return per.mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, weighted={self.weight is not None}, label_smoothing={self.label_smoothing}"


def _weighted_loss(gamma: float, weighting: str | None, class_counts: Any, beta: float,
                   label_smoothing: float) -> WeightedLoss:
    """WeightedLoss with class weights from `class_counts` when a weighting scheme is named."""
    weight = None
    if weighting is not None:
        if class_counts is None:
            raise UsageError(f"weighting {weighting!r} needs class_counts (training utterances per class)")
        weight = class_weights(class_counts, weighting, beta)
    return WeightedLoss(gamma=gamma, weight=weight, label_smoothing=label_smoothing)


@LOSSES.register("ce")
def cross_entropy_loss(class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999,
                       weighting: str | None = None, label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy (`gamma` is ignored), class-weighted when `weighting` is set."""
    return _weighted_loss(0.0, weighting, class_counts, beta, label_smoothing)


@LOSSES.register("focal")
def focal_loss(class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999, weighting: str | None = None,
               label_smoothing: float = 0.0) -> nn.Module:
    """Focal loss with exponent `gamma`, class-weighted when `weighting` is set."""
    return _weighted_loss(gamma, weighting, class_counts, beta, label_smoothing)


def _reweighted_ce(scheme: str) -> Callable[..., nn.Module]:
    """Factory of cross-entropy re-weighted by `scheme` ('inverse' or 'effective_number')."""
    def factory(class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999, weighting: str | None = None,
                label_smoothing: float = 0.0) -> nn.Module:
        if weighting not in (None, scheme):
            raise UsageError(f"loss {scheme!r} already sets the weighting; got weighting={weighting!r}")
        return _weighted_loss(0.0, scheme, class_counts, beta, label_smoothing)
    factory.__doc__ = f"Cross-entropy with {scheme} class weights (`gamma` is ignored)."
    return factory


for _scheme in ("inverse", "effective_number"):
    LOSSES.register(_scheme)(_reweighted_ce(_scheme))


def build_loss(name: str, class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999,
               weighting: str | None = None, label_smoothing: float = 0.0) -> nn.Module:
    """Build a loss by name: 'ce', 'focal' (gamma), 'inverse' or 'effective_number' (beta) re-weighted CE.

    `weighting` adds class weights to 'ce' or 'focal' (e.g. focal + effective number).
    """
    return LOSSES.build(name, class_counts=class_counts, gamma=gamma, beta=beta, weighting=weighting,
                        label_smoothing=label_smoothing)
