"""Decouple-OLTR: OLTR's meta-embedding classifier (spkcausal.nn.heads.oltr) trained on a base system's frozen
embeddings, a classifier-only system like cRT (spkcausal.inference.decoupled; docs/causal.md).

The memory is the exact class means of the base's length-normalised training embeddings (the extractor in eval
mode over the training set, as in the authors' stage 2; the head works on unit-length direct features); the
hallucinator starts from the centroid directions, the cosine-norm classifier at random. Hallucinator, concept
selector, classifier and centroids are trained with class-balanced sampling (the authors' stage 2 samples
class-aware) on cross-entropy plus the discriminative centroid loss; the extractor and its embeddings stay as
they are.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.samplers import build_sampler
from ..nn.heads import build_head
from ..nn.losses import build_loss

__all__ = ["OLTR_HEAD", "class_centroids", "decouple_oltr", "train_oltr_classifier"]

OLTR_HEAD: dict[str, Any] = {"name": "oltr", "scale": 16.0, "stage1_epochs": None, "reach_scale": 10.0,
                             "centroid_weight": 0.01}


def class_centroids(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean of every class's unit-length embeddings (C, D), float64; a class without any is an error."""
    x = np.asarray(x, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    counts = np.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        from ..utils import DataError

        raise DataError(f"{int((counts == 0).sum())} training speaker(s) have no training embedding (first: "
                        f"class {int(np.flatnonzero(counts == 0)[0])})")
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, y, x)
    return sums / counts[:, None]


def train_oltr_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, epochs: int = 30, batch_size: int = 128,
                          lr: float = 0.1, weight_decay: float = 5e-4, seed: int = 0,
                          head_kwargs: dict[str, Any] | None = None, device: str = "cpu") -> nn.Module:
    """An OLTR head with its memory at the class means of the unit-length `x`, trained on the frozen `x` (class-balanced
    sampling, SGD momentum 0.9 with a cosine lr over the steps); returned in eval mode on the CPU."""
    kwargs = {k: v for k, v in {**OLTR_HEAD, **(head_kwargs or {})}.items() if k != "name"}
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        head = build_head("oltr", x.shape[1], num_classes, **kwargs)
    finally:
        torch.random.set_rng_state(gen_state)
    centroids = torch.from_numpy(class_centroids(x, y, num_classes)).float()
    head.init_memory(centroids, directions=centroids)
    head.to(device)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)).to(device), torch.from_numpy(y).long().to(device)
    criterion = build_loss("ce")
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    samp = build_sampler("class_balanced", y, seed=seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * math.ceil(len(samp) / batch_size)))
    head.train()
    for epoch in range(epochs):
        samp.set_epoch(epoch)
        order = torch.as_tensor(samp.indices(), device=device)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            loss = criterion(head(xt[idx], yt[idx]), yt[idx])
            if head.extra_loss is not None:
                loss = loss + head.extra_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval().cpu()


def decouple_oltr(base_exp: Any, out_exp: Any, train_emb: Any, train_data: Any, epochs: int = 30,
                  batch_size: int = 128, lr: float = 0.1, seed: int = 0, training: Any = None) -> dict:
    """Decouple-OLTR on `base_exp`'s raw training embeddings, written as `out_exp` (avg_model.pt: the base's
    extractor + the OLTR head; emb -> the base's stores; decoupled.json), as spkcausal.inference.decoupled does
    for cRT; returns the decoupled.json record. `training`: the checked decoupled.training_set, if at hand."""
    from .decoupled import _write_decoupled, training_set

    training = training or training_set(base_exp, train_emb, train_data)
    base_exp, out_exp = Path(base_exp), Path(out_exp)
    ckpt, state, speakers, x, y = training.ckpt, training.state, training.speakers, training.x, training.y
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    head = train_oltr_classifier(np.asarray(x, np.float64), np.asarray(y), len(speakers), epochs, batch_size, lr,
                                 seed=seed, device=dev)
    info: dict = {"method": "oltr", "base": str(base_exp.resolve()), "base_checkpoint": str(ckpt),
                  "base_config": state["config"], "classifier": "OLTR meta-embedding + cosine-norm classifier "
                  "on the raw embeddings, memory = class means", "head": dict(OLTR_HEAD), "sampler": "class_balanced",
                  "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "n_train": int(len(y))}
    _write_decoupled(out_exp, base_exp, state, head, speakers, info, head_cfg=dict(OLTR_HEAD))
    return info
