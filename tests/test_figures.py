"""The report's figures and summary.md: written beside report.md and linked from it, and what they draw is
what the tables print (read back from the artists); the DET plot draws every marker its legend lists."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from fixtures_report import md_table

from spkcausal.report.results import collect_rows, record_seen, record_verification, update_results, write_report


def _exp(root: Path, name: str, head: str) -> Path:
    e = root / name
    e.mkdir(parents=True)
    (e / "config.yaml").write_text(yaml.safe_dump({"head": {"name": head}, "sampler": {"name": "natural"},
                                                   "loss": {"name": "ce"}}))
    return e


def _score_file(path: Path, enroll, test, scores, labels) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{e} {t} {s:.6f} {'target' if lab else 'nontarget'}\n"
                            for e, t, s, lab in zip(enroll, test, scores, labels)))
    return path


def _cell_numbers(cell: str) -> list[float]:
    """'17.63 [15.1, 20.3]' / '+1.20 [-0.3, +2.1] *' / '9.00 ± 1.00' -> the numbers in it."""
    return [float(x) for x in cell.replace("[", " ").replace("]", " ").replace(",", " ").replace("±", " ")
            .replace("*", " ").split()]


def _one_run_report(tmp_path: Path) -> tuple[Path, dict]:
    """Two systems (one with a TDE row) scored on the same held-out and seen-speaker trials."""
    rng = np.random.default_rng(3)
    n_spk, n = 24, 1200
    train = tmp_path / "train"
    train.mkdir()
    counts = {f"s{i:02d}": c for i, c in enumerate(rng.choice([3, 5, 15, 20, 40, 50], n_spk))}
    (train / "utt2spk").write_text("".join(f"{s}-u{k} {s}\n" for s, c in sorted(counts.items()) for k in range(c)))
    spk = [f"s{i % n_spk:02d}" for i in range(n)]
    enroll = [f"{s}-e{i}" for i, s in enumerate(spk)]
    test = [f"t{i}" for i in range(n)]
    u2s = tmp_path / "utt2spk"
    u2s.write_text("".join(f"{e} {s}\n" for e, s in zip(enroll, spk)))
    labels = rng.random(n) < 0.3
    exp = tmp_path / "exp"
    for name, head, variants in (("aam", "aam", ("cosine",)), ("cnaam", "causal_norm_aam", ("cosine", "tde"))):
        e = _exp(exp, name, head)
        for v in variants:
            for kind in ("heldout", "seen"):
                s = rng.normal(size=n) + (1.6 if name == "aam" else 2.0) * labels
                f = _score_file(e / v / f"{kind}.score", enroll, test, s, labels)
                if kind == "heldout":
                    record_verification(e, v, f, utt2spk=u2s, n_boot=100, tde_alpha=0.5 if v == "tde" else None)
                else:
                    record_seen(e, v, f, u2s, train, 30, 10, n_boot=100)
    text, out = write_report([exp / "aam", exp / "cnaam"], n_boot=100)
    return out, {"text": text}


def test_figures_are_written_linked_and_draw_the_tables_numbers(tmp_path, monkeypatch):
    import spkcausal.report.results as report_results

    drawn = {}
    real = report_results.write_figures

    def spy(*a, **k):
        drawn.update(real(*a, **k))
        return drawn

    monkeypatch.setattr(report_results, "write_figures", spy)  # where write_report looks it up
    out, res = _one_run_report(tmp_path)
    report = (out / "report.md").read_text()
    assert set(drawn) == {"eer_groups", "differences"}  # one seed: no seed-spread figure
    for name in ("fig_eer_groups.png", "fig_differences.png"):
        assert (out / name).stat().st_size > 10_000 and f"({name})" in report
        assert f"({name})" in (out / "summary.md").read_text()
    assert not (out / "fig_seeds.png").exists() and "(summary.md)" in report

    ver = md_table(report, "Verification: held-out")
    cols = ["eer", "min_dcf", "seen_eer_many", "seen_eer_medium", "seen_eer_few"]
    eer = drawn["eer_groups"]["drawn"]
    assert set(eer["eer"]) == set(ver) == {"Baseline (AAM)", "De-confound (Causal Norm AAM)",
                                           "De-confound-TDE (Causal Norm AAM) (alpha=0.5)"}
    for col, per_label in eer.items():
        for label, d in per_label.items():
            v, lo, hi = _cell_numbers(ver[label][cols.index(col)])
            assert round(d["value"], 2) == v and round(d["lo"], 1) == lo and round(d["hi"], 1) == hi

    diffs = md_table(report, "Differences")
    dcols = ["eer", "min_dcf", "seen_eer_many", "seen_eer_medium", "seen_eer_few"]
    forest = drawn["differences"]["drawn"]
    assert set(forest["eer"]) == {"De-confound (Causal Norm AAM)\nvs Baseline (AAM)",
                                  "De-confound-TDE (Causal Norm AAM) (alpha=0.5)\nvs De-confound (Causal Norm AAM)"}
    for col, per_label in forest.items():
        for label, d in per_label.items():
            row = diffs[label.split("\n")[0]]
            assert row[0] == label.split("\nvs ")[1]
            v, lo, hi = _cell_numbers(row[1 + dcols.index(col)])
            assert (round(d["value"], 2), round(d["lo"], 2), round(d["hi"], 2)) == (v, lo, hi)

    summary = md_table((out / "summary.md").read_text(), "Headline")
    assert list(summary) == list(ver)  # the plain and TDE rows, in the report's order
    assert summary["De-confound (Causal Norm AAM)"][0] == ver["De-confound (Causal Norm AAM)"][0]
    assert summary["De-confound (Causal Norm AAM)"][3] == "Baseline (AAM)"
    assert summary["De-confound (Causal Norm AAM)"][4] == diffs["De-confound (Causal Norm AAM)"][1]


def test_seed_figure_draws_mean_std_and_every_seed(tmp_path):
    from spkcausal.report.figures import write_figures
    from spkcausal.report.tables import build_tables
    from spkcausal.results.evidence import DEFAULT_INTERVALS

    eers = {"aam": [0.10, 0.12, 0.11], "cnaam": [0.08, 0.09, 0.095]}
    exps = []
    for name, head in (("aam", "aam"), ("cnaam", "causal_norm_aam")):
        for k in range(3):
            e = _exp(tmp_path / "exp", f"{name}_seed{k}", head)
            update_results(e, "cosine", verification={"eer": eers[name][k],
                                                      "min_dcf": {"0.01": 0.5}},
                           identification={"many": 0.9, "medium": 0.5, "few": 0.1 * (k + 1), "overall": 0.5,
                                           "thresholds": {"many": 30, "few": 10}})
            exps.append(e)
    rows = collect_rows(exps)
    _, summary = build_tables(rows)
    drawn = write_figures(rows, summary, tmp_path, DEFAULT_INTERVALS)
    assert set(drawn) == {"eer_groups", "differences", "seeds"} and (tmp_path / "fig_seeds.png").is_file()
    d = drawn["seeds"]["drawn"]["eer_groups"]["eer"]["De-confound (Causal Norm AAM) (3 seeds)"]
    m, s = 100 * np.mean(eers["cnaam"]), 100 * np.std(eers["cnaam"], ddof=1)
    assert np.allclose([d["value"], d["lo"], d["hi"]], [m, m - s, m + s])  # float64 from the same numbers
    few = drawn["seeds"]["drawn"]["differences"]["acc_few"]
    (only,) = few.values()
    assert np.isclose(only["value"], 0.0)  # the same Few accuracy per seed in both systems


def test_det_markers_lie_inside_the_axes(tmp_path):
    from spkcausal.scoring.metrics import plot_det

    rng = np.random.default_rng(1)
    files = []
    for k, sep in enumerate((1.0, 3.0)):  # a weak and a good system
        lab = rng.random(3000) < 0.1
        s = rng.normal(size=3000) + sep * lab
        files.append(str(_score_file(tmp_path / f"{k}.score", ["e"] * 3000, [f"t{i}" for i in range(3000)], s,
                                     lab)))
    info = plot_det(files, str(tmp_path / "det.png"), (0.01, 0.05), ["A", "B"])
    (x0, x1), (y0, y1) = info["xlim"], info["ylim"]
    assert len(info["legend"]) == len(info["points"]) == 2  # B's two minDCF points
    for label, x, y in info["points"]:
        assert x0 <= x <= x1 and y0 <= y <= y1, label
    assert {lab for lab, _, _ in info["points"]} == set(info["legend"])
    # A's minimum DCF is "reject everything" (Pfa 0, Pmiss 1): off any probit axis, so named in A's entry
    assert info["curves"][0].startswith("A (EER") and "off-axis: minDCF(0.01) 1.000" in info["curves"][0]
    assert "off-axis" not in info["curves"][1]
