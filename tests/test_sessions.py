"""The session split of seen-speaker trials (spkcausal.data.sessions; make-trials --session-split) on a fixture
whose sessions are known."""
from __future__ import annotations

import numpy as np
import pytest

from spkcausal.cli import main
from spkcausal.data.datadir import DataDir
from spkcausal.data.sessions import half_paths, session_split
from spkcausal.data.trialio import Trials, read_trials
from spkcausal.utils import DataError

# speaker -> [(utterance, session)], training and held-out; Few speaker C has one training session
TRAIN = {"A": [("A-1", "a1"), ("A-2", "a2"), ("A-3", "a2")], "B": [("B-1", "b1"), ("B-2", "b1")],
         "C": [("C-1", "c1")]}
HELD = {"A": [("A-4", "a1"), ("A-5", "a3"), ("A-6", "a2")], "B": [("B-3", "b1"), ("B-4", "b9")],
        "C": [("C-2", "c2"), ("C-3", "c3"), ("C-4", "c1")]}
IN_TRAIN_SESSION = {"A-4", "A-6", "B-3", "C-4"}  # held-out utterances from a session their speaker trained on


def _dir(table: dict, path, sessions: bool = True) -> DataDir:
    rows = [(u, s, sess) for s, items in table.items() for u, sess in items]
    data = DataDir(wav={u: f"/nowhere/{u}.wav" for u, _, _ in rows}, utt2spk={u: s for u, s, _ in rows},
                   utt2sess={u: sess for u, _, sess in rows} if sessions else {})
    data.write(path)
    return DataDir.load(path)


def test_session_split_follows_the_known_sessions(tmp_path):
    train, held = _dir(TRAIN, tmp_path / "train"), _dir(HELD, tmp_path / "held")
    utts = sorted(held.utt2spk)
    pairs = [(e, t) for e in utts for t in utts if e < t]
    trials = Trials(np.array([e for e, _ in pairs]), np.array([t for _, t in pairs]),
                    np.array([int(held.utt2spk[e] == held.utt2spk[t]) for e, t in pairs], dtype=np.int8))
    same, new = session_split(trials, held, train)
    assert len(same) + len(new) == len(trials)
    assert set(same.test) <= IN_TRAIN_SESSION and not set(new.test) & IN_TRAIN_SESSION
    assert [t in IN_TRAIN_SESSION for t in trials.test] == [bool(x) for x in np.isin(trials.test, same.test)]
    # order and labels travel with the trials
    assert list(zip(same.enroll, same.test, same.labels)) == [
        (e, t, lab) for e, t, lab in zip(trials.enroll, trials.test, trials.labels) if t in IN_TRAIN_SESSION]


def test_make_trials_writes_the_two_halves_and_refuses_a_dir_without_sessions(tmp_path, capsys):
    _dir(TRAIN, tmp_path / "train")
    _dir(HELD, tmp_path / "held")
    out = tmp_path / "seen_test"
    rc = main(["make-trials", str(tmp_path / "held"), "--out", str(out), "--num-trials", "20", "--fit",
               "--same-session-ok", "--session-split", str(tmp_path / "train")])
    assert rc == 0
    full = read_trials(out)
    halves = [read_trials(p) for p in half_paths(out)]
    assert [p.name for p in half_paths(out)] == ["seen_test.train_session", "seen_test.new_session"]
    assert sorted(zip(full.enroll, full.test)) == sorted(
        (e, t) for h in halves for e, t in zip(h.enroll, h.test))
    assert set(halves[0].test) <= IN_TRAIN_SESSION and not set(halves[1].test) & IN_TRAIN_SESSION
    assert len(halves[0]) and len(halves[1])
    printed = capsys.readouterr().out
    assert f"{len(halves[0])} trials" in printed and "seen_test.new_session" in printed

    _dir(TRAIN, tmp_path / "nosess", sessions=False)
    out2 = tmp_path / "other"
    rc = main(["make-trials", str(tmp_path / "held"), "--out", str(out2), "--num-trials", "20", "--fit",
               "--session-split", str(tmp_path / "nosess")])
    assert rc == 2 and "utt2sess" in capsys.readouterr().err
    assert not out2.exists() and not any(p.exists() for p in half_paths(out2))
    with pytest.raises(DataError, match="not in the data dir"):
        session_split(Trials(np.array(["A-4"]), np.array(["Z-9"]), np.array([0], dtype=np.int8)),
                      DataDir.load(tmp_path / "held"), DataDir.load(tmp_path / "train"))
