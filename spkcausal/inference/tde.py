"""Counterfactual TDE inference (Tang et al., NeurIPS 2020): the dev-set alpha sweep and TDE'd stores.

The formulas (TDE on logits and on embeddings) live in `spkcausal.nn.tde` and are re-exported here, so
`spkcausal.inference.tde.tde_logits` and friends keep working.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..nn.tde import ArrayLike, alpha_heuristic, head_direction, mean_head_cosine, tde_embeddings, tde_logits
from ..utils import DataError, PathLike, UsageError

__all__ = ["ArrayLike", "alpha_heuristic", "head_direction", "mean_head_cosine", "tde_embeddings", "tde_logits",
           "AlphaSweep", "format_alpha_curve", "sweep_alpha", "tde_store"]


@dataclass
class AlphaSweep:
    """Result of an alpha sweep: the chosen alpha and the whole curve."""

    best_alpha: float
    best_value: float
    maximize: bool
    alphas: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def format_alpha_curve(alphas: Sequence[float], values: Sequence[float], best: float) -> str:
    """An alpha curve as 'alpha value' lines, the chosen alpha marked with '*'."""
    return "\n".join(f"{a:.3f} {v:.6f}{' *' if a == best else ''}" for a, v in zip(alphas, values))


def sweep_alpha(score_fn: Callable[[float], float], alphas: Sequence[float], maximize: bool) -> AlphaSweep:
    """Evaluate `score_fn(alpha)` on a dev set for each alpha; pick the best (ties -> smallest alpha)."""
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise UsageError("no alpha values to sweep")
    values = [float(score_fn(a)) for a in alphas]
    sign = 1.0 if maximize else -1.0
    best = max(range(len(alphas)), key=lambda i: (sign * values[i], -alphas[i]))
    return AlphaSweep(alphas[best], values[best], maximize, alphas, values)


def tde_store(raw_dir: PathLike, out_dir: PathLike, alpha: float) -> Path:
    """Apply TDE with `alpha` to a raw store that has mean_feature.npy + extract.json beside it."""
    from ..data.embeddings import EmbeddingStore, write_store

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    store = EmbeddingStore.open(raw_dir)
    meta_path, mean_path = raw_dir / "extract.json", raw_dir / "mean_feature.npy"
    if not mean_path.is_file() or not meta_path.is_file():
        raise DataError("no mean_feature.npy / extract.json beside the store (extract from a Causal Norm head)",
                        raw_dir)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("tde_alpha") is not None:
        raise DataError(f"store already has TDE applied (alpha={meta['tde_alpha']}); use a raw store", raw_dir)
    mean = np.load(mean_path)
    emb = tde_embeddings(np.array(store.matrix, dtype=np.float32), mean.astype(np.float32), float(alpha),
                         int(meta["num_heads"]), str(meta.get("feature_norm", "l2")))
    return write_store(out_dir, store.keys, emb, {**meta, "tde_alpha": float(alpha), "raw_store": str(raw_dir)}, mean)
