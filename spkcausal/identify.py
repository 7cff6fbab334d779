"""Closed-set identification with the trained classifier head, and TDE alpha chosen on a dev set.

Held-out utterances of *training* speakers (e.g. VoxCeleb1's iden val/test split, or a long-tail subset's
held-out dir) are embedded (`spkcausal extract`), then classified by the checkpoint's own head:
- plain: the head's eval-mode logits (AAM: s cos(x, w_i); Causal Norm: its multi-head normalised logits);
- TDE (`tde_alpha`): `spkcausal.tde.tde_logits` with the head's x_bar (Causal Norm heads only);
- mean subtraction (`mean`): x minus the mean training embedding before the head, the classification
  counterpart of mean-subtracted cosine scoring.
Class i of the head is speaker `speakers[i]` of the checkpoint (the sorted training speakers); speed-perturbed
copies (classes S..3S-1) are ignored. Shot groups come from the training dir's utterance counts, with
configurable thresholds (`many`, `few`): a small corpus needs smaller ones than ImageNet-LT's 100 / 20.

Alpha is chosen on a dev set, never on the test trials: either identification accuracy (mean per-class) on
an iden val dir, or EER of TDE'd embeddings on a dev trial list; the whole curve is returned for the record.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .datadir import read_kv
from .embeddings import EmbeddingStore
from .longtail import FEW, MANY
from .trialio import read_trials
from .utils import DataError, PathLike, get_logger, write_text_atomic

__all__ = ["split_heldout", "TrainedHead", "load_head", "class_labels", "train_counts", "head_logits", "identify",
           "choose_alpha", "DEFAULT_ALPHAS"]

DEFAULT_ALPHAS = tuple(round(0.1 * i, 2) for i in range(21))  # 0.0, 0.1, ..., 2.0
log = get_logger(__name__)


def split_heldout(data: Any, val_per_spk: int, test_per_spk: int, min_train: int = 1,
                  seed: int = 0) -> tuple[Any, Any, Any]:
    """(train, val, test) DataDirs: every speaker with at least val+test+min_train utterances gives a seeded
    random `val_per_spk` to val and `test_per_spk` to test; all other utterances stay in train.

    Unlike `longtail_subset` this keeps the training distribution as it is (minus the held-out utterances):
    speakers too small to give a held-out set are trained on but not scored."""
    if val_per_spk < 0 or test_per_spk < 0 or min_train < 0 or val_per_spk + test_per_spk == 0:
        raise ValueError("val_per_spk, test_per_spk, min_train must be >= 0 and val + test > 0")
    rng = np.random.default_rng(seed)
    val: list[str] = []
    test: list[str] = []
    need = val_per_spk + test_per_spk + min_train
    for _spk, utts in sorted(data.spk2utt.items()):
        if len(utts) < need:
            continue
        perm = rng.permutation(len(utts))
        val += [utts[i] for i in perm[:val_per_spk]]
        test += [utts[i] for i in perm[val_per_spk:val_per_spk + test_per_spk]]
    if not test and not val:
        raise DataError(f"no speaker has the {need} utterances a held-out split needs", data.path)
    held = set(val) | set(test)
    return data.subset([u for u in data.utt2spk if u not in held]), data.subset(val), data.subset(test)


@dataclass
class TrainedHead:
    """A checkpoint's classifier head (eval mode), its training config and its class -> speaker list."""

    head: Any  # torch.nn.Module; typed loosely so importing this module does not import torch
    config: dict
    speakers: list[str]
    path: Path

    @property
    def is_causal(self) -> bool:
        """True for Causal Norm heads (they carry x_bar and support TDE)."""
        return hasattr(self.head, "mean_feature")


def load_head(ckpt: PathLike) -> TrainedHead:
    """The classifier head of a training or averaged checkpoint (weights_only load)."""
    from .checkpoint import load_checkpoint
    from .heads import build_head
    from .train import merge_defaults

    ckpt = Path(ckpt)
    state = load_checkpoint(ckpt)
    for key in ("config", "head", "speakers"):
        if key not in state:
            raise DataError(f"checkpoint has no {key!r} entry (not written by spkcausal train / average-ckpt)", ckpt)
    cfg = merge_defaults(state["config"])
    weight = state["head"]["weight"]
    kwargs = {k: v for k, v in cfg["head"].items() if k != "name"}
    head = build_head(cfg["head"]["name"], int(weight.shape[1]), int(weight.shape[0]), **kwargs)
    head.load_state_dict(state["head"])
    head.eval()
    return TrainedHead(head, cfg, [str(s) for s in state["speakers"]], ckpt)


def _resolve_ckpt(ckpt: PathLike | None, exp_dir: PathLike | None) -> Path:
    if (ckpt is None) == (exp_dir is None):
        raise ValueError("give exactly one of ckpt or exp_dir")
    if ckpt is not None:
        return Path(ckpt)
    from .extract import resolve_checkpoint

    return resolve_checkpoint(exp_dir)


def class_labels(store: EmbeddingStore, data_dir: PathLike, speakers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, class indices) of the utterances of `data_dir` whose speaker is a class of the checkpoint.

    Speakers the checkpoint does not know (e.g. the trainer dropped all their audio as too short) are left out
    with a warning; a dir with none of the training speakers is an error."""
    path = Path(data_dir) / "utt2spk"
    utt2spk = read_kv(path)
    index = {s: i for i, s in enumerate(speakers)}
    unknown = sorted({s for s in utt2spk.values() if s not in index})
    utts = [u for u, s in utt2spk.items() if s in index]
    if not utts:
        raise DataError(f"none of the {len(set(utt2spk.values()))} speakers is a training speaker of the checkpoint; "
                        "closed-set identification needs held-out utterances of training speakers", path)
    if unknown:
        log.warning("%s: %d speakers are not classes of the checkpoint and are left out (first: %s)", path,
                    len(unknown), ", ".join(unknown[:5]))
    emb = store.get(utts)
    return emb, np.array([index[utt2spk[u]] for u in utts], dtype=np.int64)


def train_counts(train_dir: PathLike, speakers: Sequence[str]) -> np.ndarray:
    """Training utterances per class (the checkpoint's speaker order) from the training dir's utt2spk."""
    path = Path(train_dir) / "utt2spk"
    counts = Counter(read_kv(path).values())
    missing = [s for s in speakers if s not in counts]
    if missing:
        raise DataError(f"{len(missing)} of the checkpoint's speakers have no utterance here (first: {missing[0]}): "
                        "is this the dir the model was trained on?", path)
    return np.array([counts[s] for s in speakers], dtype=np.int64)


def head_logits(th: TrainedHead, emb: np.ndarray, tde_alpha: float | None = None,
                mean: np.ndarray | None = None) -> np.ndarray:
    """(N, S) logits over the S training speakers: plain head, TDE (alpha), or after mean subtraction."""
    import torch

    from .tde import tde_logits

    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    if mean is not None:
        x = x - torch.from_numpy(np.asarray(mean, dtype=np.float32))
    with torch.no_grad():
        if tde_alpha is not None:
            if not th.is_causal:
                raise DataError(f"TDE needs a Causal Norm head; this checkpoint has {th.config['head']['name']!r}",
                                th.path)
            y = tde_logits(th.head, x, alpha=float(tde_alpha))
        else:
            y = th.head(x)
    return y[:, : len(th.speakers)].numpy()


def _mean_per_class(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    classes, inv = np.unique(y_true, return_inverse=True)
    hit = np.bincount(inv, weights=(y_true == y_pred).astype(np.float64), minlength=len(classes))
    return float(np.mean(hit / np.bincount(inv, minlength=len(classes))))


def identify(emb: PathLike, data_dir: PathLike, train_data: PathLike, ckpt: PathLike | None = None,
             exp_dir: PathLike | None = None, tde_alpha: float | None = None, mean_store: PathLike | None = None,
             many: int = MANY, few: int = FEW) -> dict:
    """Closed-set accuracy on `data_dir` (embedded in store `emb`): Many / Medium / Few / Overall and top-1.

    Overall is the mean of per-class accuracies (equal to top-1 on a balanced held-out set)."""
    from .metrics import shot_group_accuracy
    from .scoring import store_mean

    th = load_head(_resolve_ckpt(ckpt, exp_dir))
    store = EmbeddingStore.open(emb)
    x, y = class_labels(store, data_dir, th.speakers)
    counts = train_counts(train_data, th.speakers)
    mean = store_mean(EmbeddingStore.open(mean_store)) if mean_store else None
    pred = head_logits(th, x, tde_alpha, mean).argmax(axis=1)
    acc = shot_group_accuracy(y, pred, counts, many=many, few=few)
    out = {"many": acc["many"], "medium": acc["medium"], "few": acc["few"], "overall": acc["mean_per_class"],
           "top1": acc["top1"], "n_utts": int(len(y)),
           "n_classes": {g: acc[f"n_{g}_classes"] for g in ("many", "medium", "few")},
           "thresholds": {"many": int(many), "few": int(few)}, "tde_alpha": tde_alpha,
           "mean_subtraction": bool(mean_store), "checkpoint": str(th.path), "data": str(data_dir),
           "train_data": str(train_data)}
    log.info("identification on %s (%d utts, alpha=%s, mean subtraction=%s): many %.4f medium %.4f few %.4f "
             "overall %.4f", data_dir, len(y), tde_alpha, bool(mean_store), out["many"], out["medium"], out["few"],
             out["overall"])
    return out


def _dev_trial_eer(store: EmbeddingStore, trials_path: PathLike, mean_feature: np.ndarray, num_heads: int,
                   alphas: Sequence[float]) -> list[float]:
    """EER of cosine scores on TDE'd embeddings of a labelled dev trial list, for each alpha."""
    from .metrics import compute_eer
    from .tde import tde_embeddings

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
                 alphas: Sequence[float] = DEFAULT_ALPHAS, out: PathLike | None = None,
                 trials_emb: PathLike | None = None) -> dict:
    """Sweep alpha on a dev set and pick the best: accuracy on an iden val dir (`data_dir`), else EER on a
    labelled dev trial list (`trials`, embedded in `trials_emb`, default `emb`). With both, accuracy picks and
    the EER curve is recorded beside it."""
    from .tde import alpha_heuristic, sweep_alpha

    if data_dir is None and trials is None:
        raise ValueError("choose alpha on a dev set: give an iden val dir and/or a dev trial list")
    th = load_head(_resolve_ckpt(ckpt, exp_dir))
    if not th.is_causal:
        raise DataError(f"TDE needs a Causal Norm head; this checkpoint has {th.config['head']['name']!r}", th.path)
    store = EmbeddingStore.open(emb)
    mean_feature = th.head.mean_feature.detach().numpy()
    k = int(th.head.num_heads)
    alphas = [float(a) for a in alphas]
    result: dict = {"checkpoint": str(th.path), "store": str(emb), "alphas": alphas}
    if data_dir is not None:
        x, y = class_labels(store, data_dir, th.speakers)
        sweep = sweep_alpha(lambda a: _mean_per_class(y, head_logits(th, x, a).argmax(axis=1)), alphas, maximize=True)
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
