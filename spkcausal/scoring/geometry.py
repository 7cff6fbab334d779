"""The geometry of speakers in an embedding space, by shot group: why tail speakers verify worse (docs/demo.md).

For each speaker s with utterance embeddings x (L2-normalised) and centroid c_s = normalise(mean x):
- spread_s: the mean angle (degrees) between its utterances and c_s (intra-speaker spread);
- nearest_s: the angle between c_s and the nearest other speaker's centroid (inter-speaker separation);
- ratio_s = nearest_s / spread_s: how many spreads away the nearest impostor sits (larger is easier).
A group's figure is the mean over its speakers, with a 95% Student-t interval over speakers. Numpy only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..data.longtail import GROUPS, shot_groups
from ..utils import DataError, PathLike, SpkcausalError, UsageError

FIGURES = ("spread", "nearest", "ratio")


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(x)):
        raise DataError("embeddings must be finite and non-zero to measure their geometry")
    return x / norms


def _angle(cos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def speaker_geometry(emb: np.ndarray, labels: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Per speaker (0..S-1, in label order): spread, nearest and ratio (see the module doc), and its count."""
    labels = np.asarray(labels)
    x = _normalise(np.asarray(emb, dtype=np.float64))
    speakers, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(speakers) < 2:
        raise UsageError(f"need at least two speakers to measure separation, got {len(speakers)}")
    sums = np.zeros((len(speakers), x.shape[1]))
    np.add.at(sums, inv, x)
    cent = _normalise(sums)
    spread = np.bincount(inv, weights=_angle(np.sum(x * cent[inv], axis=1)), minlength=len(speakers)) / counts
    sim = cent @ cent.T
    np.fill_diagonal(sim, -np.inf)
    nearest = _angle(sim.max(axis=1))
    with np.errstate(divide="ignore"):
        ratio = np.where(spread > 0, nearest / np.where(spread > 0, spread, 1.0), np.inf)
    return {"speakers": speakers, "count": counts, "spread": spread, "nearest": nearest, "ratio": ratio}


def _mean_ci(v: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    h = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - h, m + h


def group_geometry(emb: np.ndarray, labels: Sequence[Any], train_counts: Mapping[Any, int], many: int,
                   few: int, min_utts: int = 2) -> dict[str, dict[str, Any]]:
    """Spread / nearest / ratio by shot group (training counts decide the group) over speakers with >= min_utts
    utterances here (a speaker with one utterance has no spread); mean and 95% t-interval over speakers."""
    label_arr = np.asarray(labels)
    missing = sorted(set(label_arr.tolist()) - set(train_counts))[:3]
    if missing:
        raise DataError(f"speaker(s) {missing} have embeddings but no training count: not training speakers")
    g = speaker_geometry(emb, label_arr)
    groups = shot_groups(np.array([train_counts[s] for s in g["speakers"]]), many, few)
    keep = g["count"] >= min_utts
    out: dict[str, dict[str, Any]] = {}
    for name in (*GROUPS, "all"):
        sel = keep & ((groups == name) if name != "all" else True)
        row: dict[str, Any] = {"speakers": int(sel.sum())}
        for f in FIGURES:
            row[f], lo, hi = _mean_ci(g[f][sel])
            row[f + "_ci"] = [lo, hi]
        out[name] = row
    return out


def over_seeds(results: Sequence[Mapping[str, Mapping[str, Any]]], level: float = 0.95) -> dict[str, dict[str, Any]]:
    """group_geometry of several training seeds of one system: each figure's mean over seeds with a Student-t
    interval over seeds (one result is returned as it is: its interval is over speakers)."""
    if len(results) == 1:
        return {name: dict(row) for name, row in results[0].items()}
    out: dict[str, dict[str, Any]] = {}
    for name in results[0]:
        row: dict[str, Any] = {"speakers": results[0][name]["speakers"], "seeds": len(results)}
        for f in FIGURES:
            row[f], lo, hi = _mean_ci(np.array([r[name][f] for r in results], dtype=np.float64), level)
            row[f + "_ci"] = [lo, hi]
        out[name] = row
    return out


def format_geometry(rows: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A markdown table: one row per (system, group), the three figures with their intervals."""
    lines = ["| system | group | speakers | spread (deg) | nearest other (deg) | nearest / spread |",
             "|---|---|---:|---:|---:|---:|"]
    for system, groups in rows.items():
        for name, r in groups.items():
            cells = [f"{r[f]:.2f} [{r[f + '_ci'][0]:.2f}, {r[f + '_ci'][1]:.2f}]" if r[f] == r[f] else "-"
                     for f in FIGURES]
            lines.append(f"| {system} | {name} | {r['speakers']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tail_geometry(emb: PathLike, data_dir: PathLike, train_dir: PathLike, many: int, few: int,
                  min_utts: int = 2) -> dict[str, dict[str, Any]]:
    """group_geometry of an embedding store whose keys are utterances of `data_dir` (e.g. the iden test split of
    the training speakers), with the shot groups from `train_dir`'s utt2spk counts."""
    from collections import Counter

    from ..data.datadir import read_kv
    from ..data.embeddings import EmbeddingStore

    store = EmbeddingStore.open(emb)
    u2s_path, train_path = Path(data_dir) / "utt2spk", Path(train_dir) / "utt2spk"
    utt2spk = read_kv(u2s_path)
    missing = [k for k in store.keys if k not in utt2spk][:3]
    if missing:
        raise DataError(f"keys {missing} are not utterances of {u2s_path}; expected a store of its utterances",
                        store.path)
    labels = [utt2spk[k] for k in store.keys]
    counts = Counter(read_kv(train_path).values())
    stranger = next((i for i, s in enumerate(labels) if s not in counts), None)
    if stranger is not None:
        raise DataError(f"speaker {labels[stranger]!r} (key {store.keys[stranger]!r}) has no utterance in "
                        f"{train_path}; expected training speakers only", store.path)
    x = np.asarray(store.matrix)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1) | ~(x != 0).any(axis=1))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"the embedding of {store.keys[i]!r} (speaker {labels[i]!r}) is not finite or is all "
                        "zero; expected finite non-zero embeddings", store.path)
    try:
        return group_geometry(x, labels, counts, many, few, min_utts)
    except SpkcausalError as e:  # e.g. fewer than two speakers: named with the store it was measured on
        raise DataError(f"{e} (speakers from {u2s_path})", store.path) from None
