"""What every decoupled classifier (spkcausal.inference.decoupled: cRT, tau-norm, NCM, LWS, Decouple-OLTR) shares:
the base system's checked training set of frozen embeddings, the one fitting loop on frozen features, and the
decoupled experiment written beside the base."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from ..data.embeddings import EmbeddingStore, class_labels
from ..data.samplers import build_sampler
from ..experiments.expdir import DECOUPLED_FILE, DECOUPLED_FORMAT, DECOUPLED_VERSION
from ..experiments.paths import stored_path
from ..experiments.plan import decoupled_record
from ..experiments.runs import write_run
from ..nn.checkpoint import load_checkpoint, save_checkpoint
from ..nn.network import resolve_checkpoint
from ..utils import DataError, write_text_atomic

__all__ = ["TrainingSet", "training_set", "checked_store", "fit_frozen", "write_decoupled"]


class TrainingSet(NamedTuple):
    """A base experiment's checkpoint and its frozen training embeddings, checked by `training_set`."""

    base_exp: Path
    ckpt: Path
    state: dict
    speakers: list[str]
    x: np.ndarray
    y: np.ndarray


def _model_dim(state: dict) -> int | None:
    """The embedding dimension the base model makes: its head's input size (None without a head)."""
    head = state.get("head") or {}
    return int(head["weight"].shape[-1]) if "weight" in head else None


def checked_store(store_dir: Any, state: dict, ckpt: Any) -> Any:
    """The store at `store_dir`, refused (DataError naming it and both dimensions) when its embeddings are not of
    the dimension the checkpoint's model makes."""
    store = EmbeddingStore.open(store_dir)
    dim = _model_dim(state)
    if dim is not None and store.dim != dim:
        raise DataError(f"embeddings of dimension {store.dim}; the model of {ckpt} makes {dim}-dimensional ones "
                        "(a store of another system?)", store.path)
    return store


def training_set(base_exp: Any, train_emb: Any, train_data: Any) -> TrainingSet:
    """The base's checkpoint and the (embeddings, class indices) of its training speakers, for every decoupled
    classifier (NCM, LWS, cRT, tau-norm, OLTR): a store of another dimension than the model's, or a training speaker
    (a class of the checkpoint) without any embedding, is a DataError naming the store and the speaker."""
    ckpt = resolve_checkpoint(exp_dir=base_exp)
    state = load_checkpoint(ckpt)
    speakers = [str(s) for s in state["speakers"]]
    store = checked_store(train_emb, state, ckpt)
    x, y = class_labels(store, train_data, speakers)
    absent = np.flatnonzero(np.bincount(y, minlength=len(speakers)) == 0)
    if len(absent):
        raise DataError(f"training speaker {speakers[absent[0]]!r} has no embedding of {train_data} here "
                        f"({len(absent)} of the {len(speakers)} classes of {ckpt} have none); a classifier "
                        "needs every training speaker", store.path)
    return TrainingSet(Path(base_exp), Path(ckpt), state, speakers, x, y)


def fit_frozen(params: Iterable[Tensor], batch_loss: Callable[[Tensor], Tensor], labels: np.ndarray, sampler: str,
               epochs: int, batch_size: int, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
               seed: int = 0, device: str | torch.device = "cpu") -> None:
    """SGD (momentum, cosine lr over all steps) on `params`, in batches of `sampler`'s order over `labels`;
    `batch_loss(indices)` is the loss of one batch of rows of the frozen features."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    samp = build_sampler(sampler, labels, seed=seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * math.ceil(len(samp) / batch_size)))
    for epoch in range(epochs):
        samp.set_epoch(epoch)
        order = torch.as_tensor(samp.indices(), device=device)
        for b in range(0, len(order), batch_size):
            loss = batch_loss(order[b : b + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def write_decoupled(out_exp: Path, base_exp: Path, state: dict, head: nn.Module, speakers: list[str],
                    info: dict, head_cfg: dict | None = None) -> None:
    """`avg_model.pt` (the base's extractor + the new head, by default linear), config.yaml, the emb link,
    decoupled.json (experiments.expdir's format) and run.json (experiments.runs)."""
    cfg = {**state["config"], "head": dict(head_cfg or {"name": "linear", "bias": False})}
    new = {"config": cfg, "head": {k: v.detach().cpu() for k, v in head.state_dict().items()}, "speakers": speakers}
    if "model" in state:
        new["model"] = state["model"]
    out_exp.mkdir(parents=True, exist_ok=True)
    save_checkpoint(new, out_exp / "avg_model.pt")
    write_text_atomic(out_exp / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    link = out_exp / "emb"
    if link.is_symlink() or not link.exists():
        if link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(base_exp.resolve() / "emb", out_exp.resolve()), link)
    # paths relative to the experiment dir where they lie in its tree (experiments.paths): a moved tree keeps them
    base, ckpt = stored_path(info["base"], out_exp), stored_path(info["base_checkpoint"], out_exp)
    stored = {"format": DECOUPLED_FORMAT, "version": DECOUPLED_VERSION, **info, "base": base, "base_checkpoint": ckpt}
    write_text_atomic(out_exp / DECOUPLED_FILE, json.dumps(stored, indent=1) + "\n")
    write_run(out_exp, decoupled_record(out_exp, base_exp, info["method"], cfg))
