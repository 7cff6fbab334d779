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

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.embeddings import unit_rows
from ..nn.heads import build_head
from ..nn.losses import build_loss
from ..utils import DataError
from .frozen import TrainingSet, fit_frozen, training_set, write_decoupled

__all__ = ["OLTR_HEAD", "class_centroids", "decouple_oltr", "oltr_classifier", "train_oltr_classifier"]

OLTR_HEAD: dict[str, Any] = {"name": "oltr", "scale": 16.0, "stage1_epochs": None, "reach_scale": 10.0,
                             "centroid_weight": 0.01}


def class_centroids(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean of every class's unit-length embeddings (C, D), float64; a class without any is an error."""
    x = unit_rows(x)
    counts = np.bincount(y, minlength=num_classes)
    if (counts == 0).any():
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

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        loss = criterion(head(xt[idx], yt[idx]), yt[idx])
        return loss + head.extra_loss if head.extra_loss is not None else loss  # the centroid loss

    head.train()
    fit_frozen(head.parameters(), batch_loss, y, "class_balanced", epochs, batch_size, lr, momentum=0.9,
               weight_decay=weight_decay, seed=seed, device=device)
    return head.eval().cpu()


def oltr_classifier(training: TrainingSet, epochs: int, batch_size: int, lr: float,
                    seed: int) -> tuple[nn.Module, dict, dict]:
    """(the trained OLTR head, its config section, the decoupled.json record) on the training set's raw
    embeddings (spkcausal.inference.decoupled's registry entry `oltr`)."""
    ckpt, state, speakers, x, y = training.ckpt, training.state, training.speakers, training.x, training.y
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    head = train_oltr_classifier(np.asarray(x, np.float64), np.asarray(y), len(speakers), epochs, batch_size, lr,
                                 seed=seed, device=dev)
    info: dict = {"method": "oltr", "base": str(training.base_exp.resolve()), "base_checkpoint": str(ckpt),
                  "base_config": state["config"], "classifier": "OLTR meta-embedding + cosine-norm classifier "
                  "on the raw embeddings, memory = class means", "head": dict(OLTR_HEAD), "sampler": "class_balanced",
                  "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "n_train": int(len(y))}
    return head, dict(OLTR_HEAD), info


def decouple_oltr(base_exp: Any, out_exp: Any, train_emb: Any, train_data: Any, epochs: int = 30,
                  batch_size: int = 128, lr: float = 0.1, seed: int = 0, training: TrainingSet | None = None) -> dict:
    """Decouple-OLTR on `base_exp`'s raw training embeddings, written as `out_exp` (avg_model.pt: the base's
    extractor + the OLTR head; emb -> the base's stores; decoupled.json), as spkcausal.inference.decoupled does
    for cRT; returns the decoupled.json record. `training`: the checked frozen.training_set, if at hand."""
    training = training or training_set(base_exp, train_emb, train_data)
    head, head_cfg, info = oltr_classifier(training, epochs, batch_size, lr, seed)
    write_decoupled(Path(out_exp), Path(base_exp), training.state, head, training.speakers, info, head_cfg)
    return info
