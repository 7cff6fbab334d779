"""TDE's alpha chosen on a dev set, never on the test trials, over one grid (ALPHA_GRID: 0 to 3 in steps of
0.25, reaching the paper's ImageNet-LT value 3.0) plus the authors' heuristic 1 / mean cos(x^k, d^k) as an
extra candidate. The heuristic is computed on the training embeddings when a store of them is given (at most
20,000 of them, a seeded sample), else on the dev utterances; the result says which.

Criteria (`criterion`): `iden_val` (default) maximises identification accuracy (mean per class) of the TDE
logits on an iden val dir; `dev_eer` / `dev_min_dcf` minimise EER / minDCF(0.01) of cosine scores on TDE'd
embeddings of the first labelled dev trial list (e.g. the recipes' seen-speaker dev list on the iden val
split: where identification accuracy saturates, ties would always go to alpha 0). Ties go to the smaller
alpha. Every curve is returned (and written) for the record, and `alpha_source` says whether the chosen value
came from the grid or the heuristic.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from ..data.embeddings import EmbeddingStore, unit_rows
from ..data.trialio import read_trials
from ..scoring.metrics import compute_eer, compute_min_dcf, mean_per_class_accuracy
from ..utils import DataError, PathLike, UsageError, get_logger, write_text_atomic

__all__ = ["ALPHA_GRID", "CRITERIA", "choose_alpha"]

ALPHA_GRID = tuple(0.25 * i for i in range(13))  # 0, 0.25, ..., 3.0: the one grid recipes and CLI use
CRITERIA = ("iden_val", "dev_eer", "dev_min_dcf")
HEURISTIC_MAX_UTTS = 20000
log = get_logger(__name__)


def _dev_trial_curves(store: EmbeddingStore, trials_path: PathLike, mean_feature: np.ndarray, num_heads: int,
                      alphas: Sequence[float], feature_norm: str = "l2") -> tuple[list[float], list[float]]:
    """EER and minDCF(0.01) of cosine scores on TDE'd embeddings of a labelled dev trial list, per alpha."""
    from .tde import tde_embeddings

    trials = read_trials(trials_path)
    if not trials.has_labels:
        raise DataError("dev trial list has no target/nontarget labels", trials_path)
    keys, inv = np.unique(np.concatenate([trials.enroll, trials.test]), return_inverse=True)
    raw = store.get([str(k) for k in keys])
    e_idx, t_idx = inv[: len(trials)], inv[len(trials):]
    eers, dcfs = [], []
    for a in alphas:
        e = unit_rows(tde_embeddings(raw, mean_feature, float(a), num_heads, feature_norm))
        s = np.einsum("ij,ij->i", e[e_idx], e[t_idx])
        eers.append(compute_eer(s, trials.labels == 1))
        dcfs.append(compute_min_dcf(s, trials.labels == 1, 0.01))
    return eers, dcfs


def _heuristic(heuristic_emb: PathLike | None, dev_x: np.ndarray | None, mean_feature: np.ndarray,
               k: int) -> tuple[float | None, str]:
    """(1 / mean cos, where it was computed) or (None, why not)."""
    from .tde import alpha_heuristic

    if heuristic_emb is not None:
        store = EmbeddingStore.open(heuristic_emb)
        keys = list(store.keys)
        if len(keys) > HEURISTIC_MAX_UTTS:
            keys = sorted(np.random.default_rng(0).choice(keys, HEURISTIC_MAX_UTTS, replace=False).tolist())
        x, where = store.get(keys), f"training embeddings ({heuristic_emb}, {len(keys)} utterances)"
    elif dev_x is not None:
        x, where = dev_x, "dev embeddings (no training store given)"
    else:
        return None, "no embeddings to compute it on"
    try:
        h = alpha_heuristic(np.asarray(x, dtype=np.float64), mean_feature, k)
    except ValueError as e:  # features that do not lean toward x_bar: record why instead of a number
        return None, f"{where}: {e}"
    return (h, where) if math.isfinite(h) else (None, f"{where}: not finite")


def _as_list(x: PathLike | Sequence[PathLike] | None) -> list:
    """None -> [], one path -> [path], a sequence of paths -> a list of them."""
    if x is None:
        return []
    return [x] if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__") else list(x)


def _check_request(criterion: str | None, data_dir: PathLike | None, lists: list, stores: list,
                   alphas: Sequence[float]) -> tuple[str, list[float]]:
    """(criterion, grid) after checking that the dev data the criterion needs is there."""
    if stores and len(stores) != len(lists):
        raise UsageError(f"{len(lists)} dev trial lists but {len(stores)} stores for them")
    criterion = criterion or ("iden_val" if data_dir is not None else "dev_eer")
    if criterion not in CRITERIA:
        raise UsageError(f"unknown alpha criterion {criterion!r} ({', '.join(CRITERIA)})")
    if criterion == "iden_val" and data_dir is None:
        raise UsageError("criterion iden_val needs an iden val dir (--data)")
    if criterion != "iden_val" and not lists:
        raise UsageError(f"criterion {criterion} needs a labelled dev trial list (--trials)")
    grid = [float(a) for a in alphas]
    if not grid:
        raise UsageError("no alpha values to sweep")
    return criterion, grid


def _pick_by_trials(result: dict, criterion: str, cands: list[float]) -> None:
    """Choose alpha on the first dev list's EER or minDCF curve (ties: the smaller alpha), in place."""
    curve = result["eer"] if criterion == "dev_eer" else result["min_dcf"]
    best = min(range(len(cands)), key=lambda i: (curve[i], cands[i]))
    result.update(criterion=("EER" if criterion == "dev_eer" else "minDCF(0.01)") + " on dev trials",
                  alpha=cands[best], best_value=curve[best])


def choose_alpha(emb: PathLike, ckpt: PathLike | None = None, exp_dir: PathLike | None = None,
                 data_dir: PathLike | None = None, trials: PathLike | Sequence[PathLike] | None = None,
                 alphas: Sequence[float] = ALPHA_GRID, out: PathLike | None = None,
                 trials_emb: PathLike | Sequence[PathLike] | None = None, criterion: str | None = None,
                 heuristic_emb: PathLike | None = None, heuristic: bool = True) -> dict:
    """Sweep alpha over `alphas` (+ the heuristic value) on a dev set and pick the best by `criterion`
    (module docstring; default iden_val with an iden val dir, else dev_eer). Dev trial lists (`trials`, each
    embedded in the matching `trials_emb`, default `emb`) have their EER / minDCF curves recorded."""
    lists, stores = _as_list(trials), _as_list(trials_emb)
    criterion, grid = _check_request(criterion, data_dir, lists, stores, alphas)
    from ..data.embeddings import class_labels
    from ..nn.assemble import assemble, head_logits  # torch: imported when used, so the CLI starts fast
    from .tde import sweep_alpha

    trained = assemble(ckpt, exp_dir, with_model=False)
    trained.require_causal()
    store = EmbeddingStore.open(emb)
    mean_feature, k = trained.head.mean_feature.detach().numpy(), trained.num_heads
    x = y = None
    if data_dir is not None:
        x, y = class_labels(store, data_dir, trained.speakers)
    h, where = _heuristic(heuristic_emb, x, mean_feature, k) if heuristic else (None, "not asked for")
    cands = sorted(set(grid) | ({h} if h is not None else set()))
    result: dict = {"checkpoint": str(trained.path), "store": str(emb), "grid": grid, "alphas": cands,
                    "heuristic_alpha": h, "heuristic_from": where, "criterion_name": criterion}
    if data_dir is not None:
        sweep = sweep_alpha(lambda a: mean_per_class_accuracy(y, head_logits(trained, x, a).argmax(axis=1)), cands,
                            maximize=True)
        result.update(dev=str(data_dir), accuracy=sweep.values)
        if criterion == "iden_val":
            result.update(criterion="identification accuracy (mean per class)", alpha=sweep.best_alpha,
                          best_value=sweep.best_value)
    result["dev_lists"] = []
    for i, path in enumerate(lists):
        eers, dcfs = _dev_trial_curves(EmbeddingStore.open(stores[i]) if stores else store, path, mean_feature, k,
                                       cands, trained.feature_norm)
        result["dev_lists"].append({"trials": str(path), "eer": eers, "min_dcf": dcfs})
    if lists:
        result["dev_trials"], result["eer"] = str(lists[0]), result["dev_lists"][0]["eer"]
        result["min_dcf"] = result["dev_lists"][0]["min_dcf"]
    if criterion != "iden_val":
        _pick_by_trials(result, criterion, cands)
    result["alpha_source"] = "heuristic" if h is not None and result["alpha"] == h and h not in grid else "grid"
    log.info("TDE alpha %.3f (%s) chosen by %s on %s", result["alpha"], result["alpha_source"],
             result["criterion"], data_dir if criterion == "iden_val" else lists[0])
    if out is not None:
        write_text_atomic(out, json.dumps(result, indent=1) + "\n")
    return result
