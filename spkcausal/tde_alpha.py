"""TDE's alpha chosen on a dev set, never on the test trials: identification accuracy (mean per class) of the
TDE logits on an iden val dir, or EER of cosine scores on TDE'd embeddings of a labelled dev trial list. The
whole curve is returned (and written) for the record, with the authors' 1 / mean-cos heuristic beside it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from .embeddings import EmbeddingStore
from .identify import class_labels, head_logits
from .metrics import compute_eer, mean_per_class_accuracy
from .network import load_trained
from .tde import alpha_heuristic, sweep_alpha, tde_embeddings
from .trialio import read_trials
from .utils import DataError, PathLike, UsageError, get_logger, write_text_atomic

__all__ = ["ALPHA_GRID", "choose_alpha"]

ALPHA_GRID = tuple(round(0.1 * i, 2) for i in range(21))  # 0.0, 0.1, ..., 2.0: the one grid recipes and CLI use
log = get_logger(__name__)


def _dev_trial_eer(store: EmbeddingStore, trials_path: PathLike, mean_feature: np.ndarray, num_heads: int,
                   alphas: Sequence[float]) -> list[float]:
    """EER of cosine scores on TDE'd embeddings of a labelled dev trial list, for each alpha."""
    trials = read_trials(trials_path)
    if not trials.has_labels:
        raise DataError("dev trial list has no target/nontarget labels", trials_path)
    keys, inv = np.unique(np.concatenate([trials.enroll, trials.test]), return_inverse=True)
    raw = store.get([str(k) for k in keys])
    e_idx, t_idx = inv[: len(trials)], inv[len(trials):]
    out = []
    for a in alphas:
        e = tde_embeddings(raw, mean_feature, float(a), num_heads).astype(np.float64)
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        out.append(compute_eer(np.einsum("ij,ij->i", e[e_idx], e[t_idx]), trials.labels == 1))
    return out


def choose_alpha(emb: PathLike, ckpt: PathLike | None = None, exp_dir: PathLike | None = None,
                 data_dir: PathLike | None = None, trials: PathLike | None = None,
                 alphas: Sequence[float] = ALPHA_GRID, out: PathLike | None = None,
                 trials_emb: PathLike | None = None) -> dict:
    """Sweep alpha on a dev set and pick the best: accuracy on an iden val dir (`data_dir`), else EER on a
    labelled dev trial list (`trials`, embedded in `trials_emb`, default `emb`). With both, accuracy picks and
    the EER curve is recorded beside it."""
    if data_dir is None and trials is None:
        raise UsageError("choose alpha on a dev set: give an iden val dir and/or a dev trial list")
    th = load_trained(ckpt, exp_dir, with_model=False)
    th.require_causal()
    store = EmbeddingStore.open(emb)
    mean_feature = th.head.mean_feature.detach().numpy()
    k = int(th.head.num_heads)
    alphas = [float(a) for a in alphas]
    result: dict = {"checkpoint": str(th.path), "store": str(emb), "alphas": alphas}
    if data_dir is not None:
        x, y = class_labels(store, data_dir, th.speakers)
        sweep = sweep_alpha(lambda a: mean_per_class_accuracy(y, head_logits(th, x, a).argmax(axis=1)), alphas,
                            maximize=True)
        result.update(criterion="identification accuracy (mean per class)", dev=str(data_dir),
                      accuracy=sweep.values, alpha=sweep.best_alpha, best_value=sweep.best_value)
        try:
            result["heuristic_alpha"] = alpha_heuristic(x, mean_feature, k)
        except ValueError as e:  # features that do not lean toward x_bar: record why instead of a number
            result["heuristic_alpha"] = None
            result["heuristic_note"] = str(e)
    if trials is not None:
        tstore = EmbeddingStore.open(trials_emb) if trials_emb else store
        eers = _dev_trial_eer(tstore, trials, mean_feature, k, alphas)
        result["dev_trials"] = str(trials)
        result["eer"] = eers
        if data_dir is None:
            best = min(range(len(alphas)), key=lambda i: (eers[i], alphas[i]))
            result.update(criterion="EER on dev trials", alpha=alphas[best], best_value=eers[best])
    log.info("TDE alpha %.3f chosen by %s on %s", result["alpha"], result["criterion"], data_dir or trials)
    if out is not None:
        write_text_atomic(out, json.dumps(result, indent=1) + "\n")
    return result
