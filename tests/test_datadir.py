"""Data-dir, trial and score-file I/O: round trips, sorting, and errors that name file and line."""
import numpy as np
import pytest

from spkcausal.data.datadir import DataDir, read_kv
from spkcausal.data.trialio import Trials, read_scores, read_trials, write_scores, write_trials
from spkcausal.data.validate import validate_datadir
from spkcausal.utils import DataError


def _make_dir(tmp_path, n_spk=3, n_utt=2):
    wav, u2s = {}, {}
    for s in range(n_spk):
        for u in range(n_utt):
            utt = f"id1000{s}/0_laIeN-Q44/0000{u}.wav"
            f = tmp_path / "audio" / utt
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"x")
            wav[utt], u2s[utt] = str(f), f"id1000{s}"
    return DataDir(wav=wav, utt2spk=u2s, utt2dur={u: 1.5 for u in wav}, spk2gender={"id10000": "m"})


def test_roundtrip_sorted_and_clean(tmp_path):
    d = _make_dir(tmp_path)
    d.write(tmp_path / "data")
    lines = (tmp_path / "data" / "utt2spk").read_text().splitlines()
    assert lines == sorted(lines, key=str.encode)
    back = DataDir.load(tmp_path / "data")
    assert back.utt2spk == d.utt2spk and back.wav == d.wav and back.utt2dur == d.utt2dur
    assert back.spk2utt["id10001"] == sorted(u for u in d.utt2spk if d.utt2spk[u] == "id10001")
    assert validate_datadir(tmp_path / "data") == []


def test_validate_reports_each_problem_with_line(tmp_path):
    d = _make_dir(tmp_path)
    d.write(tmp_path / "data")
    data = tmp_path / "data"
    u2s = (data / "utt2spk").read_text().splitlines()
    # unsorted + duplicate + an utterance unknown to wav.scp
    (data / "utt2spk").write_text("\n".join([u2s[1], u2s[0], u2s[0], "zz/zz/1.wav id9"] + u2s[2:]) + "\n")
    first_wav = sorted(d.wav)[0]
    (tmp_path / "audio" / first_wav).unlink()
    (data / "trials").write_text(f"1 {u2s[0].split()[0]} nosuch/key.wav\n")
    msgs = [str(p) for p in validate_datadir(data, trials=[data / "trials"])]
    assert any("utt2spk:2: not sorted" in m for m in msgs)
    assert any("utt2spk:3: duplicate key" in m for m in msgs)
    assert any("utt2spk:4: utterance 'zz/zz/1.wav' has no wav.scp entry" in m for m in msgs)
    assert any("audio of" in m and "missing" in m for m in msgs)
    assert any("trials:1: key 'nosuch/key.wav'" in m for m in msgs)


def test_read_kv_errors_name_line(tmp_path):
    p = tmp_path / "utt2dur"
    p.write_text("a 1.0\nb notanumber\n")
    with pytest.raises(DataError, match=r"utt2dur:2: .*not a float"):
        read_kv(p, float)
    p.write_text("a 1.0\na 2.0\n")
    with pytest.raises(DataError, match=r"utt2dur:2: duplicate key 'a'"):
        read_kv(p, float)


@pytest.mark.parametrize("fmt", ["kaldi", "voxceleb"])
def test_trials_roundtrip(tmp_path, fmt):
    rng = np.random.default_rng(0)
    tr = Trials(enroll=np.array([f"e{i}" for i in range(50)]), test=np.array([f"t{i}" for i in range(50)]),
                labels=rng.integers(0, 2, 50).astype(np.int8))
    write_trials(tmp_path / "t.txt", tr, fmt)
    back = read_trials(tmp_path / "t.txt")
    assert (back.enroll == tr.enroll).all() and (back.test == tr.test).all() and (back.labels == tr.labels).all()
    scores = rng.normal(size=50)
    write_scores(tmp_path / "s.txt", tr, scores)
    s = read_scores(tmp_path / "s.txt")
    np.testing.assert_allclose(s.scores, scores, atol=1e-6)  # the file keeps 6 decimals: rounding <= 5e-7
    assert (s.labels == tr.labels).all()


@pytest.mark.parametrize("content,match", [
    ("1 a b\n1 c d e\n", r":2: 4 columns where"),
    ("1 a b\n2 c d\n", r":2: label '2'"),
    ("a b target\na b nontarget\n", r":2: duplicate trial a b \(first seen at line 1\)"),
    ("a b\n\nc\n", r":3: 1 columns"),
])
def test_trial_errors(tmp_path, content, match):
    p = tmp_path / "trials.txt"
    p.write_text(content)
    with pytest.raises(DataError, match=match):
        read_trials(p)


@pytest.mark.parametrize("bad", ["nan", "inf", "abc"])
def test_score_errors(tmp_path, bad):
    p = tmp_path / "scores.txt"
    p.write_text(f"a b 0.5 target\nc d {bad} nontarget\n")
    with pytest.raises(DataError, match=r"scores.txt:2: score"):
        read_scores(p)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from spkcausal.utils import atomic_write
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "out.txt") as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
