"""The report table and results.json from known results, system names, and recorded EER / minDCF against a
brute-force computation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures_report import md_table

from spkcausal.report.results import (
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


def read_scores_file(path: Path) -> np.ndarray:
    """The score column of a score file."""
    return np.array([float(ln.split()[2]) for ln in Path(path).read_text().splitlines()])


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
    # the large-margin stage keeps its parent's head; a start from a pretrained extractor gets a new one
    lm = {"head": {"name": "aam"}, "train": {"init_from": "exp/aam/avg_model.pt", "init_head": True}}
    assert system_name(lm) == "Baseline (AAM) + LM"
    pre = {"head": {"name": "aam"}, "train": {"init_from": "pretrained/avg_model.pt", "init_head": False}}
    assert system_name(pre) == "Baseline (AAM) + pretrained"
    # the encoder-side methods name themselves, not "Baseline"
    proto = {"head": {"name": "aam"}, "sampler": {"name": "episodic"}, "encoder_loss": {"name": "prototypical"}}
    assert system_name(proto) == "Angular prototypical loss (AAM) + episodic batches"
    assert system_name({"head": {"name": "aam"}, "sampler": {"name": "episodic"}}) == "Episodic batches (AAM)"
    views = {"head": {"name": "aam"}, "sampler": {"name": "natural", "views": 2}, "encoder_loss": {"name": "kpositive"}}
    assert system_name(views) == "K-positive contrast (AAM) + 2 views per utterance"
    assert system_name({**views, "sampler": {"name": "natural", "views": 1}}) == "K-positive contrast (AAM)"
    tail = {"head": {"name": "aam"}, "augment": {"speed_perturb": True, "group_speed": [0.2, 0.5, 0.9]}}
    assert system_name(tail) == "Tail-aware augmentation (AAM)"
    # copies that keep their speaker are another method; uniform copies as new speakers stay the baseline's recipe
    kept = {**tail, "augment": {**tail["augment"], "speed_new_speakers": False}}
    assert system_name(kept) == "Tail-aware augmentation, speakers kept (AAM)"
    uniform = {"head": {"name": "aam"}, "augment": {"speed_perturb": True}}
    assert system_name(uniform) == "Baseline (AAM)"
    assert system_name({**uniform, "augment": {"speed_perturb": True, "speed_new_speakers": False}}) == \
        "Speed perturbation, speakers kept (AAM)"
    assert system_name({"head": {"name": "aam"}, "augment": {"speed_new_speakers": False}}) == "Baseline (AAM)"
    noise = {"head": {"name": "aam"}, "augment": {"musan": "m", "group_prob": [0.3, 0.6, 0.9]}}
    assert system_name(noise) == "Tail-aware noise augmentation (AAM)"
    noise_kept = {"head": {"name": "aam"}, "augment": {**noise["augment"], "speed_perturb": True,
                                                       "speed_new_speakers": False}}
    assert system_name(noise_kept) == "Tail-aware noise augmentation (AAM) + speed perturbation, speakers kept"
    both = {"head": {"name": "aam"}, "augment": {**noise["augment"], **tail["augment"]}}
    assert system_name(both) == "Tail-aware augmentation (AAM)"


def test_report_table_from_known_results(tmp_path):
    base = _exp(tmp_path / "exp", "aam", "aam")
    cn = _exp(tmp_path / "exp", "cnaam", "causal_norm_aam")
    rng = np.random.default_rng(1)  # score files of one list: the report pairs the systems on them
    lab = rng.random(60) < 0.4
    lists = {d: _scores(tmp_path / d / "veri.txt.score", [f"e{i % 6}" for i in range(60)],
                        [f"t{i}" for i in range(60)], rng.normal(size=60) + 2 * lab, lab) for d in "smc"}
    update_results(base, "cosine", verification={"scores": str(lists["s"]), "eer": 0.0512, "eer_ci": [0.04, 0.06],
                                                 "min_dcf": {"0.01": 0.4321, "0.05": 0.3}},
                   identification={**_iden(0.9, 0.6, 0.125, 0.5), "few_ci": [0.05, 0.2]})
    update_results(base, "mean_sub", verification={"scores": str(lists["m"]), "eer": 0.049,
                                                   "min_dcf": {"0.01": 0.41}})
    update_results(cn, "tde", tde_alpha=0.7, identification=_iden(0.85, 0.7, 0.3333, 0.61))
    update_results(cn, "cosine", verification={"scores": str(lists["c"]), "eer": 0.06, "min_dcf": {"0.01": 0.5}},
                   identification=_iden(0.91, 0.62, 0.2, 0.55))
    record_identification(base, "mean_sub", {**_iden(0.88, 0.61, float("nan"), 0.5), "tde_alpha": None})

    text, out = write_report([base, cn])
    assert out == (tmp_path / "exp").resolve()
    ver = md_table(text, "Verification: held-out")
    assert ver["Baseline (AAM)"][:2] == ["5.12 [4.0, 6.0]", "0.4321"]
    assert ver["Baseline (AAM) + mean subtraction"][:2] == ["4.90", "0.4100"]
    assert ver["De-confound (Causal Norm AAM)"][:2] == ["6.00", "0.5000"]
    assert "De-confound-TDE (Causal Norm AAM) (alpha=0.7)" not in ver  # no verification figure: no row
    iden = md_table(text, "Closed-set identification")
    assert iden["Baseline (AAM)"] == ["90.00", "60.00", "12.50 [5.0, 20.0]", "50.00"]
    assert iden["Baseline (AAM) + mean subtraction"] == ["88.00", "61.00", "-", "50.00"]
    assert iden["De-confound-TDE (Causal Norm AAM) (alpha=0.7)"] == ["85.00", "70.00", "33.33", "61.00"]
    assert "Many > 30, Medium 10-30, Few < 10" in text and "on veri.txt." in text
    assert (out / "report.md").read_text() == text
    saved = json.loads((out / "report.json").read_text())
    assert saved["baseline"] == str(base) and len(saved["rows"]) == 4
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temp files
    # a filter and a caption
    only = format_markdown(collect_rows([base, cn], variants=["tde"]), caption="Demo.")
    assert list(md_table(only, "Closed-set")) == ["De-confound-TDE (Causal Norm AAM) (alpha=0.7)"] and "Demo." in only
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


def test_ablation_and_decoupled_systems_are_named_apart():
    cn = {"head": {"name": "causal_norm_aam", "num_heads": 2, "gamma": 1 / 32}}
    assert system_name(cn) == "De-confound (Causal Norm AAM)"
    assert system_name({"head": {"name": "causal_norm_aam", "num_heads": 1, "gamma": 0.0}}) == \
        "De-confound (Causal Norm AAM, K=1, gamma=0)"
    assert system_name({"head": {"name": "causal_norm_aam", "num_heads": 4, "gamma": 1 / 32}}) == \
        "De-confound (Causal Norm AAM, K=4, gamma=1/32)"
    from spkcausal.report.results import decoupled_name

    assert decoupled_name({"method": "crt"}, {"head": {"name": "aam"}}) == "cRT (on Baseline (AAM))"
    assert decoupled_name({"method": "tau_norm", "tau": 0.6}, {"head": {"name": "aam"}}).startswith("tau-norm (tau=0.6")


def _scores(path: Path, enroll, test, scores, labels) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{e} {t} {s:.6f} {'target' if lab else 'nontarget'}\n"
                            for e, t, s, lab in zip(enroll, test, scores, labels)))
    return path


def test_seeds_give_mean_std_and_t_intervals_of_paired_differences(tmp_path):
    """Three seeds of two systems: every cell is the numpy mean / std over seeds, every difference the mean of
    the per-seed differences with its Student-t interval; --per-seed adds the seeds' own rows."""
    from scipy import stats

    rng = np.random.default_rng(4)
    eers = {"aam": [0.10, 0.12, 0.11], "cnaam": [0.08, 0.09, 0.095]}
    few = {"aam": [0.20, 0.25, 0.22], "cnaam": [0.30, 0.28, 0.33]}
    exps = []
    for name, head in (("aam", "aam"), ("cnaam", "causal_norm_aam")):
        for k in range(3):
            e = _exp(tmp_path / "exp", f"{name}_seed{k}", head)
            update_results(e, "cosine", verification={"eer": eers[name][k],
                                                      "min_dcf": {"0.01": float(rng.random())}},
                           identification=_iden(0.9, 0.5, few[name][k], 0.5))
            exps.append(e)
    rows = collect_rows(exps)
    assert {(r["system"], r["seed"]) for r in rows} == {(str(tmp_path / "exp" / n), k) for n in ("aam", "cnaam")
                                                        for k in range(3)}
    text = format_markdown(rows, per_seed=True)
    ver = md_table(text, "Verification: held-out")
    cell = ver["De-confound (Causal Norm AAM) (3 seeds)"][0]
    assert cell == f"{100 * np.mean(eers['cnaam']):.2f} ± {100 * np.std(eers['cnaam'], ddof=1):.2f}"
    assert ver["De-confound (Causal Norm AAM) [seed 1]"][0] == "9.00"  # the per-seed rows
    diff = md_table(text, "Differences")["De-confound (Causal Norm AAM) (3 seeds)"]
    d = np.array(few["cnaam"]) - np.array(few["aam"])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    want = f"{100 * d.mean():+.2f} [{100 * (d.mean() - half):+.2f}, {100 * (d.mean() + half):+.2f}]"
    few_cell = diff[1 + 7]  # vs, EER, minDCF, 3 seen EERs, Many, Medium, Few
    assert few_cell.startswith(want)
    assert few_cell.endswith("*") == bool(d.mean() - half > 0)
    assert "mean ± std over seeds" in text


def test_paired_difference_of_a_system_with_itself_is_zero_and_baseline_is_chosen(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    enroll = [f"spk{i % 15}-u{i}" for i in range(n)]
    test = [f"t{i}" for i in range(n)]
    labels = rng.random(n) < 0.3
    s_a = rng.normal(size=n) + 2 * labels
    s_b = s_a + rng.normal(scale=0.5, size=n)
    u2s = tmp_path / "utt2spk"
    u2s.write_text("".join(f"{e} {e.split('-')[0]}\n" for e in enroll))
    a, b, c = (_exp(tmp_path / "exp", name, head) for name, head in
               (("a", "aam"), ("b", "causal_norm_aam"), ("c", "aam")))
    for e, sc in ((a, s_a), (b, s_b), (c, s_a)):
        record_verification(e, "cosine", _scores(e / "list.score", enroll, test, sc, labels), utt2spk=u2s,
                            n_boot=200)
    ver = json.loads((a / "results.json").read_text())["rows"]["cosine"]["verification"]
    assert ver["eer_ci"][0] <= ver["eer"] <= ver["eer_ci"][1] and ver["n_speakers"] == 15
    text = format_markdown(collect_rows([a, b, c]), baseline="c")
    diffs = md_table(text, "Differences")
    assert list(diffs) == ["Baseline (AAM) [a]", "De-confound (Causal Norm AAM)"]  # c, the baseline, has none
    assert diffs["Baseline (AAM) [a]"][1].startswith("+0.00 [+0.00, +0.00]")  # a == c: zero, interval [0, 0]
    with pytest.raises(ValueError, match="names none of the systems"):
        format_markdown(collect_rows([a, b]), baseline="zzz")


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
    assert ver["min_dcf"]["0.01"] == pytest.approx(min(dcf, 1.0), abs=1e-9)  # float64 counts
    # the default label follows config.yaml at report time (not stored); a label the user gives is kept
    assert "label" not in data["rows"]["cosine"]
    assert collect_rows([e])[0]["label"] == "Baseline (AAM)"
    (e / "config.yaml").write_text(yaml.safe_dump({"head": {"name": "aam", "class_margins": "ldam"}}))
    assert collect_rows([e])[0]["label"] == "LDAM margins (AAM)"
    record_verification(e, "cosine", tmp_path / "list.score", label="mine")
    assert collect_rows([e])[0]["label"] == "mine"


def test_llr_rows_and_the_references_of_lm_and_qmf_rows(tmp_path):
    """Calibrated rows get Cllr / actDCF with intervals (equal to the direct formulas), listed in their own table;
    a +LM system is compared with the system it was fine-tuned from and, when it is not the baseline's, with the
    baseline's +LM run; a QMF row with the same system's calibrated row."""
    from spkcausal.scoring.calibration import act_dcf, cllr, min_cllr

    rng = np.random.default_rng(5)
    n = 400
    enroll = [f"spk{i % 20}-u{i}" for i in range(n)]
    test = [f"t{i}" for i in range(n)]
    labels = rng.random(n) < 0.3
    u2s = tmp_path / "utt2spk"
    u2s.write_text("".join(f"{e} {e.split('-')[0]}\n" for e in enroll))
    exps = {}
    for name, head, parent in (("aam", "aam", None), ("cnaam", "causal_norm_aam", None),
                               ("aam_lm", "aam", "aam"), ("cnaam_lm", "causal_norm_aam", "cnaam")):
        e = _exp(tmp_path / "exp", name, head)
        if parent:
            cfg = yaml.safe_load((e / "config.yaml").read_text())
            cfg["train"] = {"init_from": str(tmp_path / "exp" / parent / "avg_model.pt"), "init_head": True}
            (e / "config.yaml").write_text(yaml.safe_dump(cfg))
        for variant in ("cosine", "asnorm_cal", "asnorm_qmf"):
            s = rng.normal(size=n) * 2 + 4 * labels - 3
            record_verification(e, variant, _scores(e / variant / "list.score", enroll, test, s, labels),
                                utt2spk=u2s, n_boot=100)
        exps[name] = e
    ver = json.loads((exps["aam"] / "results.json").read_text())["rows"]
    assert "cllr" not in ver["cosine"]["verification"]  # raw cosine scores are no LLRs
    cal = ver["asnorm_cal"]["verification"]
    s = read_scores_file(exps["aam"] / "asnorm_cal" / "list.score")
    # float64 both sides
    assert cal["cllr"] == pytest.approx(cllr(s, labels)) and cal["min_cllr"] == pytest.approx(min_cllr(s, labels))
    assert cal["act_dcf"]["0.01"] == pytest.approx(act_dcf(s, labels, 0.01))  # float64 both sides
    assert cal["cllr_ci"][0] <= cal["cllr"] <= cal["cllr_ci"][1]

    text = format_markdown(collect_rows(list(exps.values())), n_boot=100)
    llr_table = md_table(text, "Calibrated scores")
    assert set(llr_table) == {f"{sys}{lm} + AS-norm + {k}" for lm in ("", " + LM") for k in ("calibration", "QMF")
                              for sys in ("Baseline (AAM)", "De-confound (Causal Norm AAM)")}
    assert llr_table["Baseline (AAM) + AS-norm + calibration"][0].startswith(f"{cal['cllr']:.4f} [")
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("**Differences"))
    pairs = [tuple(c.strip() for c in ln.strip("|").split("|")[:2]) for ln in lines[i + 4:] if ln.startswith("| ")]
    assert ("Baseline (AAM) + LM", "Baseline (AAM)") in pairs  # what LM adds
    assert ("De-confound (Causal Norm AAM) + LM", "De-confound (Causal Norm AAM)") in pairs
    assert ("De-confound (Causal Norm AAM) + LM", "Baseline (AAM) + LM") in pairs  # de-confounding after LM
    assert ("De-confound (Causal Norm AAM) + LM", "Baseline (AAM)") not in pairs
    assert ("Baseline (AAM) + AS-norm + QMF", "Baseline (AAM) + AS-norm + calibration") in pairs
    assert ("De-confound (Causal Norm AAM) + AS-norm + QMF", "Baseline (AAM) + AS-norm + QMF") in pairs


def test_system_names_of_the_long_tail_methods():
    aam = {"name": "aam"}
    assert system_name({"head": {**aam, "class_margins": "ldam"}}) == "LDAM margins (AAM)"
    assert system_name({"head": {**aam, "subcenters": 3}}) == "Sub-centres K=3 (AAM)"
    assert system_name({"head": {**aam, "subcenters": 1}}) == "Baseline (AAM)"
    assert system_name({"head": {**aam, "feature_transfer": {"head_share": 0.2}}}) == "Feature transfer (AAM)"
    assert system_name({"head": {**aam, "feature_transfer": {"enabled": False}}}) == "Baseline (AAM)"
    assert system_name({"head": aam, "loss": {"name": "balanced_softmax"}}) == "Balanced Softmax (AAM)"
    assert system_name({"head": aam, "loss": {"name": "ce", "logit_adjust": 0.5}}) == \
        "Logit adjustment tau=0.5 (AAM)"
    assert system_name({"head": aam, "loss": {"name": "ce", "drw_epoch": 12}}) == "DRW from epoch 12 (AAM)"
    assert system_name({"head": aam, "sampler": {"name": "progressive"}}) == "Progressive sampling (AAM)"
    # composed with another method or with De-confound, every part is named once
    assert system_name({"head": {**aam, "class_margins": "ldam"}, "loss": {"name": "ce", "drw_epoch": 12}}) == \
        "LDAM margins (AAM) + DRW from epoch 12"
    assert system_name({"head": {"name": "causal_norm_aam", "class_margins": "ldam"},
                        "loss": {"name": "balanced_softmax"}}) == \
        "De-confound (Causal Norm AAM) + LDAM margins + Balanced Softmax"
    assert system_name({"head": aam, "loss": {"name": "focal", "drw_epoch": 12}}) == \
        "Focal loss (AAM) + DRW from epoch 12"
