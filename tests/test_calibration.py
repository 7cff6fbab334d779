"""Calibration to LLRs: Cllr / minCllr against direct formulas and scikit-learn's isotonic regression, actual DCF of
calibrated Gaussian LLRs, linear calibration and QMF on synthetic draws, the JSON model, the CLI commands."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spkcausal.cli import main
from spkcausal.data.embeddings import write_store
from spkcausal.data.trialio import Trials, read_scores, read_trials, write_scores
from spkcausal.scoring.calibration import (
    CalibrationModel,
    act_dcf,
    cllr,
    llr_bootstrap,
    llr_summary,
    min_cllr,
    pav,
    pav_llr,
    train_calibration,
)
from spkcausal.scoring.metrics import compute_min_dcf
from spkcausal.utils import DataError, UsageError

LN2 = math.log(2)


def _draw(rng, n_tar, n_non, mu_t, mu_n, sd):
    s = np.concatenate([rng.normal(mu_t, sd, n_tar), rng.normal(mu_n, sd, n_non)])
    return s, np.concatenate([np.ones(n_tar, dtype=int), np.zeros(n_non, dtype=int)])


def test_cllr_is_the_written_out_formula():
    rng = np.random.default_rng(0)
    llr, lab = _draw(rng, 300, 700, 2.0, -2.0, 3.0)
    tar, non = llr[lab == 1], llr[lab == 0]
    want = 0.5 * (np.mean(np.log2(1 + np.exp(-tar))) + np.mean(np.log2(1 + np.exp(non))))
    assert cllr(llr, lab) == pytest.approx(want, rel=1e-12)  # float64 both sides: ~1e4 ulp of room
    assert cllr(np.zeros(10), np.arange(10) % 2) == pytest.approx(1.0)  # "always llr = 0" costs one bit
    # far beyond exp's range: log2(1 + e^1000) = 1000 / ln 2 to double precision, no overflow
    assert cllr(np.array([-1000.0, 1000.0, 5.0]), np.array([1, 0, 1])) == pytest.approx(
        0.5 * ((1000 / LN2 + np.log2(1 + np.exp(-5.0))) / 2 + 1000 / LN2))


def test_pav_matches_sklearn_isotonic_regression():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(1)
    y = rng.normal(size=500).cumsum() * 0.1 + rng.normal(size=500)
    w = rng.uniform(0.1, 3.0, 500)
    want = IsotonicRegression().fit(np.arange(500), y, sample_weight=w).predict(np.arange(500))
    assert np.allclose(pav(y, w), want, atol=1e-10)  # float64 weighted means of a few values
    y01 = (rng.random(400) < np.linspace(0, 1, 400)).astype(float)
    # float64 against scikit-learn's float64 isotonic fit (np.allclose defaults: 1e-5 relative)
    assert np.allclose(pav(y01, np.ones(400)), IsotonicRegression().fit(np.arange(400), y01).predict(np.arange(400)))


def test_min_cllr_from_sklearn_isotonic_regression():
    """minCllr = Cllr of sklearn's isotonic posterior with the list's prior removed. The direct form needs no
    infinite LLR: a target costs log2(1 + (1 - P) / P * N_tar / N_non), zero where P = 1 (likewise non-targets)."""
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(2)
    s, lab = _draw(rng, 400, 1600, 1.5, -1.0, 1.0)
    s = np.round(s, 1)  # many ties: tied scores must share one LLR
    post = IsotonicRegression(out_of_bounds="clip").fit(s, lab).predict(s)
    odds = lab.sum() / (len(lab) - lab.sum())
    tar, non = lab == 1, lab == 0
    assert (post[tar] > 0).all() and (post[non] < 1).all()
    c_tar = np.log2(1 + (1 - post[tar]) / post[tar] * odds)
    c_non = np.log2(1 + post[non] / (1 - post[non]) / odds)
    want = 0.5 * (c_tar.mean() + c_non.mean())
    assert min_cllr(s, lab) == pytest.approx(want, rel=1e-9)  # float64; logs of PAV posteriors near 0 or 1
    llr = pav_llr(s, lab)
    assert np.isneginf(llr).any() and np.isposinf(llr).any()  # pure blocks at both ends of this draw
    fin = (post > 0) & (post < 1)
    assert np.array_equal(np.isfinite(llr), fin)
    assert np.allclose(llr[fin], np.log(post[fin] / (1 - post[fin])) - np.log(odds), atol=1e-9)  # float64 logit
    assert min_cllr(s, lab) < cllr(train_calibration(s, lab, 0.5).apply(s), lab)  # PAV is optimal among monotone


def test_calibrated_gaussian_llrs_and_a_shift_calibration_removes():
    """LLRs N(mu, 2mu) vs N(-mu, 2mu) are calibrated: actual DCF at the Bayes threshold is within 2% of minDCF
    (200k trials). Shifted by +3 they are not; linear calibration fitted on an independent draw restores them."""
    mu, sd = 4.0, math.sqrt(8.0)
    s, lab = _draw(np.random.default_rng(3), 20_000, 180_000, mu, -mu, sd)
    m = compute_min_dcf(s, lab, 0.01)
    assert m <= act_dcf(s, lab, 0.01) <= 1.02 * m
    shifted = s + 3.0
    assert compute_min_dcf(shifted, lab, 0.01) == pytest.approx(m)  # float64 counts: a shift keeps the order
    assert act_dcf(shifted, lab, 0.01) > 3 * m
    dev, dev_lab = _draw(np.random.default_rng(4), 20_000, 180_000, mu, -mu, sd)
    model = train_calibration(dev + 3.0, dev_lab, 0.01)
    # statistical: a fit to finite synthetic data recovers the generating slope and offset within a few SE
    assert model.weights[0] == pytest.approx(1.0, abs=0.05) and model.bias == pytest.approx(-3.0, abs=0.15)
    assert act_dcf(model.apply(shifted), lab, 0.01) <= 1.02 * m
    summary = llr_summary(model.apply(shifted), lab, (0.01,))
    # calibrated Cllr near the raw one (a statistical property of well-calibrated synthetic scores)
    assert summary["cllr"] == pytest.approx(cllr(s, lab), abs=0.01) and summary["min_dcf"][0.01] == pytest.approx(m)


def _qmf_draw(seed, n, depends):
    """Scores whose both distributions move with the shorter side's log duration (when `depends`)."""
    rng = np.random.default_rng(seed)
    lab = (rng.random(n) < 0.3).astype(int)
    log_dur = rng.uniform(0.0, math.log(20.0), n)
    noise_q = rng.normal(size=n)  # an irrelevant quality measure
    s = np.where(lab == 1, rng.normal(2.0, 1.0, n), rng.normal(-2.0, 1.0, n))
    if depends:
        s = s + 2.0 * (log_dur - log_dur.mean())
    return s, lab, np.column_stack([log_dur, noise_q])


@pytest.mark.parametrize("depends", [True, False])
def test_qmf_beats_plain_calibration_only_when_quality_matters(depends):
    names = ["log_dur_min", "norm_min"]
    s, lab, q = _qmf_draw(10, 20_000, depends)
    plain = train_calibration(s, lab, 0.01)
    qmf = train_calibration(s, lab, 0.01, q, names)
    es, elab, eq = _qmf_draw(11, 20_000, depends)  # independent evaluation draw
    c_plain, c_qmf = cllr(plain.apply(es), elab), cllr(qmf.apply(es, eq), elab)
    if depends:
        assert c_qmf < c_plain - 0.1
        # undoes the duration shift: a statistical fit on 20000 draws, the ratio within 10%
        assert qmf.weights[1] / qmf.weights[0] == pytest.approx(-2.0, abs=0.2)
    else:
        assert c_qmf <= c_plain + 0.005


def test_model_json_round_trip(tmp_path):
    s, lab, q = _qmf_draw(12, 2000, True)
    model = train_calibration(s, lab, 0.05, q, ["log_dur_min", "norm_min"], {"measures": ["log_dur_min", "norm_min"]})
    model.save(tmp_path / "m.json")
    back = CalibrationModel.load(tmp_path / "m.json")
    assert back.to_dict() == model.to_dict() and back.kind == "qmf"
    assert np.array_equal(back.apply(s, q), model.apply(s, q))
    with pytest.raises(UsageError, match="needs 2 quality measures"):
        back.apply(s)
    (tmp_path / "bad.json").write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match="not a calibration model"):
        CalibrationModel.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="not a JSON calibration model"):
        CalibrationModel.load(tmp_path / "broken.json")


def _write_score_file(path, s, lab):
    trials = Trials(enroll=np.array([f"e{i}" for i in range(len(s))]), test=np.array([f"t{i}" for i in range(len(s))]),
                    labels=lab.astype(np.int8))
    write_scores(path, trials, s)


def test_cli_calibrate_and_eer_llr(tmp_path, capsys):
    rng = np.random.default_rng(6)
    dev, dev_lab = _draw(rng, 500, 1500, 1.0, -1.0, 0.5)
    ev, ev_lab = _draw(rng, 300, 900, 1.0, -1.0, 0.5)
    _write_score_file(tmp_path / "dev.score", dev, dev_lab)
    _write_score_file(tmp_path / "eval.score", ev, ev_lab)
    assert main(["calibrate", "--dev", str(tmp_path / "dev.score"), "--out", str(tmp_path / "cal.json")]) == 0
    model = CalibrationModel.load(tmp_path / "cal.json")
    assert model.kind == "linear" and model.p_target == 0.01
    assert main(["calibrate", "--model", str(tmp_path / "cal.json"), "--apply", str(tmp_path / "eval.score"),
                 "--out", str(tmp_path / "eval.llr")]) == 0
    out = read_scores(tmp_path / "eval.llr", keys=True, need_labels=True)
    # the .llr file keeps 6 decimals: rounding <= 5e-7, and allclose's default rtol adds 1e-5 relative
    assert np.allclose(out.scores, model.apply(read_scores(tmp_path / "eval.score").scores), atol=5e-7)
    assert out.enroll[0] == "e0" and np.array_equal(out.labels, ev_lab)
    capsys.readouterr()
    assert main(["eer", str(tmp_path / "eval.llr"), "--llr", "--p-target", "0.01", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)[0]
    want = llr_summary(out.scores, out.labels, (0.01,))
    # float64 both sides
    assert got["cllr"] == pytest.approx(want["cllr"]) and got["min_cllr"] == pytest.approx(want["min_cllr"])
    assert got["act_dcf"]["0.01"] == pytest.approx(want["act_dcf"][0.01])  # float64 both sides
    assert got["min_dcf"]["0.01"] == pytest.approx(want["min_dcf"][0.01])  # float64 both sides
    assert main(["eer", "--llr", str(tmp_path / "eval.llr")]) == 0
    assert "minCllr" in capsys.readouterr().out
    # one of --dev / --model, not both; --model needs --apply
    assert main(["calibrate", "--dev", str(tmp_path / "dev.score"), "--model", str(tmp_path / "cal.json"),
                 "--out", str(tmp_path / "x")]) == 2
    assert main(["calibrate", "--model", str(tmp_path / "cal.json"), "--out", str(tmp_path / "x")]) == 2
    assert "--apply" in capsys.readouterr().err


@pytest.fixture
def qmf_setup(tmp_path):
    """40 utterances of 10 speakers with raw norms and durations that vary, a 20-row cohort, a dev list."""
    rng = np.random.default_rng(7)
    d = 12
    keys = [f"s{i % 10}-u{i:02d}" for i in range(40)]
    spk = rng.normal(size=(10, d))
    dur = rng.uniform(1.0, 12.0, 40)
    emb = (spk[np.arange(40) % 10] + rng.normal(size=(40, d)) / np.sqrt(dur)[:, None]) * rng.uniform(5, 20, (40, 1))
    write_store(tmp_path / "emb", keys, emb.astype(np.float32))
    cohort = rng.normal(size=(20, d))
    write_store(tmp_path / "cohort", [f"c{i}" for i in range(20)], cohort.astype(np.float32))
    (tmp_path / "utt2dur").write_text("".join(f"{k} {v:.3f}\n" for k, v in sorted(zip(keys, dur))))
    (tmp_path / "enroll2utt").write_text(f"avg-a {keys[0]} {keys[10]}\n")
    lines = [f"{keys[i]} {keys[j]} {'target' if i % 10 == j % 10 else 'nontarget'}\n"
             for i in range(40) for j in range(i + 1, 40) if (i + j) % 4 == 0 or i % 10 == j % 10]
    lines += [f"avg-a {keys[20]} target\n", f"avg-a {keys[21]} nontarget\n"]
    (tmp_path / "dev.lst").write_text("".join(lines))
    return dict(path=tmp_path, keys=keys, emb=emb, cohort=cohort, dur=dict(zip(keys, np.round(dur, 3))))


def test_quality_measures_against_direct_computation(qmf_setup):
    from spkcausal.scoring.cosine import ScorerInputs
    from spkcausal.scoring.qmf import quality_measures, read_durations

    s = qmf_setup
    p = s["path"]
    trials = read_trials(p / "dev.lst")
    measures = ["log_dur_min", "log_dur_max", "norm_enroll", "norm_test", "cohort_mean_min", "cohort_mean_max"]
    inputs = ScorerInputs(p / "emb", cohort=p / "cohort", top_n=4, enroll_map=p / "enroll2utt")
    q = quality_measures(trials, inputs, read_durations([p / "utt2dur"]), measures)
    raw = dict(zip(s["keys"], s["emb"]))
    raw["avg-a"] = (s["emb"][0] + s["emb"][10]) / 2
    dur = dict(s["dur"], **{"avg-a": s["dur"][s["keys"][0]] + s["dur"][s["keys"][10]]})
    c = s["cohort"] / np.linalg.norm(s["cohort"], axis=1, keepdims=True)

    def cmean(k):
        v = raw[k] / np.linalg.norm(raw[k])
        return np.sort(c @ v)[-4:].mean()

    for i, (e, t) in enumerate(zip(trials.enroll, trials.test)):
        want = [min(np.log(dur[e]), np.log(dur[t])), max(np.log(dur[e]), np.log(dur[t])), np.linalg.norm(raw[e]),
                np.linalg.norm(raw[t]), min(cmean(e), cmean(t)), max(cmean(e), cmean(t))]
        # the library's float32-store measures vs float64 here: <= D eps relative for norms and cosines
        assert np.allclose(q[i], want, rtol=1e-5, atol=1e-5), (e, t)


def test_cli_qmf_train_and_apply(qmf_setup, capsys):
    s = qmf_setup
    p = s["path"]
    assert main(["score", "--trials", str(p / "dev.lst"), "--emb", str(p / "emb"), "--cohort", str(p / "cohort"),
                 "--asnorm-top", "4", "--enroll-map", str(p / "enroll2utt"), "--out-dir", str(p / "sc")]) == 0
    stores = ["--emb", str(p / "emb"), "--cohort", str(p / "cohort"), "--utt2dur", str(p / "utt2dur"),
              "--enroll-map", str(p / "enroll2utt")]
    dev = str(p / "sc" / "dev.lst.score")
    assert main(["qmf", "--dev", dev, *stores, "--asnorm-top", "4", "--out", str(p / "qmf.json")]) == 0
    model = CalibrationModel.load(p / "qmf.json")
    assert model.kind == "qmf" and model.inputs[1:] == ["log_dur_min", "log_dur_max", "norm_min", "norm_max",
                                                        "cohort_mean_min", "cohort_mean_max"]
    assert model.quality["top_k"] == 4 and model.quality["centred"] is False
    assert main(["qmf", "--model", str(p / "qmf.json"), "--apply", dev, *stores, "--out", str(p / "dev.llr")]) == 0
    from spkcausal.scoring.cosine import ScorerInputs
    from spkcausal.scoring.qmf import quality_measures, read_durations

    table = read_scores(dev, keys=True)
    trials = Trials(enroll=table.enroll, test=table.test, labels=table.labels)
    inputs = ScorerInputs(p / "emb", cohort=p / "cohort", top_n=4, enroll_map=p / "enroll2utt")
    q = quality_measures(trials, inputs, read_durations([p / "utt2dur"]), model.inputs[1:])
    out = read_scores(p / "dev.llr", need_labels=True)
    assert np.allclose(out.scores, model.apply(table.scores, q), atol=5e-7)  # 6 decimals, as above
    assert cllr(out.scores, out.labels) == pytest.approx(model.dev["cllr"], abs=1e-4)  # Cllr of 6-decimal llrs
    capsys.readouterr()
    # the wrong tool, a different centring than in training, a missing duration: one-line errors
    assert main(["calibrate", "--model", str(p / "qmf.json"), "--apply", dev, "--out", str(p / "x")]) == 2
    assert main(["qmf", "--model", str(p / "qmf.json"), "--apply", dev, *stores, "--mean-store", str(p / "emb"),
                 "--out", str(p / "x")]) == 2
    assert "without --mean-store" in capsys.readouterr().err
    (p / "short_utt2dur").write_text("".join(f"{k} {v}\n" for k, v in sorted(s["dur"].items())[1:]))
    no_dur = [a for a in stores if a not in ("--utt2dur", str(p / "utt2dur"))]
    assert main(["qmf", "--dev", dev, *no_dur, "--utt2dur", str(p / "short_utt2dur"),
                 "--out", str(p / "x.json")]) == 2
    assert "have no duration" in capsys.readouterr().err
    assert not (p / "x").exists() and not (p / "x.json").exists()


def test_llr_bootstrap_resamples_are_the_metrics_of_the_resampled_trials():
    """Every resample's Cllr and actDCF equal cllr / act_dcf on the trials of the drawn groups (repeated as
    drawn), with the draws reproduced from the documented seed; a system paired with itself differs by 0."""
    rng = np.random.default_rng(3)
    n, n_spk = 240, 12
    labels = rng.random(n) < 0.3
    llr = rng.normal(size=n) * 2 + 3 * labels - 1.5
    groups = np.array([f"s{i % n_spk}" for i in range(n)])
    res = llr_bootstrap([llr, llr], labels, groups, n_boot=40, p_targets=(0.05,), seed=9)
    assert res["n_dropped"] == 0 and res["cllr"].shape == (2, 40)
    gi = np.unique(groups, return_inverse=True)[1]
    drawn = np.random.default_rng(9).integers(0, n_spk, size=(40, n_spk))
    for b in (0, 17, 39):
        idx = np.concatenate([np.flatnonzero(gi == g) for g in drawn[b]])
        assert res["cllr"][0, b] == pytest.approx(cllr(llr[idx], labels[idx]), rel=1e-12)  # float64 both sides
        assert res["act_dcf"][0.05][0, b] == pytest.approx(act_dcf(llr[idx], labels[idx], 0.05), rel=1e-12)  # counts
    np.testing.assert_array_equal(res["cllr"][0], res["cllr"][1])
    with pytest.raises(UsageError, match="same trials"):
        llr_bootstrap([llr[:-1]], labels)
