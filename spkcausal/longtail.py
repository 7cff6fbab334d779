"""Long-tail profiles of a data dir: shot groups, statistics, plots and long-tailed subsets."""
from __future__ import annotations

import numpy as np

MANY, FEW = 100, 20


def shot_groups(counts: np.ndarray, many: int = MANY, few: int = FEW) -> np.ndarray:
    """Shot group of each class from its training count: 'many' (> many), 'few' (< few), else 'medium'."""
    counts = np.asarray(counts)
    return np.where(counts > many, "many", np.where(counts < few, "few", "medium"))
