"""Bootstrap intervals: coverage of a known EER, speaker- vs trial-level width, paired self-difference, the
weighted DET curve against metrics on repeated data, accuracy intervals, and `spkcausal eer --ci / --paired`."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from spkcausal.cli import main
from spkcausal.scoring.bootstrap import (
    bootstrap_accuracy,
    bootstrap_verification,
    paired_bootstrap_accuracy,
    paired_bootstrap_verification,
    weighted_verification,
)
from spkcausal.scoring.metrics import compute_eer, compute_min_dcf, shot_group_accuracy


def _trials(n: int, seed: int, decimals: int | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int8)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + 1.5 * labels
    return (scores if decimals is None else np.round(scores, decimals)), labels


def _speaker_trials(n_spk: int, n_tar: int, n_non: int, rng: np.random.Generator, d: float = 2.0,
                    offset_sd: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every speaker has n_tar target and n_non non-target trials; an optional per-speaker offset of its
    target scores and another of its non-target scores (some speakers are harder than others)."""
    spk = np.repeat(np.arange(n_spk), n_tar + n_non)
    labels = np.tile(np.r_[np.ones(n_tar, np.int8), np.zeros(n_non, np.int8)], n_spk)
    off = np.where(labels == 1, rng.normal(size=n_spk)[spk], rng.normal(size=n_spk)[spk])
    return rng.normal(size=len(labels)) + d * labels + offset_sd * off, labels, spk


# ---------------------------------------------------------------- the weighted curve


@pytest.mark.parametrize(("seed", "decimals"), [(0, None), (1, 1), (2, 0), (3, 2), (4, None)])
def test_all_ones_weights_equal_metrics(seed, decimals):
    scores, labels = _trials(500, seed, decimals)
    eer, dcf = weighted_verification(scores, labels, np.ones(len(scores), dtype=np.int64), (0.01, 0.05, 0.3))
    # float64 sorts and cumulative counts, no BLAS: the same EER up to a few ulp whatever the CPU
    assert abs(eer[0] - compute_eer(scores, labels)) <= 1e-12
    for p in (0.01, 0.05, 0.3):
        assert abs(dcf[p][0] - compute_min_dcf(scores, labels, p)) <= 1e-12  # as the EER


@pytest.mark.parametrize(("seed", "decimals"), [(0, None), (1, 1), (2, 0), (5, 2)])
def test_integer_weights_equal_repeated_trials(seed, decimals):
    # Zeros drop trials (whole tie groups too, when decimals=0); several rows at once.
    scores, labels = _trials(300, seed, decimals)
    rng = np.random.default_rng(seed)
    weights = rng.integers(0, 4, size=(6, len(scores)))
    weights[:, :2] = 1
    eer, dcf = weighted_verification(scores, labels, weights, (0.01, 0.05))
    for row, w in enumerate(weights):
        rep = np.repeat(np.arange(len(scores)), w)
        assert abs(eer[row] - compute_eer(scores[rep], labels[rep])) <= 1e-12  # as above, per replicate
        for p in (0.01, 0.05):
            assert abs(dcf[p][row] - compute_min_dcf(scores[rep], labels[rep], p)) <= 1e-12  # as above


def test_weights_without_targets_give_nan():
    scores, labels = _trials(50, 0, None)
    eer, dcf = weighted_verification(scores, labels, np.where(labels == 1, 0, 1))
    assert np.isnan(eer[0]) and np.isnan(dcf[0.01][0])


# ---------------------------------------------------------------- verification intervals


def test_resamples_are_multisets_of_speakers():
    # Three speakers: every resample is one of the 10 multisets of size 3, drawn with multinomial
    # probabilities; its EER must be that of the data with each speaker's trials repeated as drawn.
    rng = np.random.default_rng(0)
    scores, labels, spk = _speaker_trials(3, 4, 6, rng, d=1.0)
    expected = {}
    for counts in itertools.product(range(4), repeat=3):
        if sum(counts) == 3:
            rep = np.repeat(np.arange(len(scores)), np.asarray(counts)[spk])
            prob = math.factorial(3) / np.prod([math.factorial(c) for c in counts]) / 27
            expected[round(compute_eer(scores[rep], labels[rep]), 12)] = (
                expected.get(round(compute_eer(scores[rep], labels[rep]), 12), 0) + prob)
    res = bootstrap_verification(scores, labels, spk, n_boot=4000, seed=1, samples=True)
    got = np.round(res["eer_samples"], 12)
    assert set(got.tolist()) <= set(expected)
    for value, prob in expected.items():
        assert abs(np.mean(got == value) - prob) < 0.03


def test_interval_covers_true_eer():
    # Target N(2, 1) vs non-target N(0, 1): true EER = Phi(-1). 400 small experiments (50 speakers x 4 target
    # and 12 non-target trials); a 95 % interval must cover it in 90-99 % of them (93-95 % over six seeds of
    # this loop, 95 % with this one).
    d = 2.0
    true_eer = norm.cdf(-d / 2)
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(400):
        scores, labels, spk = _speaker_trials(50, 4, 12, rng, d=d)
        lo, hi = bootstrap_verification(scores, labels, spk, n_boot=200, seed=int(rng.integers(2**31)),
                                        p_targets=(0.05,))["eer_ci"]
        hits.append(lo <= true_eer <= hi)
    assert 0.90 <= np.mean(hits) <= 0.99


def test_speaker_level_wider_than_trial_level_with_speaker_effects():
    rng = np.random.default_rng(3)

    def widths(offset_sd: float) -> np.ndarray:
        out = []
        for rep in range(8):
            scores, labels, spk = _speaker_trials(30, 8, 32, rng, offset_sd=offset_sd)
            spk_ci = bootstrap_verification(scores, labels, spk, n_boot=300, seed=rep)
            trial_ci = bootstrap_verification(scores, labels, None, n_boot=300, seed=rep)
            assert (spk_ci["unit"], trial_ci["unit"]) == ("speaker", "trial")
            out.append((np.diff(spk_ci["eer_ci"])[0], np.diff(trial_ci["eer_ci"])[0]))
        return np.array(out)

    w = widths(1.0)
    assert (w[:, 0] > 1.2 * w[:, 1]).all() and w[:, 0].mean() > 1.5 * w[:, 1].mean()
    w = widths(0.0)  # no speaker effect: both units give about the same width
    assert 0.8 < w[:, 0].mean() / w[:, 1].mean() < 1.25


def test_paired_self_difference_is_exactly_zero():
    rng = np.random.default_rng(4)
    scores, labels, spk = _speaker_trials(20, 3, 10, rng)
    r = paired_bootstrap_verification(scores, scores, labels, spk, n_boot=300)
    assert r["diff"] == 0.0 and r["diff_ci"] == [0.0, 0.0] and not r["significant"]
    assert all(v == [0.0, 0.0] for v in r["min_dcf_diff_ci"].values())


def test_paired_difference_of_a_better_system():
    rng = np.random.default_rng(5)
    scores, labels, spk = _speaker_trials(60, 5, 20, rng, d=1.5)
    better = scores + 1.0 * labels  # targets pushed up: lower EER on every resample
    r = paired_bootstrap_verification(scores, better, labels, spk, n_boot=300)
    # float64 counts: the same arithmetic, 1e-15 is ~10 ulp of an EER near 0.1
    assert r["diff"] == pytest.approx(compute_eer(scores, labels) - compute_eer(better, labels), abs=1e-15)
    assert 0 < r["diff_ci"][0] <= r["diff_ci"][1] and r["significant"]
    # Shared resamples: the paired interval is narrower than the two single intervals combined.
    a = bootstrap_verification(scores, labels, spk, n_boot=300)["eer_ci"]
    b = bootstrap_verification(better, labels, spk, n_boot=300)["eer_ci"]
    assert np.diff(r["diff_ci"])[0] < np.hypot(np.diff(a)[0], np.diff(b)[0])


def test_reproducible_and_thread_independent():
    rng = np.random.default_rng(6)
    scores, labels, spk = _speaker_trials(50, 3, 10, rng)
    r1 = bootstrap_verification(scores, labels, spk, n_boot=500, seed=11, threads=1)
    r2 = bootstrap_verification(scores, labels, spk, n_boot=500, seed=11, threads=3)
    assert r1 == r2
    assert bootstrap_verification(scores, labels, spk, n_boot=500, seed=12)["eer_ci"] != r1["eer_ci"]


def test_degenerate_resamples_are_dropped():
    # Speaker 0 has only targets, speaker 1 only non-targets: a resample drawing one speaker twice (half of
    # them) cannot give an error rate; the others draw each speaker once, i.e. the original list.
    scores = np.array([2.0, 1.0, 0.5, 0.7, -1.0, 0.0])
    labels = np.array([1, 1, 1, 0, 0, 0])
    r = bootstrap_verification(scores, labels, [0, 0, 0, 1, 1, 1], n_boot=400, seed=0)
    assert 120 < r["n_dropped"] < 280
    assert r["eer_ci"] == [r["eer"], r["eer"]]


# ---------------------------------------------------------------- accuracy intervals


def _classes(rng: np.random.Generator, n_cls: int, per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    acc = rng.beta(4, 2, n_cls)  # population mean 2/3
    y_true = np.repeat(np.arange(n_cls), per_class)
    wrong = rng.random(len(y_true)) >= acc[y_true]
    return y_true, np.where(wrong, (y_true + 1) % n_cls, y_true), acc


def test_accuracy_identical_classes_give_a_point_interval():
    # Every class: 3 of 4 test utterances right. No resample of classes can change any figure.
    counts = np.array([200] * 5 + [50] * 6 + [5] * 7)
    y_true = np.repeat(np.arange(18), 4)
    y_pred = np.where(np.arange(len(y_true)) % 4 == 0, (y_true + 1) % 18, y_true)
    r = bootstrap_accuracy(y_true, y_pred, counts, n_boot=200)
    for k in ("top1", "mean_per_class", "many", "medium", "few"):
        assert r[k] == pytest.approx(0.75) and r[f"{k}_ci"] == pytest.approx([0.75, 0.75])  # ratios of counts
    assert r["n_few_classes"] == 7 and r["unit"] == "class"


def test_accuracy_points_match_metrics_and_empty_group_has_no_interval():
    rng = np.random.default_rng(8)
    y_true, y_pred, _ = _classes(rng, 30, 6)
    counts = np.where(np.arange(30) < 10, 300, 10)  # Many and Few only
    r = bootstrap_accuracy(y_true, y_pred, counts, n_boot=200)
    ref = shot_group_accuracy(y_true, y_pred, counts)
    for k in ("top1", "mean_per_class", "many", "few"):
        assert r[k] == ref[k] and r[f"{k}_ci"][0] <= r[k] <= r[f"{k}_ci"][1]
    assert math.isnan(r["medium"]) and r["medium_ci"] is None


def test_accuracy_interval_covers_population_mean():
    # 60 Few classes, true per-class accuracies from Beta(4, 2) (mean 2/3), 5 test utterances each.
    rng = np.random.default_rng(9)
    hits = []
    for rep in range(300):
        y_true, y_pred, _ = _classes(rng, 60, 5)
        lo, hi = bootstrap_accuracy(y_true, y_pred, np.full(60, 10), n_boot=200, seed=rep)["few_ci"]
        hits.append(lo <= 2 / 3 <= hi)
    assert 0.88 <= np.mean(hits) <= 0.99


def test_paired_accuracy():
    rng = np.random.default_rng(10)
    y_true, y_pred, _ = _classes(rng, 40, 5)
    counts = np.where(np.arange(40) < 20, 300, 10)
    same = paired_bootstrap_accuracy(y_true, y_pred, y_pred, counts, n_boot=200)
    assert all(same["diff_ci"][k] == [0.0, 0.0] for k in ("top1", "mean_per_class", "many", "few"))
    assert same["diff_ci"]["medium"] is None
    fixed = np.where(counts[y_true] == 10, y_true, y_pred)  # B gets every Few utterance right
    r = paired_bootstrap_accuracy(y_true, y_pred, fixed, counts, n_boot=200)
    assert r["diff"]["few"] == pytest.approx(r["a"]["few"] - 1.0) and r["diff_ci"]["few"][1] < 0  # one float64 step
    assert r["significant"]["few"] and r["diff_ci"]["many"] == [0.0, 0.0] and not r["significant"]["many"]


# ---------------------------------------------------------------- CLI


def _write_scores(path, enroll, test, scores, labels) -> np.ndarray:
    words = np.array(["nontarget", "target"])
    path.write_text("".join(f"{e} {t} {s:.6f} {w}\n" for e, t, s, w in zip(enroll, test, scores, words[labels])))
    return np.array([float(f"{s:.6f}") for s in scores])  # the values as the file holds them


@pytest.fixture
def score_files(tmp_path):
    rng = np.random.default_rng(12)
    scores, labels, spk = _speaker_trials(12, 3, 9, rng)
    enroll = np.array([f"spk{s:02d}-enr{i % 2}" for i, s in enumerate(spk)])  # two enrolment keys per speaker
    test = np.array([f"utt{i:04d}" for i in range(len(spk))])
    a = _write_scores(tmp_path / "a.score", enroll, test, scores, labels)
    order = rng.permutation(len(spk))  # system B: same trials, other order, other scores
    b_scores = scores[order] + 0.8 * rng.normal(size=len(spk))
    b = _write_scores(tmp_path / "b.score", enroll[order], test[order], b_scores, labels[order])
    (tmp_path / "utt2spk").write_text("".join(f"{e} {e.split('-')[0]}\n" for e in sorted(set(enroll))))
    return tmp_path, (a, labels), (b, labels[order])


def _run_json(capsys, argv: list[str]):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_eer_ci_json(score_files, capsys):
    d, (a, la), _ = score_files
    [r] = _run_json(capsys, ["eer", str(d / "a.score"), "--ci", "0.9", "--json", "--bootstrap", "300"])
    assert r["eer"] == pytest.approx(compute_eer(a, la), abs=1e-15)  # float64 counts, as above
    assert r["min_dcf"]["0.01"] == pytest.approx(compute_min_dcf(a, la, 0.01), abs=1e-15)  # as above
    assert set(r["min_dcf_ci"]) == {"0.01", "0.05"} and r["eer_ci"][0] < r["eer_ci"][1]
    assert (r["unit"], r["n_groups"], r["level"], r["n_boot"]) == ("enroll", 24, 0.9, 300)
    [s] = _run_json(capsys, ["eer", str(d / "a.score"), "--ci", "0.9", "--json", "--bootstrap", "300",
                             "--utt2spk", str(d / "utt2spk")])
    assert (s["unit"], s["n_groups"]) == ("speaker", 12)


def test_cli_utt2spk_maps_keys_and_keeps_unlisted(score_files, capsys):
    # Every listed key -> one speaker: nothing left to resample, the interval is the point; an unlisted
    # enrolment key stays its own unit.
    d, (a, la), _ = score_files
    (d / "one").write_text("".join(f"spk{s:02d}-enr{i} same\n" for s in range(12) for i in range(2)))
    [r] = _run_json(capsys, ["eer", str(d / "a.score"), "--ci", "0.95", "--json", "--utt2spk", str(d / "one")])
    assert r["n_groups"] == 1 and r["eer_ci"] == [r["eer"], r["eer"]]
    (d / "most").write_text("".join(f"spk{s:02d}-enr{i} same\n" for s in range(1, 12) for i in range(2)))
    [r] = _run_json(capsys, ["eer", str(d / "a.score"), "--ci", "0.95", "--json", "--utt2spk", str(d / "most")])
    assert r["n_groups"] == 3


def test_cli_eer_ci_table(score_files, capsys):
    d, _, _ = score_files
    assert main(["eer", str(d / "a.score"), str(d / "b.score"), "--ci", "0.95", "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "a.score" in out and "b.score" in out and "95% percentile interval" in out and "[" in out


def test_cli_paired(score_files, capsys):
    d, (a, la), (b, lb) = score_files
    r = _run_json(capsys, ["eer", str(d / "a.score"), str(d / "b.score"), "--paired", "--json", "--bootstrap", "300",
                           "--utt2spk", str(d / "utt2spk")])
    assert r["diff"] == pytest.approx(compute_eer(a, la) - compute_eer(b, lb), abs=1e-15)  # as above
    assert r["diff_ci"][0] <= r["diff_ci"][1] and set(r["min_dcf_diff_ci"]) == {"0.01", "0.05"}
    assert r["level"] == 0.95 and r["unit"] == "speaker"
    # A against itself with its rows reordered: the same trials, so exactly no difference.
    lines = (d / "a.score").read_text().splitlines()
    (d / "a_shuffled.score").write_text("\n".join(lines[::-1]) + "\n")
    r = _run_json(capsys, ["eer", str(d / "a.score"), str(d / "a_shuffled.score"), "--paired", "--ci", "0.9",
                           "--json"])
    assert r["diff_ci"] == [0.0, 0.0] and r["significant"] is False
    assert main(["eer", str(d / "a.score"), str(d / "b.score"), "--paired", "--bootstrap", "100"]) == 0
    assert "EER(A) - EER(B)" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["drop", "relabel", "rename"])
def test_cli_paired_refuses_different_trials(score_files, capsys, change):
    d, _, _ = score_files
    lines = (d / "a.score").read_text().splitlines()
    e, t, s, w = lines[5].split()
    if change == "drop":
        lines = lines[:5] + lines[6:]
    elif change == "relabel":
        lines[5] = f"{e} {t} {s} {'nontarget' if w == 'target' else 'target'}"
    else:
        lines[5] = f"{e} other {s} {w}"
    (d / "c.score").write_text("\n".join(lines) + "\n")
    assert main(["eer", str(d / "a.score"), str(d / "c.score"), "--paired"]) == 2
    err = capsys.readouterr().err
    assert "c.score" in err and "error" in err and "Traceback" not in err


def test_cli_options_need_ci(score_files, capsys):
    d, _, _ = score_files
    assert main(["eer", str(d / "a.score"), "--bootstrap", "10"]) == 2
    assert main(["eer", str(d / "a.score"), "--paired"]) == 2
    assert main(["eer", str(d / "a.score"), "--ci", "1.5"]) == 2
    assert "--paired compares two score files" in capsys.readouterr().err
