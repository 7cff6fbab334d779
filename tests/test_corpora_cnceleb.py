"""prepare_cnceleb on fixture trees: train/eval split, no eval-speaker leak, both trial protocols, combination."""
import os

import numpy as np
import pytest
import soundfile as sf
from fixtures_cnceleb import make_cnceleb

from spkcausal.corpora.cnceleb import combine_segments, prepare_cnceleb
from spkcausal.data.datadir import DataDir, read_list_kv
from spkcausal.data.trialio import read_trials
from spkcausal.data.validate import validate_datadir
from spkcausal.utils import DataError

MIN_SEC = 1.0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cnc")
    exp = make_cnceleb(tmp / "corpus")
    res = prepare_cnceleb(exp["cn1_root"], tmp / "data", cn2_root=exp["cn2_root"], combine_min_sec=MIN_SEC,
                          combined_dir=tmp / "comb_audio", nj=2)
    return exp, res, tmp


def _excluded(d):
    return [line.split()[0] for line in (d / "excluded.txt").read_text().splitlines()]


def test_train_dir_counts_and_no_eval_leak(prepared):
    exp, res, tmp = prepared
    d = tmp / "data" / "cnceleb_train"
    train = DataDir.load(d)
    assert train.utts == exp["train_utts"] and len(train) == 3 * 9 - 1 + 2 * 5 == 36
    assert train.speakers == exp["train_speakers"] == ["id00000", "id00001", "id00002", "id10001", "id10002"]
    assert _excluded(d) == exp["train_excluded"] == ["id00000/interview-01-002"]
    assert (res["train"]["speakers"], res["train"]["utterances"], res["train"]["excluded"]) == (5, 36, 1)
    assert not set(train.speakers) & set(exp["eval_speakers"])
    assert not any("id008" in p for p in train.wav.values())  # eval speakers' data/ files stay out
    assert all(train.utt2sess[u] == exp["genre"][u] for u in train.utts)
    assert "live_broadcast" in set(train.utt2sess.values())
    for u in train.utts:
        assert train.utt2dur[u] == pytest.approx(exp["durations"][u], abs=1e-3)  # utt2dur keeps ms, not samples
    assert validate_datadir(d) == []


def test_eval_dir_and_both_trial_protocols(prepared):
    exp, res, tmp = prepared
    d = tmp / "data" / "cnceleb_eval"
    ev = DataDir.load(d)
    assert ev.utts == exp["eval_utts"] and len(ev) == 10
    assert _excluded(d) == exp["eval_excluded"] == ["id00801-vlog-02-001"]
    assert ev.speakers == exp["eval_speakers"]
    assert ev.wav["id00800-enroll"].endswith("eval/enroll/id00800-enroll.flac")  # list says .wav
    assert ev.wav["id00800-singing-01-005"].endswith("eval/test/id00800-singing-01-005.flac")
    assert ev.wav["id00801/movie-01-001"].endswith("data/id00801/movie-01-001.flac")
    assert "id00801/movie-01-002" not in ev.wav  # an eval speaker's data/ file no list names
    assert ev.utt2sess["id00801-enroll"] == "movie+speech" and ev.utt2sess["id00800-vlog-02-001"] == "vlog"
    assert read_list_kv(d / "enroll2utt") == {e: sorted(u) for e, u in exp["enroll2utt"].items()}
    assert res["trials_listed"] == exp["trials_listed"] == 8
    conc, avg = read_trials(d / "trials_concat"), read_trials(d / "trials_avg")
    for tr, suffix in ((conc, ""), (avg, "-avg")):
        assert len(tr) == exp["trials"] == 6 and int(tr.labels.sum()) == exp["trials_target"] == 3
        assert set(tr.enroll) == {f"{s}-enroll{suffix}" for s in exp["eval_speakers"]}
        assert "id00801-vlog-02-001" not in set(tr.test)
        # label agrees with the speaker prefix of both keys
        assert all((e[:7] == t[:7]) == bool(lab) for e, t, lab in zip(tr.enroll, tr.test, tr.labels))
    assert (conc.test == avg.test).all() and (conc.labels == avg.labels).all()
    assert (res["trials_concat"], res["trials_avg"], res["trials_avg_target"]) == (6, 6, 3)
    assert validate_datadir(d, trials=[d / "trials_concat", d / "trials_avg"]) == []


def test_combination_rule_durations_and_resume(prepared):
    exp, res, tmp = prepared
    d = tmp / "data" / "cnceleb_train_combined"
    comb, train = DataDir.load(d), DataDir.load(tmp / "data" / "cnceleb_train")
    groups = read_list_kv(d / "comb2utt")
    assert set(groups) == {u for u in comb.utts if "-comb-" in u} and res["train_combined"]["groups"] == 8
    # every training utterance ends up exactly once: as itself or inside one combined file
    members = [m for ms in groups.values() for m in ms]
    assert len(members) == len(set(members))
    assert sorted(members + [u for u in comb.utts if u not in groups]) == train.utts
    for key, ms in groups.items():
        assert {train.utt2spk[m] for m in ms} == {comb.utt2spk[key]}
        assert {train.utt2sess[m] for m in ms} == {comb.utt2sess[key]}
        x, sr = sf.read(comb.wav[key], dtype="int16")
        parts = [sf.read(train.wav[m], dtype="int16")[0] for m in ms]
        assert np.array_equal(x, np.concatenate(parts))  # lossless concatenation in key order
        # each part's duration is rounded to 1 ms, so a sum of n parts to n ms
        assert comb.utt2dur[key] == pytest.approx(sum(train.utt2dur[m] for m in ms), abs=1e-3 * len(ms))
    short = {k for k in comb.utts if comb.utt2dur[k] < MIN_SEC}
    # the documented exceptions: a speaker+genre whose short audio totals < MIN_SEC stays under it, either
    # as one combined file (id00000 interview lost a segment to corruption: 0.45 + 0.3 s) or a lone original
    short_groups = [groups[k] for k in short if k in groups]
    assert short_groups == [["id00000/interview-01-001", "id00000/interview-02-001"]]
    assert short - set(groups) == {"id10001/drama-01-002", "id10002/drama-01-002"}
    # 0.3 + 0.4 + 0.5 s reach 1 s; the 0.35 s remainder joins that group; the 1.3 s file stays as it is
    singing = [ms for k, ms in groups.items() if k.startswith("id00001/singing-comb-01-001-")]
    assert singing == [[f"id00001/singing-0{a}-00{b}" for a, b in ((1, 1), (1, 2), (2, 1), (2, 2))]]
    assert "id00001/singing-03-001" in comb.utt2spk
    assert sum(comb.utt2dur.values()) == pytest.approx(sum(train.utt2dur.values()), abs=0.02)  # <= 1 ms per file
    assert validate_datadir(d) == []
    # re-run: nothing rewritten; a deleted file is rebuilt identically; no temp files left behind
    audio = {k: comb.wav[k] for k in groups}
    stamp = {k: os.stat(p).st_mtime_ns for k, p in audio.items()}
    victim = sorted(audio)[0]
    before = sf.read(audio[victim], dtype="int16")[0]
    os.unlink(audio[victim])
    s = combine_segments(tmp / "data" / "cnceleb_train", d, tmp / "comb_audio", MIN_SEC, nj=1)
    assert (s["written"], s["failed"], s["groups"]) == (1, 0, 8)
    assert all(os.stat(p).st_mtime_ns == stamp[k] for k, p in audio.items() if k != victim)
    assert np.array_equal(sf.read(audio[victim], dtype="int16")[0], before)
    assert not [p for p in (tmp / "comb_audio").rglob("*") if p.name.startswith(".")]


def test_without_cn2_and_bad_lists(tmp_path):
    exp = make_cnceleb(tmp_path / "c", n_dev=2, n_eval=1, n_cn2=1, corrupt=False, missing=False)
    res = prepare_cnceleb(exp["cn1_root"], tmp_path / "d", nj=1)
    assert (res["train"]["speakers"], res["train"]["utterances"], res["trials_concat"]) == (2, 18, 2)
    assert "train_combined" not in res
    dev = exp["cn1_root"] / "dev" / "dev.lst"
    dev.write_text(dev.read_text() + "id00800\n")
    with pytest.raises(DataError, match=r"dev.lst:3: id00800 is an evaluation speaker"):
        prepare_cnceleb(exp["cn1_root"], tmp_path / "d", nj=1)
    dev.write_text("id00000\n")
    (exp["cn2_root"] / "spk.lst").write_text("id00000\n")
    with pytest.raises(DataError, match=r"spk.lst:1: id00000 is also listed"):
        prepare_cnceleb(exp["cn1_root"], tmp_path / "d", cn2_root=exp["cn2_root"], nj=1)
    trials = exp["cn1_root"] / "eval" / "lists" / "trials.lst"
    trials.write_text(trials.read_text() + "id00800-enroll test/id00999-drama-01-001.wav 0\n")
    with pytest.raises(DataError, match=r"trials.lst:3: test file 'test/id00999-drama-01-001.wav' is not in"):
        prepare_cnceleb(exp["cn1_root"], tmp_path / "d", nj=1)
    with pytest.raises(DataError, match="not a CN-Celeb1 root"):
        prepare_cnceleb(exp["cn2_root"], tmp_path / "d", nj=1)


def test_failed_combination_is_listed_excluded_and_retried(prepared):
    _, res, tmp = prepared
    assert res["failed"] == 0 and "failures_file" not in res
    audio, out = tmp / "comb_audio2", tmp / "comb_dir2"
    audio.mkdir()
    (audio / "id10001").write_text("a file where the speaker's folder should be")
    s = combine_segments(tmp / "data" / "cnceleb_train", out, audio, MIN_SEC, nj=2)
    assert (s["groups"], s["written"], s["failed"], s["excluded"]) == (8, 7, 1, 1)
    bad = (out / "excluded.txt").read_text().split()[0]
    assert bad.startswith("id10001/vlog-comb-01-001-") and bad not in DataDir.load(out).utt2spk
    assert bad not in read_list_kv(out / "comb2utt")
    (audio / "id10001").unlink()
    s = combine_segments(tmp / "data" / "cnceleb_train", out, audio, MIN_SEC, nj=2)
    assert (s["written"], s["failed"], s["excluded"]) == (1, 0, 0) and bad in DataDir.load(out).utt2spk
