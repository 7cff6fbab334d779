"""Seen-speaker figures by shot group against a direct computation on the group's trials, the trial-count fit
of make_trials, and the seed statistics against numpy / scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from spkcausal.data.datadir import DataDir, write_kv
from spkcausal.data.trials import fit_num_trials, make_trials, target_capacity
from spkcausal.results.evidence import seed_summary, seen_verification, t_interval
from spkcausal.scoring.metrics import compute_eer, compute_min_dcf
from spkcausal.utils import DataError


def _dir(per_spk: dict[str, int], sessions: int = 1) -> DataDir:
    u2s = {f"{s}-u{i}": s for s, n in per_spk.items() for i in range(n)}
    sess = {u: f"{u2s[u]}-s{int(u.rsplit('u', 1)[1]) % sessions}" for u in u2s}
    return DataDir(wav={u: f"/x/{u}.wav" for u in u2s}, utt2spk=u2s, utt2sess=sess)


def test_fit_lowers_the_request_to_every_target_pair_at_the_same_ratio():
    data = _dir({"a": 4, "b": 4, "c": 4}, sessions=2)  # 2 x 2 cross-session pairs per speaker: 12 in all
    assert target_capacity(data) == 12
    assert fit_num_trials(data, 20, 0.5) == 20  # 10 targets fit
    assert fit_num_trials(data, 100, 0.25) == 48  # 12 targets, 36 non-targets
    t = make_trials(data, 100, seed=3, target_ratio=0.25, fit=True)
    assert int((t.labels == 1).sum()) == 12 and len(t) == 48
    with pytest.raises(DataError, match="allows only"):
        make_trials(data, 100, seed=3, target_ratio=0.25)
    with pytest.raises(DataError, match="no target pair"):
        fit_num_trials(_dir({"a": 3, "b": 3}, sessions=1), 10, 0.5)


def test_seen_verification_per_group_equals_the_metric_on_the_group_trials(tmp_path):
    """Every group's EER / minDCF is the metric on the trials whose enrolment speaker is in that group, with an
    interval around it; a speaker-level interval resamples that group's speakers only."""
    rng = np.random.default_rng(0)
    counts = {"m0": 50, "m1": 40, "d0": 15, "d1": 12, "d2": 11, "f0": 3, "f1": 2, "f2": 5}
    write_kv(tmp_path / "train" / "utt2spk", {f"{s}-t{i}": s for s, n in counts.items() for i in range(n)})
    utts = {f"{s}-h{i}": s for s in counts for i in range(6)}
    write_kv(tmp_path / "held" / "utt2spk", utts)
    keys = sorted(utts)
    lines, rows = [], []
    for _ in range(600):
        a, b = rng.choice(keys, 2, replace=False)
        lab = utts[a] == utts[b] if rng.random() < 0.7 else True
        if lab and utts[a] != utts[b]:
            b = next(k for k in keys if utts[k] == utts[a] and k != a)
        if (a, b) in {(r[0], r[1]) for r in rows}:
            continue
        score = rng.normal() + (1.5 if lab else 0) + (0.5 if counts[utts[a]] > 20 else 0) * lab
        rows.append((a, b, score, lab))
        lines.append(f"{a} {b} {score:.6f} {'target' if lab else 'nontarget'}\n")
    (tmp_path / "s.score").write_text("".join(lines))
    res = seen_verification(str(tmp_path / "s.score"), str(tmp_path / "held" / "utt2spk"), str(tmp_path / "train"),
                            many=20, few=10, n_boot=300)
    group = {s: "many" if n > 20 else "few" if n < 10 else "medium" for s, n in counts.items()}
    for g in ("many", "medium", "few"):
        sel = [r for r in rows if group[utts[r[0]]] == g]
        sc, lab = np.array([r[2] for r in sel]), np.array([r[3] for r in sel])
        rec = res["groups"][g]
        assert rec["eer"] == pytest.approx(compute_eer(sc, lab), abs=1e-12)  # float64 counts, no BLAS
        assert rec["min_dcf"]["0.01"] == pytest.approx(compute_min_dcf(sc, lab, 0.01), abs=1e-12)  # as above
        assert (rec["n_target"], rec["n_nontarget"]) == (int(lab.sum()), int((~lab).sum()))
        assert rec["n_speakers"] == len({utts[r[0]] for r in sel})
        assert rec["eer_ci"][0] <= rec["eer"] <= rec["eer_ci"][1]
    # an enrolment speaker training never saw: not a seen-speaker list
    (tmp_path / "bad.score").write_text("zz-h0 m0-h1 0.5 nontarget\nm0-h0 m0-h1 0.9 target\n")
    write_kv(tmp_path / "held2" / "utt2spk", {**utts, "zz-h0": "zz"})
    with pytest.raises(DataError, match="not training speakers"):
        seen_verification(str(tmp_path / "bad.score"), str(tmp_path / "held2" / "utt2spk"), str(tmp_path / "train"),
                          20, 10)


def test_seed_statistics_match_numpy_and_scipy():
    x = [0.12, 0.10, 0.15, 0.11]
    mean, std, n = seed_summary(x)
    assert (mean, std, n) == (pytest.approx(np.mean(x)), pytest.approx(np.std(x, ddof=1)), 4)  # float64, rel 1e-6
    m, ci = t_interval(x, 0.95)
    lo, hi = stats.t.interval(0.95, 3, loc=np.mean(x), scale=stats.sem(x))
    assert m == pytest.approx(np.mean(x)) and ci == pytest.approx([lo, hi])  # float64, rel 1e-6
    assert t_interval([0.3])[1] is None  # one seed: no interval over seeds
