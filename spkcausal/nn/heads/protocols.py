"""What the trainer, the training step and the assembler ask of a head beyond (embeddings, labels) -> logits,
as structural types: a head has a capability when it has the members, whatever its class (the OLTR head is no
subclass of the margin heads, yet follows a margin schedule)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["MarginSchedule", "EpochHook", "MovingMean", "ExtraLoss"]


@runtime_checkable
class MarginSchedule(Protocol):
    """A margin head: its configured margin is the schedule's final value; the trainer sets it every step."""

    margin: float

    def set_margin(self, m: float) -> None:
        """Set the margin of the current step."""


@runtime_checkable
class EpochHook(Protocol):
    """A head whose training changes with the epoch (OLTR's two stages); told at every epoch start."""

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """The 0-based epoch about to run, of `epochs`."""


@runtime_checkable
class MovingMean(Protocol):
    """A Causal Norm head: K chunks, their feature normalisation, and the moving-average feature x_bar with its
    momentum (`momentum_auto`: the trainer sets it from the lr at every epoch start)."""

    num_heads: int
    feature_norm: str
    momentum: float
    momentum_auto: bool

    def update_mean(self, x: Tensor) -> None:
        """x_bar <- mu * x_bar + the batch's mean feature."""


@runtime_checkable
class ExtraLoss(Protocol):
    """A module whose training forward leaves a term for the training step to add to the loss (None: none)."""

    extra_loss: Tensor | None
