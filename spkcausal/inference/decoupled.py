"""Decoupled two-stage baselines (Kang et al., ICLR 2020) on a trained system's frozen embeddings: cRT,
tau-normalisation, NCM (nearest class mean) and LWS (learnable weight scaling); docs/causal.md, "The paper's rows"."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.samplers import build_sampler
from ..experiments.expdir import DECOUPLED_FILE, DECOUPLED_FORMAT, DECOUPLED_VERSION
from ..experiments.paths import stored_path
from ..experiments.plan import decoupled_record
from ..experiments.runs import write_run
from ..experiments.variants import DECOUPLED_METHODS
from ..nn.heads import build_head
from ..nn.losses import build_loss


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


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """NCM's class means (C, D): the mean of each class's L2-normalised features (a class without any: zeros)."""
    x = np.asarray(features, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = np.asarray(labels)
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, y, x)
    return sums / np.maximum(np.bincount(y, minlength=num_classes), 1)[:, None]


def learn_weight_scales(features: Tensor | np.ndarray, labels: Tensor | np.ndarray, weight: Tensor,
                        sampler: str = "class_balanced", epochs: int = 10, batch_size: int = 128, lr: float = 0.1,
                        momentum: float = 0.9, seed: int = 0) -> Tensor:
    """LWS: per-class scales f (C,) of a frozen linear classifier W, logits f_c * (w_c . x), learned with
    `sampler` (class-balanced) on frozen features; only f is a parameter, W and the features never change."""
    x = torch.as_tensor(np.asarray(features) if isinstance(features, np.ndarray) else features).float()
    y = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels).long()
    w = weight.detach().float()
    base_logits = x @ w.T  # W is frozen: the per-class logits before scaling never change
    scales = nn.Parameter(torch.ones(w.shape[0]))
    opt = torch.optim.SGD([scales], lr=lr, momentum=momentum)
    samp = build_sampler(sampler, y.numpy(), seed=seed)
    steps = max(1, epochs * math.ceil(len(samp) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(epochs):
        samp.set_epoch(epoch)
        order = torch.as_tensor(samp.indices())
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            loss = F.cross_entropy(base_logits[idx] * scales, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return scales.detach().clone()


# ---------------------------------------------------------------- decoupled systems of the recipes

TAU_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0, 0.1, ..., 1 (Kang et al. search tau in [0, 1])
DECOUPLE_METHODS = DECOUPLED_METHODS  # the one list (experiments.variants); oltr: inference.decoupled_oltr


def _linear_probe(x: np.ndarray, y: np.ndarray, n: int, sampler: str, epochs: int, batch_size: int, lr: float,
                  seed: int) -> nn.Module:
    """A linear classifier (no bias) on unit-length features. argmax_i w_i . x does not depend on the length
    of x, so the head classifies raw embeddings exactly as it classifies the normalised ones it was trained on."""
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return retrain_classifier(xn.astype(np.float32), y, n, head="linear", sampler=sampler, epochs=epochs,
                              batch_size=batch_size, lr=lr, seed=seed, device=dev).cpu()


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
    from ..data.embeddings import EmbeddingStore
    from ..utils import DataError

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
    from ..data.embeddings import class_labels
    from ..nn.checkpoint import load_checkpoint
    from ..nn.network import resolve_checkpoint
    from ..utils import DataError

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


def decouple(base_exp: Any, method: str, out_exp: Any, train_emb: Any, train_data: Any, val_emb: Any = None,
             val_data: Any = None, epochs: int = 30, batch_size: int = 128, lr: float = 0.5, seed: int = 0,
             taus: tuple[float, ...] = TAU_GRID, training: TrainingSet | None = None) -> dict:
    """A decoupled system built on a trained experiment's frozen embeddings (Kang et al., ICLR 2020), written
    as `out_exp/avg_model.pt` (the base's extractor + a linear head) that nn.assemble.assemble loads:

    - `crt`: a linear classifier re-trained with class-balanced sampling;
    - `tau_norm`: a linear classifier trained with natural (instance-balanced) sampling, its weights then
      tau-normalised, tau chosen on the iden val split (`val_emb`, `val_data`) by mean per-class accuracy
      (ties: the smaller tau). The base heads here are cosine-based, whose logits ignore weight norms, so
      tau-normalising them would change nothing: hence the linear classifier;
    - `ncm`: no training: the class means of the L2-normalised training embeddings (class_means) as the
      weights of a cosine head, so a test embedding goes to the mean it has the largest cosine with;
    - `lws`: tau_norm's natural-sampling linear classifier W, frozen, and per-class scales f learned on top with
      class-balanced sampling (learn_weight_scales), written as the linear head f_c * w_c.
    - `oltr`: Decouple-OLTR, OLTR's meta-embedding classifier on the frozen embeddings (decoupled_oltr).

    `out_exp/emb` links to the base's stores (same extractor, same embeddings) and `out_exp/decoupled.json`
    records the method, the base and its config (for the report's system name), and the tau curve. `training`:
    the checked `training_set(base_exp, train_emb, train_data)`, when the caller has it already."""
    from ..data.embeddings import class_labels
    from ..utils import UsageError

    if method not in DECOUPLE_METHODS:
        raise UsageError(f"unknown decoupling method {method!r} ({', '.join(DECOUPLE_METHODS)})")
    if method == "tau_norm" and (val_emb is None or val_data is None):
        raise UsageError("tau_norm chooses tau on the iden val split: give its store and data dir")
    training = training or training_set(base_exp, train_emb, train_data)
    if method == "oltr":
        from .decoupled_oltr import decouple_oltr

        return decouple_oltr(base_exp, out_exp, train_emb, train_data, epochs, batch_size, lr, seed, training)
    base_exp, out_exp = Path(base_exp), Path(out_exp)
    ckpt, state, speakers, x, y = training.ckpt, training.state, training.speakers, training.x, training.y
    info: dict = {"method": method, "base": str(base_exp.resolve()), "base_checkpoint": str(ckpt),
                  "base_config": state["config"], "seed": seed, "n_train": int(len(y))}
    if method == "ncm":
        head, head_cfg = _ncm_head(x, y, len(speakers)), {"name": "cosine", "scale": 1.0}
        info.update(classifier="cosine to the class means of the L2-normalised training embeddings")
    else:
        sampler = "class_balanced" if method == "crt" else "natural"
        head, head_cfg = _linear_probe(np.asarray(x, np.float64), y, len(speakers), sampler, epochs, batch_size,
                                       lr, seed), {"name": "linear", "bias": False}
        info.update(classifier="linear, no bias, on unit-length embeddings", sampler=sampler, epochs=epochs,
                    batch_size=batch_size, lr=lr)
    if method == "tau_norm":
        vx, vy = class_labels(checked_store(val_emb, state, ckpt), val_data, speakers)
        info.update(_choose_tau(head, vx, vy, taus), val=str(val_data))
    if method == "lws":
        info.update(_scale_weights(head, x, y, epochs, batch_size, lr, seed))
    _write_decoupled(out_exp, base_exp, state, head, speakers, info, head_cfg)
    return info


def _ncm_head(x: np.ndarray, y: np.ndarray, n: int) -> nn.Module:
    """A cosine head (scale 1) whose class weights are NCM's class means: its argmax is the nearest mean."""
    from ..nn.heads import CosineHead

    head = CosineHead(x.shape[1], n, scale=1.0)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(class_means(x, y, n)).float())
    return head.eval()


def _scale_weights(head: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, lr: float,
                   seed: int) -> dict:
    """LWS on `head` (the natural-sampling linear probe, in place): w_c <- f_c * w_c with f learned by
    class-balanced sampling on the unit-length training embeddings the probe was trained on."""
    xn = np.asarray(x, np.float64)
    xn = (xn / np.maximum(np.linalg.norm(xn, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    f = learn_weight_scales(xn, y, head.weight, "class_balanced", epochs, batch_size, lr, seed=seed)
    with torch.no_grad():
        head.weight.mul_(f.unsqueeze(-1))
    return {"scale_sampler": "class_balanced", "scales": [float(v) for v in f]}


def _choose_tau(head: nn.Linear, vx: np.ndarray, vy: np.ndarray, taus: tuple[float, ...]) -> dict:
    """Tau-normalise `head` with the tau of best mean per-class accuracy on the val split (ties: the smaller)."""
    from ..scoring.metrics import mean_per_class_accuracy

    w0 = head.weight.detach().clone()
    xt = torch.from_numpy(np.asarray(vx, np.float32))
    accs = [mean_per_class_accuracy(vy, (xt @ tau_normalize(w0, t).T).argmax(1).numpy()) for t in taus]
    best = max(range(len(taus)), key=lambda i: (accs[i], -taus[i]))
    tau_normalize_head(head, taus[best])
    return {"tau": float(taus[best]), "taus": [float(t) for t in taus], "val_accuracy": accs}


def _write_decoupled(out_exp: Any, base_exp: Any, state: dict, head: nn.Module, speakers: list[str],
                     info: dict, head_cfg: dict | None = None) -> None:
    """`avg_model.pt` (the base's extractor + the new head, by default linear), config.yaml, the emb link,
    decoupled.json."""
    import json
    import os

    import yaml

    from ..nn.checkpoint import save_checkpoint
    from ..utils import write_text_atomic

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
