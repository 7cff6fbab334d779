"""Trials of two score files lined up for paired comparisons, and the bootstrap's resampling unit of each
trial: what `spkcausal eer --ci / --paired` and the report's evidence (`spkcausal.results.evidence`) share."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..data.trialio import Scores
from ..utils import DataError

__all__ = ["resampling_groups", "align_scores"]


def resampling_groups(enroll: np.ndarray, utt2spk: Mapping[str, str]) -> np.ndarray:
    """The bootstrap's unit of each trial: its enrolment key, or that key's speaker when `utt2spk` has it."""
    keys, inverse = np.unique(enroll, return_inverse=True)
    return np.array([utt2spk.get(k, k) for k in keys.tolist()], dtype=object)[inverse.ravel()]


def align_scores(a: Scores, b: Scores, path_a: str, path_b: str) -> np.ndarray:
    """Scores of b in a's trial order; DataError naming path_b unless both hold the same labelled trials."""
    if len(a) != len(b):
        raise DataError(f"{len(b)} trials, but {path_a} has {len(a)}: --paired needs the same trials in both", path_b)
    ta, tb = a.trials(), b.trials()
    oa, ob = np.lexsort((ta.test, ta.enroll)), np.lexsort((tb.test, tb.enroll))
    differ = np.flatnonzero((ta.enroll[oa] != tb.enroll[ob]) | (ta.test[oa] != tb.test[ob]))
    if len(differ):
        k = differ[0]  # in merged sort order the smaller pair of the first mismatch is missing from the other file
        pa, pb = (ta.enroll[oa[k]], ta.test[oa[k]]), (tb.enroll[ob[k]], tb.test[ob[k]])
        if pa < pb:
            raise DataError(f"trial '{pa[0]} {pa[1]}' of {path_a} is missing: --paired needs the same trials", path_b)
        raise DataError(f"trial '{pb[0]} {pb[1]}' is not in {path_a}: --paired needs the same trials", path_b,
                        int(b.line_no[ob[k]]))
    wrong = np.flatnonzero(a.labels[oa] != b.labels[ob])
    if len(wrong):
        k = ob[wrong[0]]
        raise DataError(f"trial '{tb.enroll[k]} {tb.test[k]}' has a different label in {path_a}", path_b,
                        int(b.line_no[k]))
    scores_b = np.empty(len(a))
    scores_b[oa] = b.scores[ob]
    return scores_b
