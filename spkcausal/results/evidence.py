"""The report's figures with their uncertainty: EER / minDCF with speaker-level bootstrap intervals (held-out
and seen-speaker lists, the latter by shot group of the enrolment speaker), paired differences between two
systems on the same trials or test utterances, and mean / std / t-intervals over training seeds.

Resampling units: a held-out list resamples enrolment speakers (the eval dir's utt2spk; without one, the
enrolment keys), a seen-speaker list the enrolment (training) speaker, identification the test speakers
within each shot group (`spkcausal.scoring.bootstrap`). Differences between systems use the same resamples for both.
Across seeds the per-seed differences are averaged, with a Student-t interval over seeds: that interval
holds the training noise, which no bootstrap over test speakers can see.
"""
from __future__ import annotations

import math
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data.datadir import read_kv
from ..data.longtail import shot_groups
from ..scoring.bootstrap import (
    bootstrap_verification,
    paired_bootstrap_accuracy,
    paired_bootstrap_verification,
    percentile_interval,
)
from ..scoring.metrics import GROUPS, shot_group_verification
from ..scoring.pairing import resampling_groups
from ..utils import DataError
from .store import need

__all__ = ["COLUMNS", "verification_with_ci", "seen_verification", "seen_group_figures", "sorted_scores", "row_figures",
           "paired_differences", "seed_summary", "t_interval", "N_BOOT", "LEVEL", "Intervals", "DEFAULT_INTERVALS"]

N_BOOT = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Intervals:
    """How a report judges its figures: minDCF's prior, the resamples of its paired bootstrap intervals and the
    confidence level (one object through the report's layers instead of three arguments)."""

    p_target: float = 0.01
    n_boot: int = N_BOOT
    level: float = LEVEL


DEFAULT_INTERVALS = Intervals()
# (key, header, scale): EER and accuracies in percent, minDCF as is
COLUMNS = ([("eer", "EER (%)", 100.0), ("min_dcf", "minDCF", 1.0)]
           + [(f"seen_eer_{g}", f"Seen {g.capitalize()} EER (%)", 100.0) for g in GROUPS]
           + [(f"seen_dcf_{g}", f"Seen {g.capitalize()} minDCF", 1.0) for g in GROUPS]
           + [(f"acc_{g}", g.capitalize(), 100.0) for g in (*GROUPS, "overall")]
           + [("cllr", "Cllr", 1.0), ("min_cllr", "minCllr", 1.0), ("act_dcf", "actDCF", 1.0)])


def _key(p: float | str) -> str:
    return f"{float(p):g}"


def sorted_scores(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(enroll, test, scores, labels) of a labelled score file, sorted by (enroll, test) so that two files of
    the same trials line up; cached per (path, modification time)."""
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError:
        mtime = -1  # let the reader name the missing file
    return _read_sorted(str(path), mtime)


@lru_cache(maxsize=64)
def _read_sorted(path: str, mtime: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from ..data.trialio import read_scores

    s = read_scores(path, keys=True, need_labels=True)
    t = s.trials()
    order = np.lexsort((t.test, t.enroll))
    return t.enroll[order], t.test[order], s.scores[order], s.labels[order]


@lru_cache(maxsize=16)
def _kv(path: str) -> dict:
    return read_kv(path)


def _enroll_speakers(enroll: np.ndarray, utt2spk: str | None) -> np.ndarray:
    return resampling_groups(enroll, _kv(utt2spk) if utt2spk else {})


def _ci_dict(res: Mapping, p_targets: Sequence[float]) -> dict:
    return {"eer": res["eer"], "eer_ci": res["eer_ci"], "min_dcf": {_key(p): res["min_dcf"][p] for p in p_targets},
            "min_dcf_ci": {_key(p): res["min_dcf_ci"][p] for p in p_targets}, "n_target": res["n_target"],
            "n_nontarget": res["n_nontarget"], "n_speakers": res["n_groups"]}


def _llr_figures(scores: np.ndarray, labels: np.ndarray, spk: np.ndarray, p_targets: Sequence[float], n_boot: int,
                 level: float, seed: int) -> dict:
    """Cllr, minCllr and actDCF of LLR scores; Cllr and actDCF with intervals over the same units."""
    from ..scoring.calibration import llr_bootstrap, llr_summary

    s = llr_summary(scores, labels, p_targets)
    bs = llr_bootstrap([scores], labels, spk, n_boot, p_targets, seed)
    cllr_ci = percentile_interval(bs["cllr"][0], level)
    return {"llr": True, "cllr": s["cllr"], "cllr_ci": cllr_ci, "min_cllr": s["min_cllr"],
            "act_dcf": {_key(p): s["act_dcf"][float(p)] for p in p_targets},
            "act_dcf_ci": {_key(p): percentile_interval(bs["act_dcf"][float(p)][0], level) for p in p_targets}}


def verification_with_ci(score_file: str, utt2spk: str | None = None, p_targets: Sequence[float] = (0.01, 0.05),
                         n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0, llr: bool = False) -> dict:
    """EER / minDCF of a labelled score file with intervals from resampling enrolment speakers (`utt2spk`
    maps enrolment keys to speakers; a key it lacks is its own unit); `llr`: the scores are calibrated
    log-likelihood ratios, and Cllr, minCllr and actDCF are added."""
    enroll, _, scores, labels = sorted_scores(str(score_file))
    spk = _enroll_speakers(enroll, utt2spk)
    res = bootstrap_verification(scores, labels, spk, n_boot, level, p_targets, seed)
    out = {**_ci_dict(res, p_targets), "utt2spk": str(utt2spk) if utt2spk else None, "n_boot": n_boot,
           "level": level, "bootstrap_seed": seed, "unit": "enrolment speaker" if utt2spk else "enrolment key"}
    if llr:
        out.update(_llr_figures(scores, labels, spk, p_targets, n_boot, level, seed))
    return out


def _train_counts(train_data: str) -> Counter:
    return Counter(_kv(str(Path(train_data) / "utt2spk")).values())


def _seen_groups(enroll: np.ndarray, utt2spk: str, train_data: str, many: int, few: int) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """Enrolment speaker and its shot group (by training utterances) of every trial."""
    spk = _enroll_speakers(enroll, utt2spk)
    counts = _train_counts(train_data)
    unseen = sorted({s for s in spk.tolist() if s not in counts})
    if unseen:
        raise DataError(f"{len(unseen)} enrolment speakers are not training speakers (first: {unseen[0]}): not a "
                        "seen-speaker list", train_data)
    return spk, shot_groups(np.array([counts[s] for s in spk.tolist()]), many, few)


def seen_verification(score_file: str, utt2spk: str, train_data: str, many: int, few: int,
                      p_targets: Sequence[float] = (0.01, 0.05), n_boot: int = N_BOOT, level: float = LEVEL,
                      seed: int = 0) -> dict:
    """EER / minDCF of a seen-speaker list per shot group of the enrolment speaker
    (metrics.shot_group_verification), each with an interval from resampling the group's enrolment speakers."""
    enroll, _, scores, labels = sorted_scores(str(score_file))
    groups = seen_group_figures(enroll, scores, labels, utt2spk, train_data, many, few, p_targets, n_boot, level,
                                seed)
    return {"scores": str(Path(score_file).resolve()), "utt2spk": str(utt2spk), "train_data": str(train_data),
            "thresholds": {"many": int(many), "few": int(few)}, "groups": groups, "n_boot": n_boot, "level": level,
            "bootstrap_seed": seed, "unit": "enrolment speaker"}


def seen_group_figures(enroll: np.ndarray, scores: np.ndarray, labels: np.ndarray, utt2spk: str, train_data: str,
                       many: int, few: int, p_targets: Sequence[float] = (0.01, 0.05), n_boot: int = N_BOOT,
                       level: float = LEVEL, seed: int = 0) -> dict:
    """seen_verification's `groups` for trials given as arrays (a part of a list, such as a session half): per
    shot group EER / minDCF with intervals, or only the trial counts where the group lacks targets or
    non-targets, or None where it has no trial."""
    spk, grp = _seen_groups(enroll, utt2spk, train_data, many, few)
    counts = _train_counts(train_data)
    point = shot_group_verification(scores, labels, np.array([counts[s] for s in spk.tolist()], dtype=np.int64),
                                     p_targets, many, few)
    groups: dict = {}
    for g in GROUPS:
        sel = grp == g
        if point[g] is None:
            groups[g] = None if not sel.any() else {"n_target": int(labels[sel].sum()),
                                                    "n_nontarget": int((labels[sel] == 0).sum())}
            continue
        res = bootstrap_verification(scores[sel], labels[sel], spk[sel], n_boot, level, p_targets, seed)
        groups[g] = _ci_dict(res, p_targets)
        groups[g]["eer"], groups[g]["min_dcf"] = point[g]["eer"], {_key(p): point[g]["min_dcf"][p] for p in p_targets}
    return groups


def row_figures(row: Mapping, p_target: float = 0.01) -> dict[str, tuple[float | None, list | None]]:
    """Every report column of one result row: (value, 95% interval or None), unscaled; (None, None) if absent."""
    key = _key(p_target)
    out: dict[str, tuple[float | None, list | None]] = {c: (None, None) for c, _, _ in COLUMNS}
    ver = row.get("verification") or {}
    if ver:
        out["eer"] = (ver.get("eer"), ver.get("eer_ci"))
        out["min_dcf"] = ((ver.get("min_dcf") or {}).get(key), (ver.get("min_dcf_ci") or {}).get(key))
        if ver.get("llr"):
            out["cllr"] = (ver.get("cllr"), ver.get("cllr_ci"))
            out["min_cllr"] = (ver.get("min_cllr"), None)
            out["act_dcf"] = ((ver.get("act_dcf") or {}).get(key), (ver.get("act_dcf_ci") or {}).get(key))
    for g, v in ((row.get("seen") or {}).get("groups") or {}).items():
        if v and "eer" in v:
            out[f"seen_eer_{g}"] = (v["eer"], v.get("eer_ci"))
            out[f"seen_dcf_{g}"] = (v["min_dcf"].get(key), (v.get("min_dcf_ci") or {}).get(key))
    iden = row.get("identification") or {}
    for g in (*GROUPS, "overall"):
        val = iden.get(g)
        if val is not None and not (isinstance(val, float) and math.isnan(val)):
            out[f"acc_{g}"] = (val, iden.get(f"{g}_ci"))
    return out


def _aligned(path_a: str, path_b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(enroll, scores A, scores B, labels) when both files hold the same labelled trials, else None (two lists:
    no paired difference)."""
    ea, ta, sa, la = sorted_scores(path_a)
    eb, tb, sb, lb = sorted_scores(path_b)
    if len(ea) != len(eb) or (ea != eb).any() or (ta != tb).any() or (la != lb).any():
        return None
    return ea, sa, sb, la


_PREDICTION_KEYS = ("utts", "y_true", "y_pred", "train_counts", "speakers")


def _predictions(path: str) -> dict[str, np.ndarray]:
    """The arrays of an identification predictions file (inference.identify.save_predictions)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in _PREDICTION_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"not an identification predictions file ({type(e).__name__}: {e}; expected an .npz "
                        f"with {', '.join(_PREDICTION_KEYS)})", path) from None


def _diff_entry(diff: float, ci: list | None) -> dict:
    sig = None if ci is None else bool(ci[0] > 0 or ci[1] < 0)
    return {"diff": float(diff), "ci": ci, "significant": sig}


def paired_differences(row: Mapping, ref: Mapping, p_target: float = 0.01, n_boot: int = N_BOOT,
                       level: float = LEVEL, seed: int = 0) -> dict[str, dict]:
    """Figure of `row` minus that of `ref` for every column both have, with the paired bootstrap interval
    (same trials / same test utterances, shared resamples) and whether it excludes 0. The rows are
    results.records.collect_rows'; a file they refer to that is missing is a DataError (results.store.need)."""
    out: dict[str, dict] = {}
    va, vb = row.get("verification") or {}, ref.get("verification") or {}
    if va.get("scores") and vb.get("scores"):
        al = _aligned(need(row, "verification", "scores"), need(ref, "verification", "scores"))
        if al is not None:
            enroll, sa, sb, lab = al
            u2s = need(row, "verification", "utt2spk") if va.get("utt2spk") else None
            res = paired_bootstrap_verification(sa, sb, lab, _enroll_speakers(enroll, u2s), n_boot,
                                                level, (p_target,), seed)
            out["eer"] = _diff_entry(res["diff"], res["diff_ci"])
            out["min_dcf"] = _diff_entry(res["min_dcf_diff"][p_target], res["min_dcf_diff_ci"][p_target])
            if va.get("llr") and vb.get("llr"):
                out.update(_paired_llr(sa, sb, lab, _enroll_speakers(enroll, u2s), p_target, n_boot, level, seed))
    sa_, sb_ = row.get("seen") or {}, ref.get("seen") or {}
    if sa_.get("scores") and sb_.get("scores"):
        al = _aligned(need(row, "seen", "scores"), need(ref, "seen", "scores"))
        if al is not None:
            enroll, sa, sb, lab = al
            shot = sa_["thresholds"]
            spk, grp = _seen_groups(enroll, need(row, "seen", "utt2spk"), need(row, "seen", "train_data"),
                                    shot["many"], shot["few"])
            for g in GROUPS:
                sel = grp == g
                if not (lab[sel] == 1).any() or not (lab[sel] == 0).any():
                    continue
                res = paired_bootstrap_verification(sa[sel], sb[sel], lab[sel], spk[sel], n_boot, level,
                                                    (p_target,), seed)
                out[f"seen_eer_{g}"] = _diff_entry(res["diff"], res["diff_ci"])
                out[f"seen_dcf_{g}"] = _diff_entry(res["min_dcf_diff"][p_target], res["min_dcf_diff_ci"][p_target])
    ia, ib = row.get("identification") or {}, ref.get("identification") or {}
    pa, pb = ia.get("predictions"), ib.get("predictions")
    if pa and pb:
        a, b = _predictions(need(row, "identification", "predictions")), _predictions(
            need(ref, "identification", "predictions"))
        if (a["utts"].shape == b["utts"].shape and (a["utts"] == b["utts"]).all()
                and (a["speakers"].shape == b["speakers"].shape) and (a["speakers"] == b["speakers"]).all()):
            shot = ia["thresholds"]
            res = paired_bootstrap_accuracy(a["y_true"], a["y_pred"], b["y_pred"], a["train_counts"], n_boot, level,
                                            seed, shot["many"], shot["few"])
            for g in (*GROUPS, "overall"):
                k = "mean_per_class" if g == "overall" else g
                if res["diff_ci"][k] is not None:
                    out[f"acc_{g}"] = _diff_entry(res["diff"][k], res["diff_ci"][k])
    return out


def _paired_llr(sa: np.ndarray, sb: np.ndarray, lab: np.ndarray, spk: np.ndarray, p_target: float, n_boot: int,
                level: float, seed: int) -> dict[str, dict]:
    """Cllr and actDCF differences of two LLR score vectors on the same trials, shared resamples."""
    from ..scoring.calibration import act_dcf, cllr, llr_bootstrap

    bs = llr_bootstrap([sa, sb], lab, spk, n_boot, (p_target,), seed)
    d_dcf = act_dcf(sa, lab, p_target) - act_dcf(sb, lab, p_target)
    d_cllr = bs["cllr"][0] - bs["cllr"][1]
    d_act = bs["act_dcf"][float(p_target)][0] - bs["act_dcf"][float(p_target)][1]
    return {"cllr": _diff_entry(cllr(sa, lab) - cllr(sb, lab), percentile_interval(d_cllr, level)),
            "act_dcf": _diff_entry(d_dcf, percentile_interval(d_act, level))}


def seed_summary(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std (ddof 1; 0 for one value), n) of the per-seed values of a figure."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0, int(len(x))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, list[float] | None]:
    """Mean of per-seed values with its Student-t interval over seeds (None with fewer than two seeds)."""
    from scipy.stats import t

    mean, std, n = seed_summary(values)
    if n < 2:
        return mean, None
    half = float(t.ppf((1.0 + level) / 2.0, n - 1)) * std / math.sqrt(n)
    return mean, [mean - half, mean + half]
