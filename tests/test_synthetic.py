"""Synthetic corpus: determinism, VoxCeleb1 layout and lists, long-tail profile, trials, and real speaker signal."""
import csv
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.linalg import solve_toeplitz
from scipy.signal import butter, lfilter, sos2tf, sosfiltfilt, stft

from spkcausal.cli import main as cli_main
from spkcausal.corpora.synthetic import SynthConfig, make_synthetic_corpus, train_counts
from spkcausal.corpora.voice import _cascade_den, _resonator
from spkcausal.data.subsets import target_counts
from spkcausal.utils import DataError, UsageError

SMALL = dict(num_speakers=8, num_test_speakers=4, max_utts=12, imbalance=4.0, utt_seconds=(0.6, 1.0),
             sessions=(2, 3), val_per_speaker=2, test_per_speaker=3, veri_utts_per_speaker=5, num_trials=40, seed=7)
KEY = re.compile(r"^id\d{5}/[A-Za-z0-9_-]{11}/\d{5}\.wav$")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "vox1"
    cfg = SynthConfig(**SMALL)
    return root, cfg, make_synthetic_corpus(root, cfg, nj=1)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "synth.log"}


def _iden(root: Path) -> list[tuple[int, str]]:
    out = []
    for line in (root / "iden_split.txt").read_text().splitlines():
        code, key = line.split(" ")
        out.append((int(code), key))
    return out


def _speakers(root: Path) -> dict[str, dict]:
    with open(root / "synth_speakers.tsv") as f:
        return {r["speaker"]: r for r in csv.DictReader(f, delimiter="\t")}


def test_deterministic_for_seed_whatever_nj(small, tmp_path):
    root, cfg, _ = small
    again = tmp_path / "again"
    make_synthetic_corpus(again, SynthConfig(**SMALL), nj=2)
    a, b = _files(root), _files(again)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    other = tmp_path / "other"
    make_synthetic_corpus(other, SynthConfig(**{**SMALL, "seed": 8}), nj=1)
    c = _files(other)
    assert (root / "iden_split.txt").read_text() != (other / "iden_split.txt").read_text()
    assert sum(k in c and c[k] == a[k] for k in a if k.endswith(".wav")) == 0


def test_voxceleb1_layout_and_lists(small):
    root, cfg, summary = small
    wavs = sorted(str(p.relative_to(root / "wav")) for p in (root / "wav").rglob("*.wav"))
    assert wavs and all(KEY.match(k) for k in wavs)
    assert not list(root.rglob(".*.tmp*"))
    for k in wavs[:5]:
        info = sf.info(str(root / "wav" / k))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.6 * 16000 <= info.frames <= 1.0 * 16000
    # per session, numbering is 00001..0000n without gaps, as in VoxCeleb1
    by_sess: dict[str, list[int]] = {}
    for k in wavs:
        spk, yt, n = k.split("/")
        by_sess.setdefault(f"{spk}/{yt}", []).append(int(n[:5]))
    assert all(sorted(v) == list(range(1, len(v) + 1)) for v in by_sess.values())

    meta = (root / "vox1_meta.csv").read_text().splitlines()
    assert meta[0] == "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"
    rows = [line.split("\t") for line in meta[1:]]
    assert all(len(r) == 5 and r[2] in ("m", "f") and r[4] in ("dev", "test") for r in rows)
    dev = [r[0] for r in rows if r[4] == "dev"]
    test = [r[0] for r in rows if r[4] == "test"]
    assert dev == [f"id{10001 + i}" for i in range(8)] and test == [f"id{10270 + i}" for i in range(4)]

    iden = _iden(root)
    assert {c for c, _ in iden} == {1, 2, 3} and [k for _, k in iden] == sorted(k for _, k in iden)
    assert {k.split("/")[0] for _, k in iden} == set(dev)
    trials = [line.split(" ") for line in (root / "veri_test2.txt").read_text().splitlines()]
    assert all(len(t) == 3 and t[0] in ("0", "1") for t in trials)
    veri_keys = {k for t in trials for k in t[1:]}
    assert {k.split("/")[0] for k in veri_keys} <= set(test)
    # every listed key exists, and every file is listed somewhere
    assert {k for _, k in iden} | veri_keys <= set(wavs)
    assert {k for k in wavs if k.split("/")[0] in dev} == {k for _, k in iden}
    assert summary["train_utts"] + summary["val_utts"] + summary["test_utts"] == len(iden)
    assert summary["written"] == len(wavs)


def test_longtail_counts_and_balanced_heldout(small):
    root, cfg, _ = small
    iden = _iden(root)
    per = {}
    for code, key in iden:
        per.setdefault(key.split("/")[0], [0, 0, 0])[code - 1] += 1
    train = np.array(sorted((v[0] for v in per.values()), reverse=True))
    assert train.tolist() == train_counts(cfg).tolist() == [12, 10, 8, 7, 5, 4, 4, 3]
    assert train.max() == 12 and train.max() / train.min() == pytest.approx(4.0)  # integer counts
    assert all(v[1] == 2 and v[2] == 3 for v in per.values())  # every training speaker, balanced
    tsv = _speakers(root)
    assert all(int(tsv[s]["train_utts"]) == v[0] for s, v in per.items())


def test_train_counts_round_half_to_even():
    """The corpus's counts round half to even (numpy.round), as generated since the first version: rounding
    half up like longtail_subset would change the corpus, and with it the demo's table, for such configs."""
    cfg = SynthConfig(num_speakers=3, max_utts=10, imbalance=4.0)  # 10 * 4^-0.5 = 5 and 10 / 4 = 2.5
    assert train_counts(cfg).tolist() == [10, 5, 2]
    assert target_counts(3, 10, 4.0).tolist() == [10, 5, 3]  # longtail_subset's half-up rounding
    x = 120 * 40.0 ** -(np.arange(200) / 199)  # the default corpus, computed here directly
    assert train_counts(SynthConfig()).tolist() == np.maximum(1, np.round(x)).astype(int).tolist()


@pytest.mark.parametrize("profile,exponent", [("exp", 1.0), ("exp", 0.5), ("pareto", 1.0), ("pareto", 2.0)])
def test_longtail_profiles(profile, exponent):
    c = train_counts(SynthConfig(num_speakers=200, max_utts=120, imbalance=40.0, profile=profile, exponent=exponent))
    assert c[0] == 120 and c[-1] == 3 and np.all(np.diff(c) <= 0)
    assert abs(c[0] / c[-1] - 40) <= 40 * 0.5 / 3  # ratio exact up to rounding of the tail count
    if profile == "exp" and exponent == 1.0:  # log counts fall linearly with rank: slope -ln(40)/199
        slope = np.polyfit(np.arange(200), np.log(c), 1)[0]
        assert slope == pytest.approx(-np.log(40) / 199, rel=0.03)  # the fitted slope of integer-rounded counts (3%)
    if profile == "pareto":  # n = max / (1 + c r)^a: a straight line in log-log of (1 + c r)
        k = 40 ** (1 / exponent) - 1
        slope = np.polyfit(np.log1p(k * np.arange(200) / 199), np.log(c), 1)[0]
        assert slope == pytest.approx(-exponent, rel=0.05)  # as above, a coarser fit (5%)
    with pytest.raises(UsageError, match="tail speaker"):
        SynthConfig(max_utts=10, imbalance=40).validate()


def test_trials_balanced_and_cross_session(small):
    root, cfg, summary = small
    trials = [line.split(" ") for line in (root / "veri_test2.txt").read_text().splitlines()]
    labels = [t[0] for t in trials]
    assert len(trials) == 40 == summary["trials"] and labels.count("1") == labels.count("0") == 20
    pairs = {frozenset(t[1:]) for t in trials}
    assert len(pairs) == len(trials) and all(t[1] != t[2] for t in trials)
    for lab, e, t in trials:
        se, st = e.split("/"), t.split("/")
        if lab == "1":
            assert se[0] == st[0] and se[1] != st[1]  # same speaker, other session
        else:
            assert se[0] != st[0]


def _f0_track(x: np.ndarray, sr: int, lo: float = 60, hi: float = 400, order: int = 12) -> np.ndarray:
    """F0 (Hz) of voiced 40 ms frames: autocorrelation of the LPC residual (SIFT-like, so a strong F1 on the
    2nd harmonic does not halve the period)."""
    n = int(0.04 * sr)
    fr = np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2] * np.hanning(n)
    ac = np.fft.irfft(np.abs(np.fft.rfft(fr, 2 * n)) ** 2)[:, :n]
    loud = ac[:, 0] > 0.3 * np.median(ac[:, 0])
    ridge = 1 + 1e-3 * (np.arange(order) == 0)
    res = np.array([lfilter(np.r_[1, -solve_toeplitz(r[:order] * ridge, r[1:order + 1])], 1, f)
                    for r, f in zip(ac[loud], fr[loud])])
    res = sosfiltfilt(butter(4, 1000, fs=sr, output="sos"), res, axis=1)
    rc = np.fft.irfft(np.abs(np.fft.rfft(res, 2 * n)) ** 2)[:, :n]
    a, b = int(sr / hi), int(sr / lo)
    lag = a + np.argmax(rc[:, a:b], 1)
    peak = rc[np.arange(len(rc)), lag] / (rc[:, 0] + 1e-12)
    return sr / lag[peak > 0.3]


def test_f0_in_speaker_range(small):
    root, _, _ = small
    spk = _speakers(root)
    checked = 0
    for _, key in _iden(root):
        x, sr = sf.read(str(root / "wav" / key))
        f0 = _f0_track(x, sr)
        if len(f0) < 5:
            continue
        s = spk[key.split("/")[0]]
        assert 0.9 * float(s["f0_lo_hz"]) <= np.median(f0) <= 1.1 * float(s["f0_hi_hz"]), key
        checked += 1
    assert checked >= 0.8 * len(_iden(root))
    genders = {r["speaker"]: r["gender"] for r in spk.values()}
    for s, g in genders.items():  # gender in the meta file follows the F0 range
        centre = np.sqrt(float(spk[s]["f0_lo_hz"]) * float(spk[s]["f0_hi_hz"]))
        assert g == ("f" if centre > 160 else "m")


def _features(path: Path) -> np.ndarray:
    """Mean and std of 20 mel-spaced log band energies over active frames, plus log median F0."""
    x, sr = sf.read(str(path))
    f, _, z = stft(x, sr, nperseg=512, noverlap=256)
    p = np.abs(z) ** 2 + 1e-10
    mel = np.linspace(2595 * np.log10(1 + 100 / 700), 2595 * np.log10(1 + 7600 / 700), 21)
    edges = 700 * (10 ** (mel / 2595) - 1)
    bands = np.log(np.stack([p[(f >= lo) & (f < hi)].mean(0) for lo, hi in zip(edges[:-1], edges[1:])]))
    act = bands.mean(0) > np.percentile(bands.mean(0), 40)
    return np.concatenate([bands[:, act].mean(1), bands[:, act].std(1), [np.log(np.median(_f0_track(x, sr)))]])


def test_speaker_identity_is_in_the_signal(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = tmp_path / "id"
    cfg = SynthConfig(num_speakers=10, num_test_speakers=2, max_utts=6, imbalance=1, val_per_speaker=0,
                      test_per_speaker=4, veri_utts_per_speaker=2, num_trials=2, utt_seconds=(1.0, 1.5), seed=3)
    make_synthetic_corpus(root, cfg, nj=1)
    iden = _iden(root)
    x = np.array([_features(root / "wav" / k) for _, k in iden])
    y = np.array([k.split("/")[0] for _, k in iden])
    tr = np.array([c == 1 for c, _ in iden])
    accs = []
    for shuffle in (False, True):
        labels = np.random.default_rng(0).permutation(y[tr]) if shuffle else y[tr]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[tr], labels)
        accs.append(float(np.mean(clf.predict(x[~tr]) == y[~tr])))
    print("accuracy (true, shuffled labels):", accs)
    assert accs[0] >= 0.4, accs  # 10 speakers: chance is 0.1, held-out utterances
    assert accs[1] <= 0.25, accs  # shuffled labels: chance level


def test_resume_skips_complete_and_redoes_broken(small, tmp_path):
    root, cfg, _ = small
    copy = tmp_path / "copy"
    for k, v in _files(root).items():
        (copy / k).parent.mkdir(parents=True, exist_ok=True)
        (copy / k).write_bytes(v)
    wavs = sorted((copy / "wav").rglob("*.wav"))
    wavs[0].unlink()
    wavs[1].write_bytes(wavs[1].read_bytes()[:1000])  # truncated by a crash outside write_wav
    stale = wavs[2].parent / f".{wavs[2].name}.abc.tmp.wav"
    stale.write_bytes(b"half")
    summary = make_synthetic_corpus(copy, SynthConfig(**SMALL), nj=1)
    assert summary["written"] == 2 and summary["skipped"] == len(wavs) - 2
    assert not stale.exists()
    a, b = _files(root), _files(copy)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    with pytest.raises(DataError, match="synth_config.json"):
        make_synthetic_corpus(copy, SynthConfig(**{**SMALL, "seed": 1}), nj=1)


def test_formant_cascade_matches_scipy():
    freqs = np.array([[500.0, 1500, 2500, 3500, 4500], [300, 2200, 3000, 3600, 4700]])
    bws = np.array([[60.0, 90, 130, 180, 250]] * 2)
    den = _cascade_den(freqs, bws, 16000)
    for row, fr, bw in zip(den, freqs, bws):
        sos = np.vstack([_resonator(f, b, 16000) for f, b in zip(fr, bw)])
        b_ref, a_ref = sos2tf(sos)
        np.testing.assert_allclose(row, a_ref, rtol=1e-10, atol=1e-12)  # float64 polynomial products vs scipy's
        # float64
        assert b_ref[0] == pytest.approx(row.sum())  # unit gain at DC


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["synth", "--out", str(out), "--speakers", "3", "--test-speakers", "2", "--max-utts", "4",
                   "--imbalance", "2", "--utt-seconds", "0.3,0.4", "--sessions", "2,2", "--veri-utts", "3",
                   "--trials", "4", "--seed", "5", "--nj", "1"])
    assert rc == 0 and '"train_utts": 9' in capsys.readouterr().out
    assert (out / "veri_test2.txt").read_text().count("\n") == 4
    rc = cli_main(["synth", "--out", str(tmp_path / "bad"), "--max-utts", "10", "--imbalance", "40"])
    assert rc == 2 and "imbalance" in capsys.readouterr().err


def test_voxceleb1_preparer_reads_the_tree(small, tmp_path):
    from spkcausal.corpora.voxceleb import prepare_voxceleb1
    from spkcausal.data.datadir import DataDir
    from spkcausal.data.trialio import read_trials

    root, cfg, summary = small
    out = tmp_path / "data"
    s = prepare_voxceleb1(root, out, nj=1)
    assert s["layout"] == "single" and s["excluded"] == 0
    train = DataDir.load(out / "vox1_iden_train")
    counts = sorted((len(v) for v in train.spk2utt.values()), reverse=True)
    assert counts == train_counts(cfg).tolist()
    assert len(DataDir.load(out / "vox1_iden_test")) == 8 * 3 and len(DataDir.load(out / "vox1_test").speakers) == 4
    assert s["trials"]["veri_test2.txt"]["dir"] == "vox1_test"
    tr = read_trials(out / "trials" / "veri_test2.txt")
    assert len(tr) == summary["trials"] and int((tr.labels == 1).sum()) == summary["target_trials"]


def test_trials_capped_when_few_target_pairs():
    from spkcausal.corpora.synthetic import plan_corpus, veri_test2_trials

    cfg = SynthConfig(**{**SMALL, "num_test_speakers": 3, "veri_utts_per_speaker": 2, "sessions": (2, 2),
                         "num_trials": 100})
    _, _, utts = plan_corpus(cfg)
    trials = veri_test2_trials(cfg, utts)
    # 3 speakers x 1 cross-session pair each: 3 targets, and as many non-targets
    assert [t[0] for t in trials].count(1) == 3 and [t[0] for t in trials].count(0) == 3
    assert len({frozenset(t[1:]) for t in trials}) == 6


def test_write_wav_without_fsync_same_bytes(tmp_path):
    from spkcausal.data.audio import write_wav

    x = np.random.default_rng(0).integers(-30000, 30000, 4000).astype(np.int16)
    write_wav(tmp_path / "a.wav", x, 16000)
    write_wav(tmp_path / "b.wav", x, 16000, sync=False)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert np.array_equal(sf.read(str(tmp_path / "b.wav"), dtype="int16")[0], x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.wav"]  # no temp file left


def test_probe_audio_reasons(tmp_path):
    from spkcausal.data.audio import probe_audio

    x = np.zeros(3200, dtype=np.int16)
    sf.write(str(tmp_path / "ok.wav"), x, 16000, subtype="PCM_16")
    sf.write(str(tmp_path / "empty.wav"), x[:0], 16000, subtype="PCM_16")
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    assert probe_audio(tmp_path / "ok.wav") == (3200, 16000, None)
    assert probe_audio(tmp_path / "ok.wav", 16000) == (3200, 16000, None)
    assert probe_audio(tmp_path / "ok.wav", 8000).problem == "sample rate 16000 Hz, expected 8000"
    assert probe_audio(tmp_path / "empty.wav").problem == "empty audio (0 samples)"
    assert probe_audio(tmp_path / "junk.wav").problem.startswith("unreadable audio (")
    assert probe_audio(tmp_path / "gone.wav") == (0, 0, "missing file")
