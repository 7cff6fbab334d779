"""The session confound of seen-speaker trials (issue 30, item 2; docs/causal.md, "The session confound").

Tail speakers have few sessions, so their held-out utterances more often come from a session their training data
never had. `session_split` cuts a seen-speaker trial list in two by whether the *test* utterance's session
(`utt2sess`: a VoxCeleb video id, a LibriSpeech chapter, the synthetic corpus's 11-character session id, which
`prepare voxceleb1` takes from its `wav/idNNNNN/<session>/NNNNN.wav` path) occurs among the sessions of that
utterance's speaker in the training dir. Scored as two extra lists, seen EER by shot group within each half says
whether a Few-speaker gap is the speaker's or the session's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils import DataError, PathLike
from .datadir import DataDir
from .trialio import Trials

HALVES = ("train_session", "new_session")


def speaker_sessions(data: DataDir) -> dict[str, set[str]]:
    """Each speaker's set of sessions in a data dir (its utt2sess must cover every utterance)."""
    lacking = [u for u in data.utt2spk if u not in data.utt2sess]
    if lacking:
        where = data.path / "utt2sess" if data.path is not None else "utt2sess"
        raise DataError(f"{len(lacking)} utterance(s) have no session, e.g. {sorted(lacking)[:3]}; the session "
                        "split needs a complete utt2sess", where)
    out: dict[str, set[str]] = {}
    for utt, spk in data.utt2spk.items():
        out.setdefault(spk, set()).add(data.utt2sess[utt])
    return out


def in_training_session(trials: Trials, test_data: DataDir, train_data: DataDir) -> np.ndarray:
    """(N,) bool: the trial's test utterance comes from a session its speaker has in `train_data` (a speaker
    absent from training has none)."""
    train = speaker_sessions(train_data)
    speaker_sessions(test_data)  # a complete utt2sess, or the error naming it
    out = np.zeros(len(trials), dtype=bool)
    for i, utt in enumerate(trials.test.tolist()):
        spk = test_data.utt2spk.get(utt)
        if spk is None:
            line = f" (trial line {int(trials.line_no[i])})" if trials.line_no is not None else ""
            raise DataError(f"test utterance {utt!r}{line} is not in the data dir", test_data.path)
        out[i] = test_data.utt2sess[utt] in train.get(spk, ())
    return out


def _take(trials: Trials, mask: np.ndarray) -> Trials:
    pick = lambda a: None if a is None else a[mask]  # noqa: E731
    return Trials(trials.enroll[mask], trials.test[mask], trials.labels[mask], pick(trials.scores),
                  pick(trials.line_no))


def session_split(trials: Trials, test_data: DataDir, train_data: DataDir) -> tuple[Trials, Trials]:
    """(train_session, new_session): the trials whose test utterance's session occurs in its speaker's training
    data, and the others; each keeps the list's order."""
    mask = in_training_session(trials, test_data, train_data)
    return _take(trials, mask), _take(trials, ~mask)


def half_paths(out: PathLike) -> tuple[Path, Path]:
    """Where the two halves of the list at `out` go: `<out>.train_session` and `<out>.new_session`."""
    out = Path(out)
    return tuple(out.with_name(f"{out.name}.{h}") for h in HALVES)  # type: ignore[return-value]
