"""Trial scoring: cosine, mean subtraction, S-norm / AS-norm against direct NumPy formulas, Avg enrolment,
missing keys, bad trial lists, the `spkcausal score` command."""
from __future__ import annotations

import numpy as np
import pytest

from spkcausal.cli import main
from spkcausal.data.embeddings import EmbeddingStore, write_store
from spkcausal.data.trialio import read_scores, read_trials
from spkcausal.scoring.cosine import Scorer, ScorerInputs, cohort_stats, score_files, score_trials, store_mean
from spkcausal.utils import DataError

D = 16
# What float32 can reach on a cosine of D-dimensional unit vectors (normalising and a D-term dot product)
F32_COS = (D + 3) * float(np.finfo(np.float32).eps)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    keys = [f"id1{i // 4:04d}/a-_b{i % 4}/{i:05d}.wav" for i in range(40)]
    emb = (rng.normal(size=(40, D)) + 2.0).astype(np.float32)  # offset: mean subtraction matters
    store = write_store(tmp_path / "emb", keys, emb)
    train_keys = [f"train{i:03d}" for i in range(60)]
    train = (rng.normal(size=(60, D)) + 1.5).astype(np.float32)
    write_store(tmp_path / "train", train_keys, train)
    data = tmp_path / "train_data"
    data.mkdir()
    (data / "utt2spk").write_text("".join(f"{k} spk{i % 20:02d}\n" for i, k in enumerate(train_keys)))
    pairs = [(keys[i], keys[j]) for i in range(0, 40, 3) for j in range(1, 40, 5) if i != j]
    labels = rng.integers(0, 2, len(pairs))
    lines = [f"{lab} {e} {t}\n" for (e, t), lab in zip(pairs, labels)]
    (tmp_path / "vox.txt").write_text("".join(lines))
    kaldi = [f"{e} {t} {'target' if lab else 'nontarget'}\n" for (e, t), lab in zip(pairs, labels)]
    (tmp_path / "kaldi.lst").write_text("".join(kaldi))
    return dict(path=tmp_path, keys=keys, emb=emb, store=store, train=train, train_keys=train_keys, data=data,
                pairs=pairs, labels=labels)


def _direct_cos(s, pairs, mean=None):
    idx = {k: i for i, k in enumerate(s["keys"])}
    x = s["emb"].astype(np.float64)
    if mean is not None:
        x = x - mean
    x = _unit(x)
    return np.array([x[idx[e]] @ x[idx[t]] for e, t in pairs])


def test_cosine_and_mean_subtraction_match_direct(setup):
    s = setup
    st = EmbeddingStore.open(s["store"])
    trials = read_trials(s["path"] / "vox.txt")
    scores, keep = score_trials(trials, st)
    assert keep.all() and np.allclose(scores, _direct_cos(s, s["pairs"]), rtol=0, atol=F32_COS)
    mean = s["train"].astype(np.float64).mean(axis=0)
    assert np.allclose(store_mean(EmbeddingStore.open(s["path"] / "train"), block=7), mean)  # float64 sums
    scores_m, _ = score_trials(trials, st, mean=mean)
    assert np.allclose(scores_m, _direct_cos(s, s["pairs"], mean), rtol=0, atol=F32_COS)
    assert not np.allclose(scores_m, scores, atol=1e-2)  # centring moves the scores far beyond rounding


def _direct_norm(s, pairs, cohort, top_n, mean):
    """Per-trial, straight from the formula: cohort scores of e and of t, top-N, mean, std (ddof=1)."""
    idx = {k: i for i, k in enumerate(s["keys"])}
    x = _unit(s["emb"].astype(np.float64) - mean)
    c = _unit(cohort - mean)
    out = []
    for e, t in pairs:
        ve, vt = x[idx[e]], x[idx[t]]
        raw = ve @ vt
        ce = np.sort(c @ ve)[::-1][:top_n]
        ct = np.sort(c @ vt)[::-1][:top_n]
        out.append(0.5 * ((raw - ce.mean()) / ce.std(ddof=1) + (raw - ct.mean()) / ct.std(ddof=1)))
    return np.array(out)


@pytest.mark.parametrize("norm,top_n", [("asnorm", 5), ("asnorm", 300), ("snorm", 5)])
def test_score_norm_matches_direct_formula(setup, norm, top_n):
    s = setup
    cohort = s["train"][:20].astype(np.float64)
    mean = s["train"].astype(np.float64).mean(axis=0)
    st = EmbeddingStore.open(s["store"])
    scores, _ = score_trials(read_trials(s["path"] / "kaldi.lst"), st, mean=mean, cohort=cohort, norm=norm,
                             top_n=top_n)
    want = _direct_norm(s, s["pairs"], cohort, 20 if norm == "snorm" or top_n > 20 else top_n, mean)
    # float32 cosines normalised by a cohort std: the std divides their rounding (measured 1.8e-6, 55x below)
    assert np.allclose(scores, want, atol=1e-4)


def test_cohort_stats_blocks_agree():
    rng = np.random.default_rng(1)
    x, c = _unit(rng.normal(size=(50, 8))), _unit(rng.normal(size=(30, 8)))
    mu, sd = cohort_stats(x, c, 7, block=6)
    top = -np.sort(-(x @ c.T), axis=1)[:, :7]
    # cosines of 8-dim unit vectors: float32 top-7 statistics within ~11 eps of float64 (measured 1.5e-7)
    assert np.allclose(mu, top.mean(axis=1), atol=1e-6) and np.allclose(sd, top.std(axis=1, ddof=1), atol=1e-6)


def test_avg_enrolment_from_enroll_map(setup):
    s = setup
    st = EmbeddingStore.open(s["store"])
    emap = {"spkA-enroll": s["keys"][:3], "spkB-enroll": s["keys"][10:12]}
    (s["path"] / "avg.lst").write_text(f"spkA-enroll {s['keys'][20]} target\nspkB-enroll {s['keys'][21]} nontarget\n"
                                       f"spkA-enroll {s['keys'][22]} nontarget\n")
    scores, _ = Scorer(st, enroll_map=emap).score(read_trials(s["path"] / "avg.lst"))
    x = s["emb"].astype(np.float64)
    ea, eb = _unit(x[:3].mean(axis=0)), _unit(x[10:12].mean(axis=0))
    want = [ea @ _unit(x[20]), eb @ _unit(x[21]), ea @ _unit(x[22])]
    assert np.allclose(scores, want, rtol=0, atol=F32_COS)
    emap["spkB-enroll"] = ["absent-seg"]  # an enrolment whose segment has no embedding is a missing key
    with pytest.raises(DataError, match="1 keys have no embedding.*spkB-enroll.*1 of 3 trials") as ei:
        Scorer(st, enroll_map=emap).score(read_trials(s["path"] / "avg.lst"), source=s["path"] / "avg.lst")
    assert ei.value.line == 2


def test_cli_score_end_to_end_and_output_format(setup):
    s = setup
    out = s["path"] / "out"
    rc = main(["score", "--trials", str(s["path"] / "vox.txt"), str(s["path"] / "kaldi.lst"), "--emb", str(s["store"]),
               "--mean-store", str(s["path"] / "train"), "--cohort", str(s["path"] / "train"),
               "--cohort-data", str(s["data"]), "--asnorm-top", "6", "--out-dir", str(out)])
    assert rc == 0
    a, b = read_scores(out / "vox.txt.score"), read_scores(out / "kaldi.lst.score")
    first = (out / "kaldi.lst.score").read_text().split("\n")[0].split()
    assert first[:2] == list(s["pairs"][0]) and first[3] in ("target", "nontarget")
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.labels, s["labels"])
    spk_means = np.stack([s["train"][i::20].astype(np.float64).mean(axis=0) for i in range(20)])
    want = _direct_norm(s, s["pairs"], spk_means, 6, s["train"].astype(np.float64).mean(axis=0))
    assert np.allclose(a.scores, want, atol=2e-5)  # 6 decimals in the file, and float32 S-norm (measured 6e-7)
    assert (out / "score.log").exists()
    assert main(["score", "--trials", str(s["path"] / "vox.txt"), "--emb", str(s["store"]), "--norm", "snorm",
                 "--out-dir", str(s["path"] / "o2")]) == 2


def test_missing_keys_error_or_skip(setup, capsys):
    s = setup
    lines = (s["path"] / "kaldi.lst").read_text().splitlines()
    lines[4] = "ghost1 " + lines[4].split(maxsplit=1)[1]
    lines[7] = lines[7].split()[0] + " ghost2 target"
    lines[9] = "ghost1 ghost3 nontarget"
    (s["path"] / "m.lst").write_text("\n".join(lines) + "\n")
    out = s["path"] / "out"
    args = ["score", "--trials", str(s["path"] / "m.lst"), "--emb", str(s["store"]), "--out-dir", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "m.lst:5:" in err and "3 keys have no embedding" in err and "ghost1, ghost2, ghost3" in err
    assert "3 of" in err and "--allow-missing" in err
    assert not (out / "m.lst.score").exists() and not list(out.glob(".m.lst*"))
    assert main(args + ["--allow-missing"]) == 0
    got = read_scores(out / "m.lst.score", keys=True)
    assert len(got) == len(lines) - 3 and "ghost" not in " ".join(got.enroll) + " ".join(got.test)
    assert "3 of" in capsys.readouterr().err + (out / "score.log").read_text()


@pytest.mark.parametrize("content,line,match", [
    ("a b target\na b c d\n", 2, "4 columns"),
    ("a b target\nc d maybe\n", 2, "label 'maybe'"),
    ("1 a b\n2 c d\n", 2, "label '2'"),
    ("a b target\nc d nontarget\na b nontarget\n", 3, "duplicate trial a b"),
])
def test_bad_trial_lists_leave_no_output(setup, capsys, content, line, match):
    s = setup
    good = s["path"] / "kaldi.lst"
    bad = s["path"] / "bad.lst"
    bad.write_text(content)
    out = s["path"] / "out"
    rc = main(["score", "--trials", str(good), str(bad), "--emb", str(s["store"]), "--out-dir", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"bad.lst:{line}:" in err and match in err
    assert not list(out.glob("*.score")) and not list(out.glob(".*tmp*"))


def test_keys_with_unicode_spaces_are_kept_whole(tmp_path):
    keys = ["spk\u00a0one/a.wav", "spk\u2003two/b.wav"]  # not separators in Kaldi-style files
    (tmp_path / "t.lst").write_text(f"{keys[0]} {keys[1]} target\nx y nontarget\n", encoding="utf-8")
    trials = read_trials(tmp_path / "t.lst")
    assert trials.enroll.tolist() == [keys[0], "x"] and trials.test.tolist() == [keys[1], "y"]


def test_score_files_rejects_colliding_names(setup, tmp_path):
    s = setup
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "vox.txt").write_text((s["path"] / "vox.txt").read_text())
    with pytest.raises(ValueError, match="collide"):
        score_files([s["path"] / "vox.txt", tmp_path / "x" / "vox.txt"], ScorerInputs(s["store"]), tmp_path / "o")
    assert main(["score", "--trials", str(s["path"] / "vox.txt"), str(tmp_path / "x" / "vox.txt"), "--emb",
                 str(s["store"]), "--out-dir", str(tmp_path / "o")]) == 2
    assert not list((tmp_path / "o").glob("*.score"))


# ---------------------------------------------------------------- AS-norm sized to its cohort


def test_top_n_count_or_share_of_the_cohort():
    from spkcausal.scoring.cosine import parse_top_n, resolve_top_n
    from spkcausal.utils import UsageError

    assert resolve_top_n(0.1, 756) == 76 and resolve_top_n(300, 756) == 300 and resolve_top_n(1000, 756) == 756
    assert resolve_top_n(1.0, 756) == 756 and resolve_top_n(0.001, 756) == 2  # never below 2
    assert parse_top_n("300") == 300 and isinstance(parse_top_n("300"), int) and parse_top_n("0.1") == 0.1
    for bad in (0.0, 1.5, -3, 1, True):
        with pytest.raises(UsageError):
            resolve_top_n(bad, 756)
    with pytest.raises(UsageError, match="neither a count"):
        parse_top_n("ten")


def test_share_top_n_scores_like_its_count_and_warns_when_large(setup, caplog):
    s = setup
    st = EmbeddingStore.open(s["store"])
    trials = read_trials(s["path"] / "kaldi.lst")
    cohort = s["train"][:20].astype(np.float64)
    with caplog.at_level("WARNING"):
        by_share, _ = score_trials(trials, st, cohort=cohort, norm="asnorm", top_n=0.2)  # 4 of 20: no warning
    assert "AS-norm top-N" not in caplog.text
    by_count, _ = score_trials(trials, st, cohort=cohort, norm="asnorm", top_n=4)
    assert np.array_equal(by_share, by_count)
    # float32 store against float64: AS-norm divides by a top-4 cohort std, amplifying float32 cosine rounding;
    # measured 1.6e-5
    assert np.allclose(by_count, _direct_norm(s, s["pairs"], cohort, 4, np.zeros(D)), atol=1e-4)
    with caplog.at_level("WARNING"):
        score_trials(trials, st, cohort=cohort, norm="asnorm", top_n=5)  # 25% of the cohort
    assert "AS-norm top-N 5 is 25% of the 20-entry cohort" in caplog.text


def test_cli_score_accepts_a_share(setup):
    s = setup
    common = ["--trials", str(s["path"] / "kaldi.lst"), "--emb", str(s["store"]), "--cohort", str(s["path"] / "train"),
              "--cohort-data", str(s["data"])]
    assert main(["score", *common, "--asnorm-top", "0.3", "--out-dir", str(s["path"] / "share")]) == 0
    assert main(["score", *common, "--asnorm-top", "6", "--out-dir", str(s["path"] / "count")]) == 0
    a, b = read_scores(s["path"] / "share" / "kaldi.lst.score"), read_scores(s["path"] / "count" / "kaldi.lst.score")
    assert np.array_equal(a.scores, b.scores)  # 0.3 of 20 speaker means = 6
    assert main(["score", *common, "--asnorm-top", "2.5", "--out-dir", str(s["path"] / "bad")]) == 2


def test_asnorm_top_chosen_on_dev_list_by_min_dcf(setup, tmp_path, capsys):
    """The chooser's curve equals minDCF of `score_trials` at each count, and it picks the lowest (ties: smaller)."""
    import json

    from spkcausal.scoring.cosine import choose_asnorm_top
    from spkcausal.scoring.metrics import compute_min_dcf

    rng = np.random.default_rng(5)
    spk = rng.normal(size=(30, D))
    keys = [f"u{i:03d}" for i in range(120)]
    # utterances of 30 speakers; half the speakers sit near a common direction, so cohort size matters
    emb = spk[np.arange(120) % 30] + rng.normal(scale=1.2, size=(120, D)) + (np.arange(120) % 2)[:, None] * 1.5
    store = write_store(tmp_path / "dev_emb", keys, emb.astype(np.float32))
    cohort = rng.normal(size=(40, D)) + rng.integers(0, 2, (40, 1)) * 1.5
    lines = [f"{keys[i]} {keys[j]} {'target' if i % 30 == j % 30 else 'nontarget'}\n"
             for i in range(120) for j in range(i + 1, 120) if (i + j) % 3 == 0 or i % 30 == j % 30]
    (tmp_path / "dev.lst").write_text("".join(lines))
    trials = read_trials(tmp_path / "dev.lst")
    st = EmbeddingStore.open(store)
    cands = [2, 5, 10, 0.5, 20, 40, 100]
    res = choose_asnorm_top(Scorer(st, cohort=cohort), trials, cands, p_target=0.05)
    ks = [r["top_n"] for r in res["curve"]]
    assert ks == [2, 5, 10, 20, 40] and res["curve"][3]["candidates"] == [0.5, 20]  # 0.5 of 40 = 20; 100 -> 40
    want = [compute_min_dcf(score_trials(trials, st, cohort=cohort, norm="asnorm", top_n=k)[0], trials.labels, 0.05)
            for k in ks]
    assert np.allclose([r["min_dcf"] for r in res["curve"]], want, atol=1e-12)  # float64 counts
    assert len(set(np.round(want, 6))) > 1  # the case is not flat: the choice means something
    best = min(m for m in want)
    assert res["best"] == ks[want.index(best)]
    assert res["curve"][-1]["min_dcf"] == pytest.approx(res["snorm"]["min_dcf"])  # the whole cohort is S-norm: equal
    assert res["criterion"] == "min_dcf"  # 2,000+ non-targets: minDCF(0.05) resolves the choice
    out = tmp_path / "curve.json"
    assert main(["asnorm-top", "--trials", str(tmp_path / "dev.lst"), "--emb", str(store), "--cohort",
                 str(write_store(tmp_path / "cohort", [f"c{i}" for i in range(40)], cohort.astype(np.float32))),
                 "--candidates", "2", "5", "10", "0.5", "40", "--p-target", "0.05", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["best"] == res["best"]
    # --reuse prints the stored choice without scoring (the trial list may be gone); a broken file is named
    capsys.readouterr()
    assert main(["asnorm-top", "--reuse", "--trials", "/nonexistent", "--emb", "/nonexistent", "--cohort", "x",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(res["best"])
    out.write_text('{"curve": []}')
    assert main(["asnorm-top", "--reuse", "--trials", "x", "--emb", "x", "--cohort", "x", "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err


def test_asnorm_top_ties_go_to_the_smaller_count(setup, monkeypatch):
    import spkcausal.scoring.metrics as metrics
    from spkcausal.scoring.cosine import choose_asnorm_top

    s = setup
    monkeypatch.setattr(metrics, "compute_min_dcf", lambda *a, **k: 0.5)  # every candidate ties, by either
    monkeypatch.setattr(metrics, "eer_with_threshold", lambda *a, **k: (0.1, 0.0))  # criterion
    res = choose_asnorm_top(Scorer(EmbeddingStore.open(s["store"]), cohort=s["train"][:20]),
                            read_trials(s["path"] / "kaldi.lst"), [10, 3, 6])
    assert res["best"] == 3


def test_asnorm_top_is_chosen_by_eer_on_a_dev_list_too_small_for_min_dcf(setup):
    """minDCF(0.01) decides only when one false alarm moves it by at most 0.05 (1,980 non-targets); on a
    smaller list the lowest EER does, and the result says why."""
    from spkcausal.scoring.cosine import MIN_DCF_STEP, choose_asnorm_top

    s = setup
    trials = read_trials(s["path"] / "kaldi.lst")
    n_non = int((~trials.labels.astype(bool)).sum())
    assert 0.99 / (0.01 * n_non) > MIN_DCF_STEP  # the fixture list is such a list
    res = choose_asnorm_top(Scorer(EmbeddingStore.open(s["store"]), cohort=s["train"][:20]), trials, [2, 5, 10, 20])
    assert res["criterion"] == "eer" and f"{n_non} non-targets" in res["why"] and "1980 needed" in res["why"]
    best = min(res["curve"], key=lambda r: (r["eer"], r["top_n"]))
    assert res["best"] == best["top_n"]
    res = choose_asnorm_top(Scorer(EmbeddingStore.open(s["store"]), cohort=s["train"][:20]), trials, [2, 5, 10, 20],
                            p_target=0.5)  # one false alarm costs 1 / n_non there: fine enough
    assert res["criterion"] == "min_dcf"
