"""Decoupled two-stage baselines (Kang et al., ICLR 2020) on a trained system's frozen embeddings: cRT,
tau-normalisation, NCM (nearest class mean), LWS (learnable weight scaling) and Decouple-OLTR, one registry
(DECOUPLERS) over one training set and one fitting loop (spkcausal.inference.frozen); docs/causal.md, "The
paper's rows"."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.embeddings import class_labels, unit_rows
from ..experiments.variants import DECOUPLED_METHODS
from ..nn.heads import CosineHead, build_head
from ..nn.losses import build_loss
from ..registry import Registry
from ..scoring.metrics import mean_per_class_accuracy
from ..utils import UsageError
from .decoupled_oltr import oltr_classifier
from .frozen import TrainingSet, checked_store, fit_frozen, training_set, write_decoupled

__all__ = ["tau_normalize", "tau_normalize_head", "retrain_classifier", "class_means", "learn_weight_scales",
           "TAU_GRID", "DECOUPLE_METHODS", "DECOUPLERS", "DecoupleArgs", "TrainingSet", "training_set",
           "checked_store", "decouple"]


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
    clf.train()
    fit_frozen(clf.parameters(), lambda idx: criterion(clf(x[idx], y[idx]), y[idx]), y.cpu().numpy(), sampler,
               epochs, batch_size, lr, momentum, weight_decay, seed, device)
    return clf.eval()


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """NCM's class means (C, D): the mean of each class's L2-normalised features (a class without any: zeros)."""
    x = unit_rows(features)
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
    fit_frozen([scales], lambda idx: F.cross_entropy(base_logits[idx] * scales, y[idx]), y.numpy(), sampler, epochs,
               batch_size, lr, momentum, seed=seed)
    return scales.detach().clone()


# ---------------------------------------------------------------- decoupled systems of the recipes

TAU_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0, 0.1, ..., 1 (Kang et al. search tau in [0, 1])


class DecoupleArgs(NamedTuple):
    """What `decouple` passes every method besides the training set."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    val_emb: Any
    val_data: Any
    taus: tuple[float, ...]


# method -> (training set, arguments) -> (head, its config section, the decoupled.json record)
Decoupler = Callable[[TrainingSet, DecoupleArgs], tuple[nn.Module, dict, dict]]
DECOUPLERS: Registry[Decoupler] = Registry("decoupling method")


def _record(t: TrainingSet, method: str, a: DecoupleArgs) -> dict:
    return {"method": method, "base": str(t.base_exp.resolve()), "base_checkpoint": str(t.ckpt),
            "base_config": t.state["config"], "seed": a.seed, "n_train": int(len(t.y))}


def _linear_probe(x: np.ndarray, y: np.ndarray, n: int, sampler: str, epochs: int, batch_size: int, lr: float,
                  seed: int) -> nn.Module:
    """A linear classifier (no bias) on unit-length features. argmax_i w_i . x does not depend on the length
    of x, so the head classifies raw embeddings exactly as it classifies the normalised ones it was trained on."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return retrain_classifier(unit_rows(x).astype(np.float32), y, n, head="linear", sampler=sampler, epochs=epochs,
                              batch_size=batch_size, lr=lr, seed=seed, device=dev).cpu()


def _probe(t: TrainingSet, method: str, a: DecoupleArgs, sampler: str) -> tuple[nn.Module, dict, dict]:
    head = _linear_probe(np.asarray(t.x, np.float64), t.y, len(t.speakers), sampler, a.epochs, a.batch_size, a.lr,
                         a.seed)
    info = {**_record(t, method, a), "classifier": "linear, no bias, on unit-length embeddings", "sampler": sampler,
            "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr}
    return head, {"name": "linear", "bias": False}, info


@DECOUPLERS.register("crt")
def _crt(t: TrainingSet, a: DecoupleArgs) -> tuple[nn.Module, dict, dict]:
    """A linear classifier re-trained with class-balanced sampling."""
    return _probe(t, "crt", a, "class_balanced")


@DECOUPLERS.register("tau_norm")
def _tau_norm(t: TrainingSet, a: DecoupleArgs) -> tuple[nn.Module, dict, dict]:
    """The natural-sampling linear classifier, tau-normalised with the tau chosen on the val split."""
    head, cfg, info = _probe(t, "tau_norm", a, "natural")
    vx, vy = class_labels(checked_store(a.val_emb, t.state, t.ckpt), a.val_data, t.speakers)
    info.update(_choose_tau(head, vx, vy, a.taus), val=str(a.val_data))
    return head, cfg, info


@DECOUPLERS.register("ncm")
def _ncm(t: TrainingSet, a: DecoupleArgs) -> tuple[nn.Module, dict, dict]:
    """A cosine head (scale 1) whose class weights are NCM's class means: its argmax is the nearest mean."""
    n = len(t.speakers)
    head = CosineHead(t.x.shape[1], n, scale=1.0)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(class_means(t.x, t.y, n)).float())
    info = {**_record(t, "ncm", a), "classifier": "cosine to the class means of the L2-normalised training embeddings"}
    return head.eval(), {"name": "cosine", "scale": 1.0}, info


@DECOUPLERS.register("lws")
def _lws(t: TrainingSet, a: DecoupleArgs) -> tuple[nn.Module, dict, dict]:
    """The natural-sampling linear classifier W, frozen, with per-class scales learned class-balanced on top."""
    head, cfg, info = _probe(t, "lws", a, "natural")
    info.update(_scale_weights(head, t.x, t.y, a.epochs, a.batch_size, a.lr, a.seed))
    return head, cfg, info


@DECOUPLERS.register("oltr")
def _oltr(t: TrainingSet, a: DecoupleArgs) -> tuple[nn.Module, dict, dict]:
    """Decouple-OLTR (spkcausal.inference.decoupled_oltr)."""
    return oltr_classifier(t, a.epochs, a.batch_size, a.lr, a.seed)


DECOUPLE_METHODS = DECOUPLED_METHODS  # the one list (experiments.variants), in the order docs and CLI list them


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
    if method not in DECOUPLERS:
        raise UsageError(f"unknown decoupling method {method!r} ({', '.join(DECOUPLE_METHODS)})")
    if method == "tau_norm" and (val_emb is None or val_data is None):
        raise UsageError("tau_norm chooses tau on the iden val split: give its store and data dir")
    training = training or training_set(base_exp, train_emb, train_data)
    args = DecoupleArgs(epochs, batch_size, lr, seed, val_emb, val_data, taus)
    head, head_cfg, info = DECOUPLERS.get(method)(training, args)
    write_decoupled(Path(out_exp), Path(base_exp), training.state, head, training.speakers, info, head_cfg)
    return info


def _scale_weights(head: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, lr: float,
                   seed: int) -> dict:
    """LWS on `head` (the natural-sampling linear probe, in place): w_c <- f_c * w_c with f learned by
    class-balanced sampling on the unit-length training embeddings the probe was trained on."""
    f = learn_weight_scales(unit_rows(x).astype(np.float32), y, head.weight, "class_balanced", epochs, batch_size,
                            lr, seed=seed)
    with torch.no_grad():
        head.weight.mul_(f.unsqueeze(-1))
    return {"scale_sampler": "class_balanced", "scales": [float(v) for v in f]}


def _choose_tau(head: nn.Linear, vx: np.ndarray, vy: np.ndarray, taus: tuple[float, ...]) -> dict:
    """Tau-normalise `head` with the tau of best mean per-class accuracy on the val split (ties: the smaller)."""
    w0 = head.weight.detach().clone()
    xt = torch.from_numpy(np.asarray(vx, np.float32))
    accs = [mean_per_class_accuracy(vy, (xt @ tau_normalize(w0, t).T).argmax(1).numpy()) for t in taus]
    best = max(range(len(taus)), key=lambda i: (accs[i], -taus[i]))
    tau_normalize_head(head, taus[best])
    return {"tau": float(taus[best]), "taus": [float(t) for t in taus], "val_accuracy": accs}
