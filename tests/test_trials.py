"""make_trials: balance, exact candidate sets (cross-checked by brute force), determinism, errors, CLI."""
import itertools
from collections import Counter

import numpy as np
import pytest

from spkcausal.cli import main
from spkcausal.data.datadir import DataDir
from spkcausal.data.trialio import read_trials
from spkcausal.data.trials import make_trials, target_capacity
from spkcausal.data.validate import validate_datadir
from spkcausal.utils import DataError, UsageError


def _dir(counts, n_sess=2, with_sess=True):
    """A text-only data dir: speaker i has counts[i] utterances spread round-robin over n_sess sessions."""
    wav, u2s, sess = {}, {}, {}
    for s, n in enumerate(counts):
        spk = f"spk{s:02d}"
        for u in range(n):
            utt = f"{spk}-ch{u % n_sess}-{u:04d}"
            wav[utt], u2s[utt], sess[utt] = f"/nonexistent/{utt}.flac", spk, f"{spk}-ch{u % n_sess}"
    return DataDir(wav=wav, utt2spk=u2s, utt2sess=sess if with_sess else {})


def _pairs(tr):
    return [frozenset(p) for p in zip(tr.enroll, tr.test)]


def _brute_force(data, cross_session=True):
    tgt, non = set(), set()
    for a, b in itertools.combinations(sorted(data.utt2spk), 2):
        if data.utt2spk[a] != data.utt2spk[b]:
            non.add(frozenset((a, b)))
        elif not (cross_session and data.utt2sess and data.utt2sess[a] == data.utt2sess[b]):
            tgt.add(frozenset((a, b)))
    return tgt, non


def test_balanced_unique_cross_session_and_labels_right():
    data = _dir([30, 12, 7, 20, 5, 40], n_sess=3)
    tr = make_trials(data, 401, seed=3)
    assert len(tr) == 401
    assert int((tr.labels == 1).sum()) == 201 and int((tr.labels == 0).sum()) == 200
    pairs = _pairs(tr)
    assert len(set(pairs)) == len(pairs)  # no (a, b) twice and no (a, b) + (b, a)
    assert all(e != t for e, t in zip(tr.enroll, tr.test))
    for e, t, lab in zip(tr.enroll, tr.test, tr.labels):
        same = data.utt2spk[e] == data.utt2spk[t]
        assert same == (lab == 1)
        if same:
            assert data.utt2sess[e] != data.utt2sess[t]
    keys = list(zip(tr.enroll, tr.test))
    assert keys == sorted(keys)


def test_exhausting_capacity_gives_exactly_the_brute_force_sets():
    data = _dir([5, 4, 3, 1], n_sess=2)
    tgt, non = _brute_force(data)
    assert target_capacity(data) == len(tgt) == 6 + 4 + 2  # 3x2, 2x2, 2x1 cross-chapter pairs
    tr = make_trials(data, len(tgt) + len(non), seed=0, target_ratio=len(tgt) / (len(tgt) + len(non)))
    got = _pairs(tr)
    assert {p for p, lab in zip(got, tr.labels) if lab == 1} == tgt
    assert {p for p, lab in zip(got, tr.labels) if lab == 0} == non
    # without the session constraint every same-speaker pair is allowed
    tgt_any, _ = _brute_force(data, cross_session=False)
    assert target_capacity(data, cross_session=False) == len(tgt_any) == 10 + 6 + 3


def test_targets_spread_evenly_over_speakers():
    data = _dir([200, 10, 10, 6], n_sess=2)  # cross-chapter capacities 100*100, 5*5, 5*5, 3*3
    for n, expect in ((61, [17, 17, 18]), (100, [25, 25, 41])):
        tr = make_trials(data, n, seed=1, target_ratio=1.0)
        per_spk = Counter(data.utt2spk[e] for e in tr.enroll)
        # water filling: spk03 is capped at its 9 pairs, the rest split as evenly as capacities allow
        assert per_spk["spk03"] == 9
        assert sorted(per_spk[s] for s in ("spk00", "spk01", "spk02")) == expect


def test_seed_determinism_and_different_seeds_differ():
    data = _dir([15, 15, 15, 15], n_sess=3)
    a, b = make_trials(data, 120, seed=7), make_trials(data, 120, seed=7)
    assert (a.enroll == b.enroll).all() and (a.test == b.test).all() and (a.labels == b.labels).all()
    c = make_trials(data, 120, seed=8)
    assert set(zip(a.enroll, a.test)) != set(zip(c.enroll, c.test))


def test_nontargets_cover_pairs_uniformly():
    # 3 speakers with 1, 1 and 4 utterances: the 4-utterance speaker takes part in 8 of the 9 pairs
    data = _dir([1, 1, 4], with_sess=False)
    hits = Counter()
    for seed in range(300):
        tr = make_trials(data, 3, seed=seed, target_ratio=0.0)
        hits.update(_pairs(tr))
    # each of the 9 pairs is drawn with probability 3/9 per list: expect 100 of 300
    assert len(hits) == 9
    assert all(70 < v < 130 for v in hits.values()), hits


def test_impossible_requests_raise_clear_errors():
    data = _dir([3, 3], n_sess=1)  # every target pair is same-session
    with pytest.raises(DataError, match="allows only 0 distinct cross-session target pairs"):
        make_trials(data, 10, seed=0)
    tr = make_trials(data, 6, seed=0, cross_session=False)  # 3 + 3 same-speaker pairs exist
    assert int(tr.labels.sum()) == 3
    with pytest.raises(DataError, match="allows only 9 distinct different-speaker pairs"):
        make_trials(data, 10, seed=0, target_ratio=0.0)
    with pytest.raises(DataError, match="allows only 0 distinct"):
        make_trials(_dir([4]), 2, seed=0, target_ratio=0.0)
    partial = _dir([4, 4])
    partial.utt2sess.pop(sorted(partial.utt2sess)[0])
    with pytest.raises(DataError, match="no session"):
        make_trials(partial, 4, seed=0)
    with pytest.raises(UsageError, match="num_trials must be positive"):
        make_trials(data, 0, seed=0)


def test_cli_writes_list_whose_keys_exist(tmp_path, capsys):
    data = _dir([8, 8, 8], n_sess=2)
    data.write(tmp_path / "d")
    out = tmp_path / "trials.txt"
    rc = main(["make-trials", str(tmp_path / "d"), "--out", str(out), "--num-trials", "40", "--seed", "5",
               "--format", "voxceleb"])
    assert rc == 0 and "40 trials (20 target, 20 non-target)" in capsys.readouterr().out
    assert out.read_text().split("\n", 1)[0].split()[0] in ("0", "1")
    tr = read_trials(out)
    lib = make_trials(DataDir.load(tmp_path / "d"), 40, seed=5)
    assert (tr.enroll == lib.enroll).all() and (tr.labels == lib.labels).all()
    assert validate_datadir(tmp_path / "d", trials=[out], check_audio=False) == []
    rc = main(["make-trials", str(tmp_path / "d"), "--out", str(tmp_path / "x"), "--num-trials", "10000"])
    assert rc == 2 and not (tmp_path / "x").exists()
    assert np.isin(lib.enroll, list(data.utt2spk)).all()
