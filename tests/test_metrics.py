"""EER / minDCF / DET against independent computations, identification metrics, fast score-file reading."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_curve

from spkcausal.cli import main
from spkcausal.data import fastread, trialio
from spkcausal.data.trialio import read_scores
from spkcausal.scoring.metrics import (
    actual_dcf,
    compute_eer,
    compute_min_dcf,
    confusion_summary,
    det_curve,
    eer_with_threshold,
    enroll_train_counts,
    min_dcf_with_threshold,
    shot_group_accuracy,
    shot_group_verification,
    verification_summary,
)
from spkcausal.utils import DataError


def _crossing(pfa: np.ndarray, pmiss: np.ndarray) -> float:
    """EER from operating points ordered by increasing Pmiss - Pfa: linear interpolation at the sign change."""
    d = pmiss - pfa
    i = int(np.flatnonzero(d >= 0)[0])
    w = d[i - 1] / (d[i - 1] - d[i])
    return float(pmiss[i - 1] + w * (pmiss[i] - pmiss[i - 1]))


def _brute(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """O(N^2): Pmiss / Pfa at every distinct score and at +inf, by direct comparison."""
    thr = np.append(np.unique(scores), np.inf)
    tar, non = scores[labels == 1], scores[labels == 0]
    pmiss = np.array([np.sum(tar < t) for t in thr]) / len(tar)
    pfa = np.array([np.sum(non >= t) for t in thr]) / len(non)
    return pfa, pmiss


def _data(n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int8)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + 1.5 * labels
    if ties:
        scores = np.round(scores * 2) / 2  # a handful of distinct values, each shared by many trials
    return scores, labels


@pytest.mark.parametrize("seed", range(5))
def test_eer_matches_sklearn_roc_crossing(seed):
    scores, labels = _data(2000, seed, ties=False)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    # roc_curve runs from the highest threshold down: reverse it to increasing Pmiss - Pfa.
    # float64 counts, no BLAS: a few ulp
    assert compute_eer(scores, labels) == pytest.approx(_crossing(fpr[::-1], (1 - tpr)[::-1]), abs=1e-12)
    c = det_curve(scores, labels)
    # rates are ratios of counts
    assert np.allclose(np.sort(c.pfa), np.sort(fpr)) and np.allclose(np.sort(c.pmiss), np.sort(1 - tpr))
    for p in (0.01, 0.05):
        want = np.min(p * (1 - tpr) + (1 - p) * fpr) / min(p, 1 - p)
        assert compute_min_dcf(scores, labels, p) == pytest.approx(want, abs=1e-12)  # float64 counts


@pytest.mark.parametrize("seed", range(20))
def test_brute_force_sweep_with_heavy_ties(seed):
    scores, labels = _data(60 + seed * 7, seed, ties=True)
    assert len(np.unique(scores)) < len(scores) / 4
    pfa, pmiss = _brute(scores, labels)
    assert compute_eer(scores, labels) == pytest.approx(_crossing(pfa, pmiss), abs=1e-12)  # float64 counts
    for p, cm, cf in ((0.01, 1, 1), (0.05, 1, 1), (0.3, 2, 1), (0.5, 1, 3)):
        want = np.min(cm * p * pmiss + cf * (1 - p) * pfa) / min(cm * p, cf * (1 - p))
        assert compute_min_dcf(scores, labels, p, cm, cf) == pytest.approx(want, abs=1e-12)  # float64 counts


def test_tied_scores_permutation_invariant():
    scores, labels = _data(500, 7, ties=True)
    ref = verification_summary(scores, labels)
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = rng.permutation(len(scores))
        assert verification_summary(scores[perm], labels[perm]) == ref
    # Reordering only within tie groups (targets first vs last) must not matter either.
    for key in (labels, -labels):
        order = np.lexsort((key, scores))
        assert verification_summary(scores[order], labels[order]) == ref


def test_min_dcf_is_normalised_not_speechbrain_form():
    scores, labels = _data(3000, 3, ties=False)
    pfa, pmiss = _brute(scores, labels)
    p = 0.05
    unnormalised = np.min(p * pmiss + (1 - p) * pfa)  # SpeechBrain's quantity
    ours = compute_min_dcf(scores, labels, p)
    assert ours == pytest.approx(unnormalised / 0.05)  # float64, one division
    assert ours > 10 * unnormalised  # off by the factor 1/min(p, 1-p) = 20 if unnormalised
    # An uninformative system costs exactly 1 when normalised (reject everything), p when not.
    flat = np.zeros(100)
    assert compute_min_dcf(flat, labels[:100], p) == pytest.approx(1.0)  # a flat score: min DCF is exactly 1
    assert compute_min_dcf(scores, labels, 0.05) <= 1.0


def test_min_dcf_against_speechbrain_times_norm():
    sb = pytest.importorskip("speechbrain.utils.metric_stats")
    torch = pytest.importorskip("torch")
    scores, labels = _data(800, 11, ties=False)
    pos = torch.tensor(scores[labels == 1])
    neg = torch.tensor(scores[labels == 0])
    for p in (0.01, 0.05):
        sb_dcf, _ = sb.minDCF(pos, neg, c_miss=1.0, c_fa=1.0, p_target=p)
        # SpeechBrain accumulates in float32: its counts are exact integers, its divisions add <= 3 ulp (3.6e-7)
        assert compute_min_dcf(scores, labels, p) * min(p, 1 - p) == pytest.approx(float(sb_dcf), rel=1e-6)


def test_thresholds_and_actual_dcf():
    scores, labels = _data(4000, 5, ties=False)
    eer, thr = eer_with_threshold(scores, labels)
    pmiss = np.mean(scores[labels == 1] < thr)
    pfa = np.mean(scores[labels == 0] >= thr)
    assert abs(pmiss - eer) < 2e-3 and abs(pfa - eer) < 2e-3  # discreteness: 1 of ~1200 targets is 8e-4
    for p in (0.01, 0.05):
        v, t = min_dcf_with_threshold(scores, labels, p)
        assert actual_dcf(scores, labels, t, p) == pytest.approx(v, abs=1e-12)  # float64 counts
        assert actual_dcf(scores, labels, t + 0.3, p) >= v
    perfect = np.array([0.1, 0.2, 0.8, 0.9])
    assert compute_eer(perfect, [0, 0, 1, 1]) == 0.0
    assert compute_min_dcf(perfect, [0, 0, 1, 1], 0.01) == 0.0
    assert compute_eer(perfect, [1, 1, 0, 0]) == 1.0


def test_metric_input_errors():
    with pytest.raises(ValueError, match="targets and non-targets"):
        compute_eer([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        compute_eer([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError, match="labels"):
        compute_eer([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="p_target"):
        compute_min_dcf([0.1, 0.2], [1, 0], 1.5)


# ---------------------------------------------------------------- identification by shot group


def test_shot_group_accuracy_against_sklearn():
    rng = np.random.default_rng(0)
    counts = np.array([500, 150, 101, 100, 50, 20, 19, 5, 1, 300])  # many: 0,1,2,9; medium: 3,4,5; few: 6,7,8
    y = rng.integers(0, 10, 400)
    pred = np.where(rng.random(400) < 0.6, y, rng.integers(0, 10, 400))
    res = shot_group_accuracy(y, pred, counts)
    cm = confusion_matrix(y, pred, labels=np.arange(10))
    per_class = np.diag(cm) / cm.sum(axis=1)
    assert res["top1"] == pytest.approx(accuracy_score(y, pred))  # ratios of counts
    assert res["mean_per_class"] == pytest.approx(balanced_accuracy_score(y, pred))  # ratios of counts
    assert res["many"] == pytest.approx(per_class[[0, 1, 2, 9]].mean())  # ratios of counts
    assert res["medium"] == pytest.approx(per_class[[3, 4, 5]].mean())  # ratios of counts
    assert res["few"] == pytest.approx(per_class[[6, 7, 8]].mean())  # ratios of counts
    assert (res["n_many_classes"], res["n_medium_classes"], res["n_few_classes"]) == (4, 3, 3)
    alt = shot_group_accuracy(y, pred, counts, many=200, few=60)  # thresholds are configurable
    assert alt["many"] == pytest.approx(per_class[[0, 9]].mean())  # ratios of counts
    assert alt["few"] == pytest.approx(per_class[[4, 5, 6, 7, 8]].mean())  # ratios of counts


def test_confusion_summary_counts_tail_taken_for_head():
    counts = np.array([200, 200, 50, 5, 5])  # many 0,1; medium 2; few 3,4
    y = np.array([3, 3, 3, 3, 4, 0, 0, 2])
    pred = np.array([0, 1, 3, 2, 4, 0, 3, 2])
    res = confusion_summary(y, pred, counts)
    assert res["few"] == {"n": 5, "correct": 0.4, "many": 0.4, "medium": 0.2, "few": 0.0}
    assert res["many"]["few"] == 0.5 and res["many"]["correct"] == 0.5
    assert res["medium"]["correct"] == 1.0


def test_shot_group_verification_equals_subset_metrics():
    scores, labels = _data(900, 2, ties=False)
    counts = np.random.default_rng(1).choice([5, 50, 500], size=900)
    res = shot_group_verification(scores, labels, counts)
    for g, c in (("few", 5), ("medium", 50), ("many", 500)):
        sel = counts == c
        # float64 counts, the same code on a subset
        assert res[g]["eer"] == pytest.approx(compute_eer(scores[sel], labels[sel]))
        assert res[g]["min_dcf"][0.01] == pytest.approx(compute_min_dcf(scores[sel], labels[sel], 0.01))  # as the EER
    res = shot_group_verification(scores, labels, np.full(900, 500))
    assert res["few"] is None and res["medium"] is None
    unseen = np.where(np.arange(900) % 2 == 0, -1, counts)  # unseen enrolled speakers are left out
    res = shot_group_verification(scores, labels, unseen)
    sel = (unseen == 5)
    assert res["few"]["eer"] == pytest.approx(compute_eer(scores[sel], labels[sel]))  # as above


def test_enroll_train_counts():
    got = enroll_train_counts(["u1", "u2", "spkB", "u9"], ["spkA", "spkB"], [150, 7],
                              {"u1": "spkA", "u2": "spkB", "u9": "spkZ"})
    assert got.tolist() == [150, 7, 7, -1]


# ---------------------------------------------------------------- score files and CLI


def _write(p, lines):
    p.write_text("".join(line + "\n" for line in lines))
    return p


def _read_lines(path):
    """Line-by-line reference reader: (line, enroll, test, score, label) of every non-blank line."""
    words = {"target": 1, "nontarget": 0, "1": 1, "0": 0}
    rows = []
    for n, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if line.split():  # bytes.split: ASCII whitespace only, as in the file format
            e, t, sc, lab = (tok.decode() for tok in line.split())
            rows.append((n, e, t, float(sc), words[lab]))
    return rows


def test_read_scores_agrees_with_a_line_by_line_reader(tmp_path):
    scores, labels = _data(300, 4, ties=True)
    words = ["nontarget", "target", "0", "1"]
    lines = [f"e{i % 7}\tt/{i}-x_y  {s:.6g} {words[(i % 2) * 2 + lab] if i % 3 else words[lab]}"
             for i, (s, lab) in enumerate(zip(scores, labels))]
    lines.insert(5, "")  # blank lines are skipped, line numbers still count them
    lines[9] = "é\u00a0x t9 0.25 target"  # a no-break space inside a key is part of the key
    p = _write(tmp_path / "s.txt", lines)
    got = read_scores(p, keys=True, need_labels=True)
    ref = _read_lines(p)
    assert got.line_no.tolist() == [r[0] for r in ref] and got.enroll.tolist() == [r[1] for r in ref]
    assert got.test.tolist() == [r[2] for r in ref] and got.scores.tolist() == [r[3] for r in ref]
    assert got.labels.tolist() == [r[4] for r in ref]
    fast = read_scores(p)  # without keys: the same numbers
    assert fast.enroll is None and np.array_equal(fast.scores, got.scores) and np.array_equal(fast.labels, got.labels)
    p.write_text(p.read_text().rstrip("\n"))  # no final newline
    assert np.array_equal(read_scores(p).scores, got.scores)


@pytest.mark.parametrize("bad,line,match", [
    ("a b 0.5", 3, "3 columns where"),
    ("a b 0.5 target extra", 3, "5 columns where"),
    ("a b nan target", 3, "not a finite number"),
    ("a b inf target", 3, "not a finite number"),
    ("a b 1e999 target", 3, "not a finite number"),
    ("a b 0.5x target", 3, "not a finite number"),
    ("a b 0.5 tar", 3, "label 'tar'"),
    ("a b 0.5 targets", 3, "label 'targets'"),
    ("a b 0.5 2", 3, "label '2'"),
    ("e1 t1 0.7 nontarget", 3, r"duplicate trial e1 t1 \(first seen at line 1\)"),
])
def test_score_file_errors_name_line(tmp_path, bad, line, match):
    p = _write(tmp_path / "s.txt", ["e1 t1 0.5 target", "e1 t2 0.1 nontarget", bad, "e2 t1 0.2 nontarget"])
    with pytest.raises(DataError, match=match) as ei:
        read_scores(p)
    assert ei.value.line == line and ei.value.path == str(p)


@pytest.mark.parametrize("block", [16, 50, 1 << 20])
def test_block_reader_across_block_boundaries(tmp_path, monkeypatch, block):
    monkeypatch.setattr(fastread, "BLOCK_BYTES", block)
    scores, labels = _data(200, 6, ties=True)
    lines = [f"enrol{i % 5} {'t' * (i % 40)}{i} {s:.4f} {'target' if lab else 'nontarget'}"
             for i, (s, lab) in enumerate(zip(scores, labels))]
    lines[17:17] = ["", "   "]  # blank lines shift later line numbers
    p = _write(tmp_path / "s.txt", lines)
    got = read_scores(p, keys=True)
    # the file keeps 4 decimals here
    assert np.array_equal(got.labels, labels) and np.allclose(got.scores, np.round(scores, 4))
    assert got.test.tolist() == [f"{'t' * (i % 40)}{i}" for i in range(200)]
    assert got.line_no.tolist() == list(range(1, 18)) + list(range(20, 203))
    bad = lines[:150] + [lines[3]] + lines[150:]  # duplicate of data line 4, far from it
    with pytest.raises(DataError, match="first seen at line 4") as ei:
        read_scores(_write(tmp_path / "d.txt", bad))
    assert ei.value.line == 151
    bad = lines[:120] + ["e x 0.1 target extra"] + lines[120:]
    with pytest.raises(DataError, match="5 columns") as ei:
        read_scores(_write(tmp_path / "c.txt", bad))
    assert ei.value.line == 121
    bad = lines[:130] + ["e x 0,5 target"] + lines[130:]
    with pytest.raises(DataError, match="'0,5' is not a finite number") as ei:
        read_scores(_write(tmp_path / "f.txt", bad))
    assert ei.value.line == 131
    raw = ("\n".join(lines[:100]) + "\ne \xff 0.1 target\n").encode("latin-1")
    (tmp_path / "u.txt").write_bytes(raw)
    at = raw.index(b"\xff")
    with pytest.raises(DataError, match=f"not UTF-8.*at byte {at}"):
        read_scores(tmp_path / "u.txt")


def test_hash_collisions_are_rechecked_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(trialio, "pair_hash", lambda a, starts, ends: np.zeros(len(starts), dtype=np.uint64))
    p = _write(tmp_path / "s.txt", ["a b 0.1 target", "a c 0.2 nontarget", "b a 0.3 nontarget"])
    assert read_scores(p).scores.tolist() == [0.1, 0.2, 0.3]  # every hash equal, no real duplicate
    p = _write(tmp_path / "d.txt", ["a b 0.1 target", "a c 0.2 nontarget", "a c 0.3 nontarget"])
    with pytest.raises(DataError, match="duplicate trial a c") as ei:
        read_scores(p)
    assert ei.value.line == 3
    with pytest.raises(DataError, match="file is empty"):
        read_scores(_write(tmp_path / "e.txt", ["", ""]))


def test_score_file_without_labels(tmp_path):
    p = _write(tmp_path / "s.txt", ["e1 t1 0.5", "e1 t2 0.1"])
    with pytest.raises(DataError, match="no label column"):
        read_scores(p, need_labels=True)
    assert read_scores(p).labels.tolist() == [-1, -1]


def test_eer_cli_table_and_json(tmp_path, capsys):
    scores, labels = _data(500, 9, ties=False)
    files = []
    for k in range(2):
        s = scores + k * labels
        files.append(_write(tmp_path / f"sys{k}.score", [f"e t{i} {v:.8f} {'target' if lab else 'nontarget'}"
                                                         for i, (v, lab) in enumerate(zip(s, labels))]))
    assert main(["eer", *map(str, files), "--json", "--p-target", "0.01", "0.05"]) == 0
    res = json.loads(capsys.readouterr().out)
    for k, r in enumerate(res):
        s = np.round(scores + k * labels, 8)
        assert r["eer"] == pytest.approx(compute_eer(s, labels))  # float64 counts
        assert r["min_dcf"]["0.05"] == pytest.approx(compute_min_dcf(s, labels, 0.05))  # float64 counts
    assert main(["eer", str(files[0])]) == 0
    table = capsys.readouterr().out
    assert f"{res[0]['eer'] * 100:.3f}" in table and "minDCF(0.01)" in table


def test_plot_det(tmp_path):
    import matplotlib.image as mpimg

    scores, labels = _data(5000, 1, ties=False)
    p = _write(tmp_path / "a.score", [f"e t{i} {v:.6f} {lab}" for i, (v, lab) in enumerate(zip(scores, labels))])
    out = tmp_path / "det.png"
    assert main(["plot-det", str(p), str(p), "--labels", "A", "B", "--out", str(out)]) == 0
    assert mpimg.imread(out).shape[0] > 100
    bad = _write(tmp_path / "bad.score", ["e t 0.5 target", "e u nan nontarget"])
    out2 = tmp_path / "det2.png"
    assert main(["plot-det", str(bad), "--out", str(out2)]) == 2
    assert not out2.exists() and not list(tmp_path.glob(".det2*"))
