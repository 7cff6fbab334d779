"""Seen-speaker EER by shot group within each session half, post hoc (issue 30, item 2; data.sessions).

A run's seen-speaker row (results.json `seen`: its score file, the list's utt2spk, the dir whose counts make
the shot groups) is split by whether each trial's *test* utterance comes from a session its speaker has in the
training data (data.sessions.in_training_session; which training data: below), and each half is scored by shot
group exactly as the whole list was (evidence.seen_group_figures: EER / minDCF with intervals from resampling
the enrolment speakers). Nothing is re-scored or written: the halves come from the score files the run already has.

Where the dirs come from, unless given: the test utterances' dir is the one whose utt2spk the seen row
records (stage 5's `data/vox1_iden_test`); the training sessions are those of the dir whose counts make the
row's shot groups (its `train_data`: the run's training dir; for the long-tail protocol's balanced control the
long-tailed set, as for its groups, so that each half holds the same trials for the baseline and its control and
their per-seed difference stays paired).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datadir import DataDir
from ..data.sessions import HALVES, in_training_session
from ..data.trialio import Trials
from ..utils import DataError, PathLike
from .evidence import LEVEL, N_BOOT, seen_group_figures, sorted_scores

__all__ = ["HALVES", "session_halves", "half_row"]


@lru_cache(maxsize=16)
def _load(path: str) -> DataDir:
    return DataDir.load(path)


def session_halves(row: Mapping, test_data: PathLike | None = None, train_data: PathLike | None = None,
                   p_targets: Sequence[float] = (0.01,), n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0) -> dict:
    """The seen row of a results row (records.collect_rows) split into its session halves (module docstring):
    per half its trial counts and `groups` as a seen row has them (None: no trial of that group in the half)."""
    seen = row.get("seen") or {}
    if not seen.get("scores"):
        raise DataError("no seen-speaker score file in this row: nothing to split", row.get("exp"))
    test_dir = Path(test_data) if test_data is not None else Path(seen["utt2spk"]).parent
    train_dir = Path(train_data) if train_data is not None else Path(seen["train_data"])
    enroll, test, scores, labels = sorted_scores(str(seen["scores"]))
    trials = Trials(enroll, test, labels.astype(np.int8))
    inside = in_training_session(trials, _load(str(test_dir)), _load(str(train_dir)))
    shots = seen["thresholds"]
    out: dict = {"test_data": str(test_dir), "session_train_data": str(train_dir), "halves": {}}
    for half, sel in zip(HALVES, (inside, ~inside)):
        lab = labels[sel]
        entry: dict[str, Any] = {"n_trials": int(sel.sum()), "n_target": int((lab == 1).sum()),
                                 "n_nontarget": int((lab == 0).sum())}
        if sel.any():
            entry["groups"] = seen_group_figures(enroll[sel], scores[sel], lab, seen["utt2spk"], seen["train_data"],
                                                 shots["many"], shots["few"], p_targets, n_boot, level, seed)
        else:
            entry["groups"] = {}
        out["halves"][half] = entry
    return out


def half_row(row: Mapping, halves: Mapping, half: str) -> dict:
    """A results row whose seen part is one session half's (for the report's seen columns and the tail cost);
    without verification, identification or a score file, which belong to the whole list."""
    seen = row["seen"]
    return {**row, "verification": None, "identification": None,
            "seen": {"thresholds": seen["thresholds"], "groups": dict(halves["halves"][half]["groups"])}}
