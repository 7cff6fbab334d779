"""Long-tail losses: cross-entropy, focal loss, class-balanced re-weighting (inverse / effective number), logit
adjustment / Balanced Softmax and deferred re-weighting (DRW); formulas and sources in docs/causal.md.

Class weights are normalised to sum to the number of classes (Cui et al., CVPR 2019), and a weighted loss is
the sum of per-sample weighted losses divided by the batch size (not by the sum of weights), so a balanced
corpus gives weights of 1 and the plain loss. Logit adjustment (Menon et al., ICLR 2021) adds tau * log prior_c
to the logits inside the loss only: the head, its eval logits and the embeddings do not change.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry
from ..schema import Range, coerce
from ..utils import UsageError

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
# The long-tail options of every loss (checked from these annotations by the registry, before data is read):
# logit adjustment's tau, and DRW's first class-weighted epoch (0-based).
LogitAdjust = float | None
DrwEpoch = Annotated[int, Range(0)] | None


def _counts(class_counts: np.ndarray | Tensor | list) -> Tensor:
    """Class counts as float64, checked: 1-D, non-empty, every class with data."""
    n = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    if n.ndim != 1 or len(n) == 0:
        raise ValueError("class_counts must be a non-empty 1-D sequence")
    if (n <= 0).any():
        raise ValueError(f"every class needs at least one training sample; zero counts at {torch.nonzero(n <= 0)}")
    return n


def class_weights(class_counts: np.ndarray | Tensor | list, scheme: str, beta: float = 0.9999) -> Tensor:
    """Per-class weights summing to C: 'inverse' (1/n_c) or 'effective_number' ((1-beta)/(1-beta^n_c))."""
    n = _counts(class_counts)
    if scheme == "inverse":
        w = 1.0 / n
    elif scheme == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise UsageError(f"beta must be in [0, 1), got {beta}")
        w = (1.0 - beta) / (1.0 - torch.pow(beta, n))
    else:
        raise UsageError(f"unknown weighting {scheme!r}; expected 'inverse' or 'effective_number'")
    return (w * len(n) / w.sum()).float()


def log_prior(class_counts: np.ndarray | Tensor | list) -> Tensor:
    """log(n_c / sum_c n_c) per class (float32), the logit-adjustment offset at tau = 1."""
    n = _counts(class_counts)
    return torch.log(n / n.sum()).float()


@runtime_checkable
class EpochLoss(Protocol):
    """A loss that changes with the epoch (DRW's re-weighting); the trainer tells it at every epoch start."""

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch about to run."""


class WeightedLoss(nn.Module):
    """Focal loss -(1-p_t)^gamma log p_t on (optionally logit-adjusted) logits, with optional class weights;
    gamma = 0 is (weighted) cross-entropy. With `drw_epoch` E the weights apply from epoch E on (set_epoch)."""

    def __init__(self, gamma: float = 0.0, weight: Tensor | None = None, label_smoothing: float = 0.0,
                 logit_offset: Tensor | None = None, drw_epoch: int | None = None):
        super().__init__()
        if gamma < 0:
            raise UsageError(f"focal gamma must be >= 0, got {gamma}")
        if label_smoothing and gamma:
            raise UsageError("label smoothing is only supported with gamma = 0 (cross-entropy)")
        if drw_epoch is not None and weight is None:
            raise UsageError("drw_epoch defers class weights; the loss has none")
        self.gamma, self.label_smoothing = float(gamma), float(label_smoothing)
        self.drw_epoch = None if drw_epoch is None else int(drw_epoch)
        self.epoch = 0
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("logit_offset", None if logit_offset is None
                             else torch.as_tensor(logit_offset, dtype=torch.float32))

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the (0-based) epoch about to run; DRW switches its weights on from `drw_epoch`."""
        self.epoch = int(epoch)

    def active_weight(self) -> Tensor | None:
        """The class weights in force this epoch (None: unweighted)."""
        if self.drw_epoch is not None and self.epoch < self.drw_epoch:
            return None
        return self.weight

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean over the batch of the per-sample (weighted, focal, logit-adjusted) loss."""
        logits = logits.float()
        labels = labels.long()
        if self.logit_offset is not None:  # a new tensor: the caller's logits (accuracy, eval) stay as they were
            logits = logits + self.logit_offset.to(logits.device)
        if self.label_smoothing:
            per = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)
        else:
            logp_t = F.log_softmax(logits, dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)
            per = -logp_t
            if self.gamma:
                per = per * (1.0 - logp_t.exp()).clamp_min(0.0).pow(self.gamma)
        weight = self.active_weight()
        if weight is not None:
            per = per * weight.to(per.device)[labels]
        return per.mean()

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, weighted={self.weight is not None}, label_smoothing={self.label_smoothing}, "
                f"logit_adjusted={self.logit_offset is not None}, drw_epoch={self.drw_epoch}")


def _number(value: Any, key: str, minimum: float | None = None) -> float:
    """A finite float loss option (`loss.<key>`), or a UsageError naming it."""
    return coerce(value, float if minimum is None else Annotated[float, Range(minimum)], f"loss.{key}")


def _weighted_loss(gamma: float, weighting: str | None, class_counts: Any, beta: float, label_smoothing: float,
                   logit_adjust: LogitAdjust = None, drw_epoch: DrwEpoch = None) -> WeightedLoss:
    """WeightedLoss with class weights from `class_counts` when a weighting scheme is named (DRW without one uses
    the effective number, as Cao et al.) and the tau * log prior offset when `logit_adjust` is set."""
    if drw_epoch is not None:
        drw_epoch = coerce(drw_epoch, Annotated[int, Range(0)], "loss.drw_epoch")
        weighting = weighting or "effective_number"
    weight = offset = None
    if weighting is not None:
        if class_counts is None:
            raise UsageError(f"weighting {weighting!r} needs class_counts (training utterances per class)")
        weight = class_weights(class_counts, weighting, beta)
    if logit_adjust is not None:
        tau = _number(logit_adjust, "logit_adjust")
        if class_counts is None:
            raise UsageError("logit_adjust needs class_counts (training utterances per class)")
        offset = tau * log_prior(class_counts) if tau else None
    return WeightedLoss(gamma=gamma, weight=weight, label_smoothing=label_smoothing, logit_offset=offset,
                        drw_epoch=drw_epoch)


@LOSSES.register("ce")
def cross_entropy_loss(class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999,
                       weighting: str | None = None, label_smoothing: float = 0.0, logit_adjust: LogitAdjust = None,
                       drw_epoch: DrwEpoch = None) -> nn.Module:
    """Cross-entropy (`gamma` is ignored), class-weighted when `weighting` is set."""
    return _weighted_loss(0.0, weighting, class_counts, beta, label_smoothing, logit_adjust, drw_epoch)


@LOSSES.register("focal")
def focal_loss(class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999, weighting: str | None = None,
               label_smoothing: float = 0.0, logit_adjust: LogitAdjust = None, drw_epoch: DrwEpoch = None) -> nn.Module:
    """Focal loss with exponent `gamma`, class-weighted when `weighting` is set."""
    return _weighted_loss(gamma, weighting, class_counts, beta, label_smoothing, logit_adjust, drw_epoch)


@LOSSES.register("balanced_softmax")
def balanced_softmax_loss(class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999,
                          weighting: str | None = None, label_smoothing: float = 0.0, logit_adjust: LogitAdjust = None,
                          drw_epoch: DrwEpoch = None) -> nn.Module:
    """Balanced Softmax (Ren et al., NeurIPS 2020): cross-entropy on logits + log prior, i.e. logit_adjust = 1."""
    if logit_adjust is not None and _number(logit_adjust, "logit_adjust") != 1.0:
        raise UsageError(f"loss 'balanced_softmax' is logit_adjust = 1; got logit_adjust={logit_adjust!r} "
                         "(use loss.name=ce with loss.logit_adjust=TAU for another tau)")
    return _weighted_loss(0.0, weighting, class_counts, beta, label_smoothing, 1.0, drw_epoch)


def _reweighted_ce(scheme: str) -> Callable[..., nn.Module]:
    """Factory of cross-entropy re-weighted by `scheme` ('inverse' or 'effective_number')."""
    def factory(class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999, weighting: str | None = None,
                label_smoothing: float = 0.0, logit_adjust: LogitAdjust = None,
                drw_epoch: DrwEpoch = None) -> nn.Module:
        if weighting not in (None, scheme):
            raise UsageError(f"loss {scheme!r} already sets the weighting; got weighting={weighting!r}")
        return _weighted_loss(0.0, scheme, class_counts, beta, label_smoothing, logit_adjust, drw_epoch)
    factory.__doc__ = f"Cross-entropy with {scheme} class weights (`gamma` is ignored)."
    return factory


for _scheme in ("inverse", "effective_number"):
    LOSSES.register(_scheme)(_reweighted_ce(_scheme))


class NoClassification(nn.Module):
    """No classification term: 0, kept in the graph so that the step's backward runs on the encoder loss alone."""

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """0 (with a gradient of 0 to the head)."""
        return logits.float().sum() * 0.0


@LOSSES.register("none")
def no_classification_loss(class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999,
                           weighting: str | None = None, label_smoothing: float = 0.0,
                           logit_adjust: LogitAdjust = None, drw_epoch: DrwEpoch = None) -> nn.Module:
    """No classification loss: the encoder loss alone trains (self-supervised pre-training, docs/causal.md)."""
    if weighting is not None or label_smoothing or logit_adjust is not None or drw_epoch is not None:
        raise UsageError("loss 'none' has no classification term: weighting, label_smoothing, logit_adjust and "
                         "drw_epoch do not apply")
    return NoClassification()


def build_loss(name: str, class_counts: Any = None, gamma: float = 2.0, beta: float = 0.9999,
               weighting: str | None = None, label_smoothing: float = 0.0, logit_adjust: LogitAdjust = None,
               drw_epoch: DrwEpoch = None) -> nn.Module:
    """Build a loss by name: 'ce', 'focal' (gamma), 'inverse' or 'effective_number' (beta) re-weighted CE,
    'balanced_softmax' (CE + log prior).

    `weighting` adds class weights to 'ce' or 'focal' (e.g. focal + effective number); `logit_adjust` tau adds
    tau * log prior_c to the logits in the loss; `drw_epoch` E applies the class weights only from epoch E on
    (effective number when no weighting is named). The trainer calls `set_epoch` on the loss every epoch.
    """
    return LOSSES.build(name, class_counts=class_counts, gamma=gamma, beta=beta, weighting=weighting,
                        label_smoothing=label_smoothing, logit_adjust=logit_adjust, drw_epoch=drw_epoch)
