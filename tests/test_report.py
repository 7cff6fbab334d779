"""The report table and results.json from known results, system names, and recorded EER / minDCF against a
brute-force computation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from spkcausal.report import (
    collect_rows,
    format_markdown,
    record_identification,
    record_verification,
    system_name,
    update_results,
    variant_label,
    write_report,
)
from spkcausal.utils import DataError


def _exp(tmp: Path, name: str, head: str, sampler: str = "natural") -> Path:
    e = tmp / name
    e.mkdir(parents=True)
    (e / "config.yaml").write_text(yaml.safe_dump({"head": {"name": head}, "sampler": {"name": sampler},
                                                   "loss": {"name": "ce"}}))
    return e


def _iden(many, medium, few, overall, thr=(30, 10)):
    return {"many": many, "medium": medium, "few": few, "overall": overall, "top1": overall,
            "thresholds": {"many": thr[0], "few": thr[1]}}


def test_system_names_follow_the_paper():
    assert system_name({"head": {"name": "aam"}}) == "Baseline (AAM)"
    assert system_name({"head": {"name": "aam"}, "sampler": {"name": "class_balanced"}}) == \
        "Re-sampling (AAM, class-balanced)"
    assert system_name({"head": {"name": "aam"}, "loss": {"name": "inverse"}}).startswith("Re-weighting")
    cn = system_name({"head": {"name": "causal_norm_aam"}})
    assert cn == "De-confound (Causal Norm AAM)"
    assert variant_label(cn, "tde") == "De-confound-TDE (Causal Norm AAM)"
    assert variant_label(cn, "tde_asnorm") == "De-confound-TDE (Causal Norm AAM) + AS-norm"
    assert variant_label("Baseline (AAM)", "mean_sub") == "Baseline (AAM) + mean subtraction"


def test_report_table_from_known_results(tmp_path):
    base = _exp(tmp_path / "exp", "aam", "aam")
    cn = _exp(tmp_path / "exp", "cnaam", "causal_norm_aam")
    update_results(base, "cosine", verification={"scores": "s/veri.txt.score", "eer": 0.0512,
                                                 "min_dcf": {"0.01": 0.4321, "0.05": 0.3}},
                   identification=_iden(0.9, 0.6, 0.125, 0.5))
    update_results(base, "mean_sub", verification={"scores": "m/veri.txt.score", "eer": 0.049,
                                                   "min_dcf": {"0.01": 0.41}})
    update_results(cn, "tde", tde_alpha=0.7, identification=_iden(0.85, 0.7, 0.3333, 0.61))
    update_results(cn, "cosine", verification={"scores": "c/veri.txt.score", "eer": 0.06, "min_dcf": {"0.01": 0.5}},
                   identification=_iden(0.91, 0.62, 0.2, 0.55))
    record_identification(base, "mean_sub", {**_iden(0.88, 0.61, float("nan"), 0.5), "tde_alpha": None})

    text, out = write_report([base, cn])
    assert out == (tmp_path / "exp").resolve()
    lines = text.splitlines()
    assert set(lines[1].replace("|", "").replace(":", "")) == {"-"}  # markdown separator row
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["System", "EER (%)", "minDCF (0.01)", "Many", "Medium", "Few", "Overall"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:6]]
    assert rows[0] == ["Baseline (AAM)", "5.12", "0.4321", "90.00", "60.00", "12.50", "50.00"]
    assert rows[1] == ["Baseline (AAM) + mean subtraction", "4.90", "0.4100", "88.00", "61.00", "-", "50.00"]
    assert rows[2] == ["De-confound (Causal Norm AAM)", "6.00", "0.5000", "91.00", "62.00", "20.00", "55.00"]
    assert rows[3] == ["De-confound-TDE (Causal Norm AAM) (alpha=0.7)", "-", "-", "85.00", "70.00", "33.33",
                       "61.00"]
    assert "Many > 30, Medium 10-30, Few < 10" in text and "on veri.txt." in text
    assert (out / "report.md").read_text() == text
    saved = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in saved["rows"]] == [r[0].split(" (alpha")[0] for r in rows]
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temp files
    # a filter and a caption
    only = format_markdown(collect_rows([base, cn], variants=["tde"]), caption="Demo.")
    assert only.count("\n|") == 2 and "Demo." in only
    # two experiments of the same system are told apart by their directory names
    twin = _exp(tmp_path / "exp", "aam_s8", "aam")
    update_results(twin, "cosine", identification=_iden(0.8, 0.5, 0.2, 0.45))
    table = format_markdown(collect_rows([base, twin], variants=["cosine"]))
    assert "| Baseline (AAM) [aam]" in table and "| Baseline (AAM) [aam_s8]" in table
    # shot-group thresholds must agree across the table
    update_results(cn, "cosine", identification=_iden(0.9, 0.6, 0.1, 0.5, thr=(100, 20)))
    with pytest.raises(DataError, match="different shot-group thresholds"):
        write_report([base, cn])
    with pytest.raises(DataError, match="no results.json"):
        write_report([tmp_path / "nothing"])


def test_record_verification_matches_a_brute_force_eer(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.random(n) < 0.4
    scores = rng.normal(size=n) + 1.5 * labels
    lines = [f"e{i} t{i} {s:.6f} {'target' if lab else 'nontarget'}\n" for i, (s, lab) in enumerate(zip(scores,
                                                                                                          labels))]
    (tmp_path / "list.score").write_text("".join(lines))
    e = _exp(tmp_path, "exp", "aam")
    data = record_verification(e, "cosine", tmp_path / "list.score")
    ver = data["rows"]["cosine"]["verification"]
    s = np.round(scores, 6)
    # brute force: Pmiss / Pfa at every threshold; the EER lies between the closest crossing pair
    thr = np.sort(np.unique(s))
    pmiss = np.array([np.mean(s[labels] < t) for t in thr])
    pfa = np.array([np.mean(s[~labels] >= t) for t in thr])
    i = int(np.argmax(pmiss >= pfa))
    assert min(pmiss[i], pfa[i - 1]) - 1e-9 <= ver["eer"] <= max(pmiss[i], pfa[i - 1]) + 1e-9
    dcf = np.min(0.01 * pmiss + 0.99 * pfa) / 0.01
    assert ver["min_dcf"]["0.01"] == pytest.approx(min(dcf, 1.0), abs=1e-9)
    assert data["rows"]["cosine"]["label"] == "Baseline (AAM)"
