"""Training schedules as pure functions of the global step, and the per-step seeds that make resume exact.

With S = steps per epoch and T = epochs * S, for the step s about to be taken (0-based):
- learning rate: lr(s) = lr * min(1, (s + 1) / (warmup_epochs * S)) * (final_lr / lr) ** (s / T)
  (linear warm-up times exponential decay from lr towards final_lr, as in wespeaker);
- margin: 0 before `margin.start_epoch`, rising linearly to the head's `margin` at `margin.end_epoch`;
- x_bar momentum with `head.momentum: auto`: mu = 1 - 0.1 * min(50 * lr, 1), from the lr of the epoch's first
  step, set at every epoch start: the rule of the paper's official code (`classification/run_networks.py` of
  KaihuaTang/Long-Tailed-Recognition.pytorch, every dataset but CIFAR): 0.9 while lr >= 0.02, then rising
  toward 1 as the lr decays, so late in training x_bar averages thousands of batches.
"""
from __future__ import annotations

import math

import numpy as np


def lr_at(step: int, steps_per_epoch: int, epochs: int, lr: float, final_lr: float, warmup_epochs: float) -> float:
    """Learning rate for global step `step` (see the module docstring)."""
    total = max(1, epochs * steps_per_epoch)
    warm = warmup_epochs * steps_per_epoch
    factor = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    return lr * factor * math.exp(math.log(final_lr / lr) * min(step, total) / total)


def margin_at(step: int, steps_per_epoch: int, final: float, start_epoch: float, end_epoch: float) -> float:
    """Margin for global step `step`: 0 before start_epoch, linear to `final` at end_epoch, then `final`."""
    epoch = step / max(1, steps_per_epoch)
    if epoch < start_epoch:
        return 0.0
    if end_epoch <= start_epoch or epoch >= end_epoch:
        return float(final)
    return float(final) * (epoch - start_epoch) / (end_epoch - start_epoch)


def momentum_at(lr: float) -> float:
    """x_bar momentum for an epoch that starts at learning rate `lr` (`head.momentum: auto`)."""
    return 1.0 - 0.1 * min(50.0 * float(lr), 1.0)


def step_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, rank, step, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))
