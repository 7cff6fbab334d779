"""The tail-cost curve and its power figures (issue 30, items 1, 2, 4): results.power against scipy's t, a Monte Carlo
of the t-test and statsmodels; the curve's costs, intervals and MDEs on fabricated runs with
hand-chosen per-seed figures; the session halves on a fixture whose sessions are known, against the seen rows of
score files holding only each half's trials; a copy of the tree reporting as the original."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_curve import SHOTS, figure_tree, session_tree, write_scores
from scipy import stats

from spkcausal.cli import main
from spkcausal.data.datadir import DataDir
from spkcausal.report.curve import CurveOptions, CurveSpec, draw_curve, parse_spec, write_tail_curve
from spkcausal.report.results import write_report
from spkcausal.results.evidence import Intervals, seen_verification
from spkcausal.results.halves import session_halves
from spkcausal.results.power import exact_mde, half_width, mde, power_at, power_figures, seeds_for_half_width
from spkcausal.results.records import collect_rows
from spkcausal.utils import UsageError

# ---------------------------------------------------------------- power


@pytest.mark.parametrize("n", [3, 5, 10, 30])
def test_half_width_and_mde_against_scipy_and_the_power_of_the_t_test(n):
    sd = 0.013
    # float64 throughout: scipy's own interval and quantiles agree to rounding
    assert half_width(sd, n) == pytest.approx(stats.t.interval(0.95, n - 1, scale=sd / np.sqrt(n))[1], rel=1e-12)
    m = mde(sd, n)
    assert m == pytest.approx((stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / np.sqrt(n), rel=1e-12)
    # power_at (noncentral t) against a Monte Carlo of the two-sided one-sample t-test at the true mean m:
    # 200,000 tests give a standard error of at most sqrt(0.25 / 2e5) = 0.0011; 5 of them is the tolerance
    rng = np.random.default_rng(n)
    x = rng.normal(m, sd, size=(200_000, n))
    t = x.mean(1) / (x.std(1, ddof=1) / np.sqrt(n))
    mc = float((np.abs(t) > stats.t.ppf(0.975, n - 1)).mean())
    p = power_at(m, sd, n)
    assert abs(p - mc) < 0.0056
    # Bloom's shifted-t MDE approximates 80% power: a little below for few seeds (0.77 at n=3, 0.79 at n=5), within
    # 0.002 from 10 seeds on
    assert 0.76 < p < 0.801 and (n < 10 or abs(p - 0.8) < 0.002)


def test_exact_mde_has_the_power_asked():
    for n in (3, 5, 12):
        e = exact_mde(0.02, n)
        assert power_at(e, 0.02, n) == pytest.approx(0.8, abs=1e-9)  # brentq to 1e-12 of a smooth function
        assert e >= mde(0.02, n)  # Bloom's approximation errs on the small side for these n
    assert exact_mde(0.0, 5) is None and exact_mde(0.02, 1) is None


def test_power_against_statsmodels():
    import statsmodels.stats.power as sm  # the dev extra installs it (setup.py)
    for n in (3, 5, 12):
        m = mde(0.02, n)
        # both from the noncentral t in float64
        assert power_at(m, 0.02, n) == pytest.approx(sm.TTestPower().power(m / 0.02, n, 0.05), rel=1e-6)
        # statsmodels solves for the effect with its own root finder: agreement to its default tolerance
        assert exact_mde(0.02, n) / 0.02 == pytest.approx(sm.TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8),
                                                          rel=1e-5)


@pytest.mark.parametrize("sd,target", [(0.005, 0.01), (0.012, 0.01), (0.03, 0.02), (0.0, 0.01)])
def test_seeds_for_half_width_is_the_least_that_reaches_the_target(sd, target):
    n = seeds_for_half_width(sd, target)
    hw = lambda k: stats.t.ppf(0.975, k - 1) * sd / np.sqrt(k)  # noqa: E731
    assert n >= 2 and hw(n) <= target and (n == 2 or hw(n - 1) > target)
    with pytest.raises(ValueError, match="positive"):
        seeds_for_half_width(sd, 0.0)
    one = power_figures([0.01])
    assert one["sd"] is None and one["mde"] is None and one["n_seeds"] == 1


# ---------------------------------------------------------------- the curve on hand-chosen figures

COLS = ("eer", "min_dcf", "seen_eer_many", "seen_eer_medium", "seen_eer_few", "acc_few")


def _values(shift: float) -> dict:
    """Per-seed figures of the baseline, its control and a method (three seeds); the tail costs grow with shift."""
    ctrl = {"eer": [0.10, 0.105, 0.098], "min_dcf": [0.40, 0.42, 0.41], "seen_eer_many": [0.05, 0.052, 0.049],
            "seen_eer_medium": [0.08, 0.082, 0.079], "seen_eer_few": [0.15, 0.16, 0.14], "acc_few": [0.70, 0.72, 0.69]}
    d = {"eer": [0.02, 0.025, 0.015], "min_dcf": [0.05, 0.03, 0.06], "seen_eer_many": [-0.002, 0.001, 0.0],
         "seen_eer_medium": [0.01, 0.02, 0.012], "seen_eer_few": [0.10, 0.13, 0.08], "acc_few": [-0.2, -0.25, -0.15]}
    base = {c: [x + shift * y for x, y in zip(ctrl[c], d[c])] for c in COLS}
    method = {c: [b - 0.5 * (b - x) for b, x in zip(base[c], ctrl[c])] for c in COLS}
    method["eer"] = [b - g for b, g in zip(base["eer"], [0.01, 0.02, 0.004])]
    return {"aam": base, "aam_control": ctrl, "cnaam": method}


@pytest.fixture(scope="module")
def figure_trees(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("curve")
    vals = {("scratch", 10.0): _values(1.0), ("scratch", 30.0): _values(2.0), ("finetune", 30.0): _values(0.5)}
    for (setting, r), v in vals.items():
        figure_tree(root / f"{setting}{r:g}", v)
    return root, vals


def test_curve_costs_intervals_and_mde_by_hand(figure_trees):
    root, vals = figure_trees
    specs = [parse_spec(f"{s}:{r:g}={root / f'{s}{r:g}'}") for s, r in vals]
    text, curve = write_tail_curve(specs, root / "out")
    assert [(p["setting"], p["imbalance"]) for p in curve["points"]] == [("scratch", 10.0), ("scratch", 30.0),
                                                                         ("finetune", 30.0)]
    tq, tp = stats.t.ppf(0.975, 2), stats.t.ppf(0.8, 2)
    for p in curve["points"]:
        v = vals[(p["setting"], p["imbalance"])]
        assert p["baseline"] == "aam" and p["control"] == "aam_control" and p["n_runs"] == 9
        for col in COLS:
            sign = -1 if col == "acc_few" else 1  # accuracy: control - baseline, so that the tail costs > 0
            c = sign * (np.array(v["aam"][col]) - np.array(v["aam_control"][col]))
            got = p["costs"][col]
            half = tq * c.std(ddof=1) / np.sqrt(3)
            # float64 mean / t interval / MDE of three numbers: rounding only
            assert got["cost"] == pytest.approx(c.mean(), abs=1e-12)
            assert got["ci"] == pytest.approx([c.mean() - half, c.mean() + half], abs=1e-12)
            assert got["power"]["mde"] == pytest.approx((tq + tp) * c.std(ddof=1) / np.sqrt(3), abs=1e-12)
            assert got["power"]["sd"] == pytest.approx(c.std(ddof=1), abs=1e-12)
            share = p["shares"][0]["columns"][col]
            g = sign * (np.array(v["aam"][col]) - np.array(v["cnaam"][col]))
            assert share["share"] == pytest.approx(g.mean() / c.mean(), rel=1e-9)  # float64 ratio
        assert p["costs"]["acc_few"]["cost"] > 0  # the control identifies Few speakers better: a positive cost
        for col, target in (("eer", 0.01), ("seen_eer_few", 0.02)):
            sd = np.std(np.array(v["aam"][col]) - np.array(v["aam_control"][col]), ddof=1)
            need = p["costs"][col]["power"]["seeds_needed"]
            assert stats.t.ppf(0.975, need - 1) * sd / np.sqrt(need) <= target
    # the markdown: one row per point with every column, its MDE; and the precision table
    rows = [ln for ln in text.splitlines() if ln.startswith("| scratch") or ln.startswith("| finetune")]
    first = curve["points"][0]["costs"]
    eer = first["eer"]
    assert f"{100 * eer['cost']:+.2f}" in rows[0] and f"MDE {100 * eer['power']['mde']:.2f}" in rows[0]
    assert f"{first['min_dcf']['cost']:+.4f}" in rows[0] and "Precision against the issue's targets" in text
    assert (root / "out" / "tail_curve.png").stat().st_size > 0
    # the figure: one line per setting, cost in percent with the interval as drawn
    drawn = draw_curve(curve, root / "fig.png")
    x, y, lo, hi = drawn["seen_eer_few"]["scratch"][1]
    d = curve["points"][1]["costs"]["seen_eer_few"]
    assert (x, y) == pytest.approx((30.0, 100 * d["cost"])) and [lo, hi] == pytest.approx([100 * e for e in d["ci"]])
    assert [pt[0] for pt in drawn["eer"]["finetune"]] == [30.0]
    saved = json.loads((root / "out" / "tail_curve.json").read_text(), parse_constant=pytest.fail)  # strict
    assert saved["format"] == "spkcausal-tail-curve" and saved["version"] == 1
    assert str(root) not in (root / "out" / "tail_curve.json").read_text()  # every path relative to OUT


def test_report_tail_cost_table_has_every_cost_column(figure_trees):
    root, _ = figure_trees
    exps = sorted(p for p in (root / "scratch10").iterdir() if p.is_dir())
    text, _ = write_report(exps, root / "rep", baseline="aam")
    head = next(ln for ln in text.splitlines() if ln.startswith("| System") and "Held-out minDCF" in ln)
    for h in ("Held-out EER (%)", "Held-out minDCF", "Seen Many EER (%)", "Seen Medium EER (%)", "Seen Few EER (%)",
              "Few identification acc. (%)"):
        assert h in head
    tail = json.loads((root / "rep" / "report.json").read_text())["tail_cost"]
    assert set(tail["costs"]["cosine"]) == set(COLS)


def test_curve_of_a_copied_tree_equals_the_original(figure_trees, tmp_path):
    root, vals = figure_trees
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("out*", "rep", "*.png"))
    outs = []
    for base in (root, copy):
        specs = [CurveSpec(s, r, base / f"{s}{r:g}") for s, r in vals]
        write_tail_curve(specs, base / "out_cmp")
        outs.append([(base / "out_cmp" / f).read_text() for f in ("tail_curve.json", "tail_curve.md")])
    assert outs[0] == outs[1]


def test_cli_tail_curve_and_its_refusals(figure_trees, tmp_path, capsys):
    root, _ = figure_trees
    assert main(["tail-curve", "--run", f"scratch:10={root / 'scratch10'}", "--out", str(tmp_path / "o")]) == 0
    assert "Tail cost by imbalance" in capsys.readouterr().out
    shares = json.loads((tmp_path / "o" / "tail_curve.json").read_text())["points"][0]["shares"]
    assert [s["system"] for s in shares] == ["cnaam"]
    assert main(["tail-curve", "--run", f"scratch:10={root / 'scratch10'}", "--systems", "other", "--out",
                 str(tmp_path / "o1")]) == 0
    point = json.loads((tmp_path / "o1" / "tail_curve.json").read_text())["points"][0]
    assert point["shares"] == [] and point["n_runs"] == 6 and "Share of the tail cost" not in capsys.readouterr().out
    assert main(["tail-curve", "--run", f"scratch={root}", "--out", str(tmp_path / "o2")]) == 2
    assert "expected SETTING:R=DIR" in capsys.readouterr().err
    with pytest.raises(UsageError, match="must be a number > 1"):
        parse_spec("scratch:1=x")
    assert main(["tail-curve", "--run", f"a:10={root / 'scratch10'}", "--run", f"a:10={root / 'scratch30'}",
                 "--out", str(tmp_path / "o3")]) == 2
    assert "given twice" in capsys.readouterr().err
    nocontrol = tmp_path / "nc"
    shutil.copytree(root / "scratch10", nocontrol, ignore=shutil.ignore_patterns("aam_control*"))
    assert main(["tail-curve", "--run", f"s:10={nocontrol}", "--out", str(tmp_path / "o4")]) == 2
    err = capsys.readouterr().err
    assert "no balanced-control run" in err and str(nocontrol) in err
    assert not (tmp_path / "o4" / "tail_curve.md").exists()


# ---------------------------------------------------------------- session halves


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Path:
    return session_tree(tmp_path_factory.mktemp("sess"))


def test_session_halves_follow_the_known_sessions(sessions, tmp_path):
    root = sessions.parent
    rows = collect_rows(sorted(p for p in sessions.iterdir() if p.is_dir()))
    test_dir = root / "data" / "iden_test"
    sess = DataDir.load(test_dir).utt2sess
    train = DataDir.load(root / "data" / "train")
    train_sess = {s: {train.utt2sess[u] for u in us} for s, us in train.spk2utt.items()}
    for row in rows[:2]:
        h = session_halves(row, n_boot=20)
        enroll, test, scores, labels = [], [], [], []
        for ln in Path(row["seen"]["scores"]).read_text().splitlines():
            e, t, s, lab = ln.split()
            enroll.append(e), test.append(t), scores.append(float(s)), labels.append(lab == "target")
        # the fixture's rule (fixtures_curve.session_of): even-numbered test utterances come from a training
        # session of their speaker, odd ones from a new one
        known = np.array([int(t.split("-x")[1]) % 2 == 0 for t in test])
        assert all(sess[t] in train_sess[t.split("-")[0]] for t in np.array(test)[known])
        for half, sel in (("train_session", known), ("new_session", ~known)):
            assert h["halves"][half]["n_trials"] == int(sel.sum()) > 0
            # the half's figures equal the seen row of a score file holding only the half's trials
            f = write_scores(tmp_path / f"{half}.score", *(np.array(a)[sel] for a in (enroll, test, scores, labels)))
            ref = seen_verification(str(f), str(test_dir / "utt2spk"), row["seen"]["train_data"], SHOTS["many"],
                                    SHOTS["few"], (0.01,), n_boot=20)
            assert h["halves"][half]["groups"] == ref["groups"]


def test_curve_and_table_of_session_halves(sessions, tmp_path):
    specs = [CurveSpec("scratch", 10.0, sessions)]
    text, curve = write_tail_curve(specs, tmp_path / "o", CurveOptions(sessions=True), Intervals(n_boot=20))
    rows = collect_rows(sorted(p for p in sessions.iterdir() if p.is_dir()))
    halves = {(Path(r["system"]).name, r["seed"]): session_halves(r, n_boot=20) for r in rows}
    for half in ("train_session", "new_session"):
        for g in ("many", "medium", "few"):
            c = np.array([halves[("aam", k)]["halves"][half]["groups"][g]["eer"]
                          - halves[("aam_control", k)]["halves"][half]["groups"][g]["eer"] for k in range(3)])
            got = curve["points"][0]["halves"][half]["costs"][f"seen_eer_{g}"]
            assert got["cost"] == pytest.approx(c.mean(), abs=1e-12)  # float64 mean of three differences
    assert "Tail cost within session halves" in text
    # the baseline's scores are noisier on new sessions only: its cost there is the larger one
    pt = curve["points"][0]["halves"]
    assert pt["new_session"]["costs"]["seen_eer_few"]["cost"] > pt["train_session"]["costs"]["seen_eer_few"]["cost"]
    assert main(["session-halves", *map(str, sorted(p for p in sessions.iterdir() if p.is_dir())), "--out",
                 str(tmp_path / "h"), "--bootstrap", "20"]) == 0
    md = (tmp_path / "h" / "session_halves.md").read_text()
    assert "new test session" in md and "test session in training" in md and "degenerate" not in md
    saved = (tmp_path / "h" / "session_halves.json").read_text()
    assert json.loads(saved)["runs"][0]["exps"][0].startswith("..") and str(sessions) not in saved  # relative


def test_degenerate_halves_are_said_so(tmp_path, capsys):
    exp = session_tree(tmp_path, seeds=2, all_new=True)
    runs = sorted(p for p in exp.iterdir() if p.is_dir())
    assert main(["session-halves", *map(str, runs), "--out", str(tmp_path / "h"), "--bootstrap", "20"]) == 0
    md = (tmp_path / "h" / "session_halves.md").read_text()
    line = next(ln for ln in md.splitlines() if "test session in training" in ln and ln.startswith("| "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:] == ["0", "no trials", "no trials", "no trials"]
    assert "The half 'test session in training' is empty for every run: the split is degenerate" in md
    text, _ = write_tail_curve([CurveSpec("s", 10.0, exp)], tmp_path / "c", CurveOptions(sessions=True),
                               Intervals(n_boot=20))
    assert "is empty at every point: the split is degenerate" in text


def test_one_seed_accuracy_cost_takes_the_paired_interval_with_its_sign_turned(tmp_path):
    """One run each: the cost's interval is the paired bootstrap's; for accuracy (control - baseline) it must equal
    the paired interval of control minus baseline, computed the other way round."""
    from fixtures_report import TREE_SHOTS, report_tree, write_run_records

    from spkcausal.experiments.runs import RunRecord, write_run
    from spkcausal.report.tables import group_runs
    from spkcausal.report.tailcost import tail_cost
    from spkcausal.results.evidence import paired_differences
    from spkcausal.results.records import record_identification
    from spkcausal.scoring.bootstrap import bootstrap_accuracy

    exps = report_tree(tmp_path, n_boot=50)
    write_run_records(exps)
    base = next(e for e in exps if e.name == "aam")
    ctrl = base.parent / "aam_control"
    shutil.copytree(base, ctrl)
    write_run(ctrl, RunRecord(name=ctrl.name, kind="train", system="aam_control", base="aam", control=True))
    pred_file = ctrl / "predictions" / "cosine.npz"
    with np.load(pred_file) as z:
        arrays = {k: z[k] for k in z.files}
    rng = np.random.default_rng(3)
    arrays["y_pred"] = np.where(rng.random(len(arrays["y_true"])) < 0.9, arrays["y_true"], arrays["y_pred"])
    np.savez(pred_file, **arrays)
    acc = bootstrap_accuracy(arrays["y_true"], arrays["y_pred"], arrays["train_counts"], 50, many=TREE_SHOTS[0],
                             few=TREE_SHOTS[1])
    record_identification(ctrl, "cosine", {"many": acc["many"], "medium": acc["medium"], "few": acc["few"],
                                           "overall": acc["mean_per_class"], "predictions": str(pred_file),
                                           "thresholds": dict(zip(("many", "few"), TREE_SHOTS))})
    rows = collect_rows([base, ctrl], ["cosine"])
    iv = Intervals(n_boot=200)
    got = tail_cost(group_runs(rows), rows[0]["system"], iv)["costs"]["cosine"]["acc_few"]
    b, c = rows
    ref = paired_differences(c, b, iv.p_target, iv.n_boot, iv.level)["acc_few"]
    assert got["cost"] > 0 and got["cost"] == pytest.approx(ref["diff"], abs=1e-12)  # the same accuracies, float64
    # percentile intervals of negated shared resamples: exact up to the order of summation
    assert got["ci"] == pytest.approx(ref["ci"], abs=1e-12) and got["ci"][0] <= got["cost"] <= got["ci"][1]


def test_a_zero_cost_gives_strict_json_and_no_share(tmp_path):
    v = _values(1.0)
    v["aam"]["min_dcf"] = list(v["aam_control"]["min_dcf"])  # no tail cost on minDCF in any seed
    figure_tree(tmp_path / "z", v)
    text, _ = write_tail_curve([CurveSpec("s", 10.0, tmp_path / "z")], tmp_path / "o")
    saved = json.loads((tmp_path / "o" / "tail_curve.json").read_text(), parse_constant=pytest.fail)
    point = saved["points"][0]
    assert point["costs"]["min_dcf"]["cost"] == 0.0 and point["costs"]["min_dcf"]["power"]["sd"] == 0.0
    assert point["shares"][0]["columns"]["min_dcf"]["share"] is None  # 0 / 0, stored as null
    share_row = next(ln for ln in text.splitlines() if ln.startswith("| s ") and "cnaam" in ln)
    assert [c.strip() for c in share_row.strip("|").split("|")][4] == "-"


def test_the_baseline_of_a_tree_with_controls_of_several_systems_is_the_one_named():
    from spkcausal.report.curve import _baseline

    rows = [{"control_of": "/t/exp/aam"}, {"control_of": "/t/exp/aam48"}, {"system": "/t/exp/ssp"}]
    assert _baseline(rows, ("aam48",), Path("/t/exp")) == "/t/exp/aam48"
    assert _baseline(rows, ("aam", "aam_ft"), Path("/t/exp")) == "/t/exp/aam"  # names for several trees
    for names in (None, ("aam", "aam48"), ("cnaam",)):
        with pytest.raises(UsageError, match="give --baseline" if names is None else "exactly one of them"):
            _baseline(rows, names, Path("/t/exp"))
    assert _baseline(rows[:1], None, Path("/t/exp")) == "/t/exp/aam"
