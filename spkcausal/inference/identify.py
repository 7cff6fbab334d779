"""Closed-set identification with the trained classifier head, by shot group.

Held-out utterances of *training* speakers (e.g. VoxCeleb1's iden val/test split, or a long-tail subset's
held-out dir) are embedded (`spkcausal extract`), then classified by the checkpoint's own head:
- plain: the head's eval-mode logits (AAM: s cos(x, w_i); Causal Norm: its multi-head normalised logits);
- TDE (`tde_alpha`): `spkcausal.inference.tde.tde_logits` with the head's x_bar (Causal Norm heads only);
- mean subtraction (`mean`): x minus the mean training embedding before the head, the classification
  counterpart of mean-subtracted cosine scoring.
Class i of the head is speaker `speakers[i]` of the checkpoint (the sorted training speakers); speed-perturbed
copies (classes S..3S-1) are ignored. Shot groups come from the training dir's utterance counts, with
configurable thresholds (`many`, `few`): a small corpus needs smaller ones than ImageNet-LT's 100 / 20.
TDE's alpha is chosen on a dev set by `spkcausal.inference.tde_alpha`. Every accuracy carries a 95% per-speaker
bootstrap interval (`<group>_ci`), and the per-utterance predictions can be kept (`predictions`, an .npz of
utts, y_true, y_pred, train_counts, speakers) so that the report pairs two systems on the same utterances.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.datadir import labelled_utts, train_counts
from ..data.embeddings import EmbeddingStore
from ..data.longtail import FEW, MANY
from ..nn.assemble import assemble, head_logits
from ..utils import DataError, PathLike, get_logger

__all__ = ["identify", "save_predictions"]

log = get_logger(__name__)


def save_predictions(path: PathLike, utts: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray,
                     counts: np.ndarray, speakers: Sequence[str]) -> Path:
    """Per-utterance predictions as an .npz (string arrays, no pickle), written atomically."""
    from ..utils import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, utts=np.array(utts, dtype=str), y_true=y_true, y_pred=y_pred, train_counts=counts,
                 speakers=np.array(speakers, dtype=str))
    return path


def identify(emb: PathLike, data_dir: PathLike, train_data: PathLike, ckpt: PathLike | None = None,
             exp_dir: PathLike | None = None, tde_alpha: float | None = None, mean_store: PathLike | None = None,
             many: int = MANY, few: int = FEW, predictions: PathLike | None = None, n_boot: int = 1000,
             boot_seed: int = 0) -> dict:
    """Closed-set accuracy on `data_dir` (embedded in store `emb`): Many / Medium / Few / Overall and top-1, each
    with a per-speaker bootstrap interval (`<key>_ci`); `predictions` keeps the per-utterance predictions.

    Overall is the mean of per-class accuracies (equal to top-1 on a balanced held-out set)."""
    from ..scoring.bootstrap import bootstrap_accuracy
    from ..scoring.cosine import store_mean

    trained = assemble(ckpt, exp_dir, with_model=False)
    if (trained.config.get("data") or {}).get("labels") == "utterance":
        raise DataError("the checkpoint's classes are its training utterances (data.labels: utterance, "
                        "self-supervised pre-training); closed-set identification needs speaker classes: train on "
                        "from it with speaker labels first (train.init_from)", trained.path)
    store = EmbeddingStore.open(emb)
    weight = getattr(trained.head, "weight", None)
    width = None if weight is None else int(weight.shape[1])
    for s in [store] + ([EmbeddingStore.open(mean_store)] if mean_store else []):
        if width is not None and s.dim != width:
            raise DataError(f"{s.dim}-dim embeddings; the head of {trained.path} takes {width}: "
                            "the store must come from this model", s.path)
    utts, y = labelled_utts(data_dir, trained.speakers)
    x = store.get(utts)
    counts = train_counts(train_data, trained.speakers)
    mean = store_mean(EmbeddingStore.open(mean_store)) if mean_store else None
    pred = head_logits(trained, x, tde_alpha, mean).argmax(axis=1)
    acc = bootstrap_accuracy(y, pred, counts, n_boot=n_boot, seed=boot_seed, many=many, few=few)
    out = {"many": acc["many"], "medium": acc["medium"], "few": acc["few"], "overall": acc["mean_per_class"],
           "top1": acc["top1"], "many_ci": acc["many_ci"], "medium_ci": acc["medium_ci"], "few_ci": acc["few_ci"],
           "overall_ci": acc["mean_per_class_ci"], "top1_ci": acc["top1_ci"], "n_boot": n_boot,
           "n_utts": int(len(y)),
           "n_classes": {g: acc[f"n_{g}_classes"] for g in ("many", "medium", "few")},
           "thresholds": {"many": int(many), "few": int(few)}, "tde_alpha": tde_alpha,
           "mean_subtraction": bool(mean_store), "checkpoint": str(trained.path), "data": str(data_dir),
           "train_data": str(train_data),
           "predictions": str(save_predictions(predictions, utts, y, pred, counts, trained.speakers).resolve())
           if predictions else None}
    log.info("identification on %s (%d utts, alpha=%s, mean subtraction=%s): many %.4f medium %.4f few %.4f "
             "overall %.4f", data_dir, len(y), tde_alpha, bool(mean_store), out["many"], out["medium"], out["few"],
             out["overall"])
    return out
