"""Decoupled two-stage baselines (Kang et al., ICLR 2020): cRT and tau-normalisation of classifier weights."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .heads import build_head
from .losses import build_loss
from .samplers import build_sampler


def tau_normalize(weight: Tensor, tau: float) -> Tensor:
    """w_i / ||w_i||^tau per class row; tau = 0 leaves W unchanged, tau = 1 makes every row unit-norm."""
    norms = weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return weight / norms.pow(tau)


@torch.no_grad()
def tau_normalize_head(head: nn.Module, tau: float) -> nn.Module:
    """Replace a head's class weights by their tau-normalised version, in place; returns the head."""
    head.weight.copy_(tau_normalize(head.weight, tau))
    return head


def retrain_classifier(features: Tensor | np.ndarray, labels: Tensor | np.ndarray, num_classes: int,
                       head: str = "linear", head_kwargs: dict[str, Any] | None = None,
                       sampler: str = "class_balanced", loss: str = "ce", epochs: int = 10, batch_size: int = 128,
                       lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0,
                       device: str | torch.device = "cpu") -> nn.Module:
    """cRT: train a freshly initialised head on frozen features with re-sampling; SGD momentum, cosine LR."""
    x = torch.as_tensor(np.asarray(features) if isinstance(features, np.ndarray) else features).float().to(device)
    y = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels).long().to(device)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be (N, D) with one label each; got {tuple(x.shape)} and {len(y)} labels")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        clf = build_head(head, x.shape[1], num_classes, **(head_kwargs or {})).to(device)
    finally:
        torch.random.set_rng_state(gen_state)
    counts = np.bincount(y.cpu().numpy(), minlength=num_classes)
    criterion = build_loss(loss, class_counts=np.maximum(counts, 1))
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    samp = build_sampler(sampler, y.cpu().numpy(), seed=seed)
    steps = max(1, epochs * math.ceil(len(samp) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    clf.train()
    for epoch in range(epochs):
        samp.set_epoch(epoch)
        order = torch.as_tensor(samp.indices(), device=device)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            out = clf(x[idx], y[idx])
            step_loss = criterion(out, y[idx])
            opt.zero_grad(set_to_none=True)
            step_loss.backward()
            opt.step()
            sched.step()
    return clf.eval()
