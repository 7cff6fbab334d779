"""Bootstrap confidence intervals for EER / minDCF and for accuracies by shot group.

Trials that share an enrolment speaker are correlated, so the default resampling unit is a group of trials
(a speaker, or any key per trial): draw groups with replacement and keep all their trials (the subset
bootstrap of Bolle et al. and Poh & Bengio). A trial-level bootstrap (every trial its own group) is the
special case `groups=None`; it is too narrow when speakers differ.

Speed: the scores are sorted once. A resample is then a vector of per-trial weights (how often the trial's
group was drawn), and its DET curve is read off cumulative sums of those weights in the presorted order,
at the ends of tied-score groups, so ties move together exactly as in `spkcausal.scoring.metrics.det_curve`. EER and
minDCF follow `metrics` operation for operation: with all weights 1 they equal `compute_eer` /
`compute_min_dcf`, and with integer weights they equal those metrics on the data with every trial repeated
that many times. Intervals are percentile intervals of the resampled values.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..data.longtail import FEW, MANY, shot_groups
from ..utils import DataError, UsageError
from .metrics import GROUPS, check_scores, shot_group_accuracy, verification_summary

__all__ = ["weighted_verification", "bootstrap_verification", "paired_bootstrap_verification", "draw_counts",
           "group_index", "percentile_interval",
           "bootstrap_accuracy", "paired_bootstrap_accuracy"]

_BLOCK_ELEMENTS = 1 << 18  # resamples x trials per block: buffers of a few MB, reused block after block
_ACC_KEYS = ("top1", "mean_per_class", *GROUPS)


class _Sorted:
    """A trial list sorted once by score: where each operating point reads the cumulative target and
    non-target weights, and which points can hold a minimum of the DCF."""

    def __init__(self, scores: np.ndarray, is_tar: np.ndarray, group_idx: np.ndarray):
        order = np.argsort(scores, kind="stable")
        s, tar = scores[order], is_tar[order]
        g = group_idx[order]
        self.g_tar, self.g_non = g[tar], g[~tar]
        # Point k > 0 counts everything up to the end of tie group k-1; point 0 nothing (threshold = lowest).
        ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
        n_tar_upto = np.cumsum(tar)
        self.tar_at = np.concatenate([[0], n_tar_upto[ends]])
        self.non_at = np.concatenate([[0], ends + 1 - n_tar_upto[ends]])
        # Passing a tie group of targets only cannot lower the DCF (Pmiss up, Pfa fixed), one of non-targets
        # only cannot raise it: a minimum lies at a point not entered by the first kind nor left by the
        # second, whatever the weights. Far fewer points than the curve has, unless the classes interleave.
        n_tar_step, n_non_step = np.diff(self.tar_at), np.diff(self.non_at)
        tar_only, non_only = n_non_step == 0, n_tar_step == 0
        keep = ~np.append(False, tar_only) & ~np.append(non_only, False)
        self.cand_tar_at, self.cand_non_at = self.tar_at[keep], self.non_at[keep]


def _dcf_weights(p_targets: Sequence[float], c_miss: float, c_fa: float) -> list[tuple[float, float, float, float]]:
    out = []
    for p in p_targets:
        p = float(p)
        if not 0.0 < p < 1.0:
            raise UsageError(f"p_target must be in (0, 1), got {p}")
        out.append((p, c_miss * p, c_fa * (1.0 - p), min(c_miss * p, c_fa * (1.0 - p))))
    return out


class _Work:
    """Buffers reused across blocks of resamples: fresh multi-megabyte temporaries cost more (page faults)
    than the arithmetic done in them."""

    def __init__(self, systems: Sequence[_Sorted], block: int, max_total: int):
        itype = np.int32 if max_total < 2**31 else np.int64  # cumulative weights: half the memory traffic
        self.cum_t = np.zeros((block, len(systems[0].g_tar) + 1), dtype=itype)  # column 0 stays 0
        self.cum_n = np.zeros((block, len(systems[0].g_non) + 1), dtype=itype)
        size = block * max(len(s.cand_tar_at) for s in systems)  # each system has its own DCF candidates
        self.below = np.empty(size, dtype=itype)
        self.pmiss, self.pfa, self.tmp, self.tmp2 = (np.empty(size) for _ in range(4))

    def curve(self, b: int, k: int) -> list[np.ndarray]:
        """Contiguous b x k views of the curve buffers (np.take writes only into contiguous output)."""
        return [a[:b * k].reshape(b, k) for a in (self.below, self.pmiss, self.pfa, self.tmp, self.tmp2)]


def _curve_stats(srt: _Sorted, counts: np.ndarray, dcf: list, ws: _Work) -> tuple[np.ndarray, dict, np.ndarray]:
    """EER and minDCF of each row of `counts` (resamples x groups), with the operations of metrics.det_curve,
    _eer_from_curve and _min_dcf_from_curve; NaN where a row has no target or no non-target weight
    (returned as the `bad` mask)."""
    b = len(counts)
    counts = counts.astype(ws.cum_t.dtype, copy=False)
    cum_t, cum_n = ws.cum_t[:b], ws.cum_n[:b]
    below, pmiss, pfa, tmp, tmp2 = ws.curve(b, len(srt.cand_tar_at))
    np.take(counts, srt.g_tar, axis=1, out=cum_t[:, 1:])
    np.cumsum(cum_t[:, 1:], axis=1, out=cum_t[:, 1:])
    np.take(counts, srt.g_non, axis=1, out=cum_n[:, 1:])
    np.cumsum(cum_n[:, 1:], axis=1, out=cum_n[:, 1:])
    n_tar, n_non = cum_t[:, -1:], cum_n[:, -1:]
    bad = (n_tar[:, 0] == 0) | (n_non[:, 0] == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        eer = _eer_rows(srt, cum_t, cum_n)
        np.take(cum_t, srt.cand_tar_at, axis=1, out=below)
        np.divide(below, n_tar, out=pmiss)
        np.take(cum_n, srt.cand_non_at, axis=1, out=below)
        np.subtract(n_non, below, out=below)
        np.divide(below, n_non, out=pfa)
        min_dcf = {}
        for p, a, c, norm in dcf:
            np.multiply(a, pmiss, out=tmp)
            np.add(tmp, np.multiply(c, pfa, out=tmp2), out=tmp)
            min_dcf[p] = tmp.min(axis=1) / norm
    eer[bad] = np.nan
    for v in min_dcf.values():
        v[bad] = np.nan
    return eer, min_dcf, bad


def _eer_rows(srt: _Sorted, cum_t: np.ndarray, cum_n: np.ndarray) -> np.ndarray:
    """metrics._eer_from_curve per row. d = Pmiss - Pfa never decreases along the curve (nor in floating
    point: each term is a monotone rounding), so the first point with d >= 0 is found by bisection, reading
    Pmiss and Pfa at a few dozen points instead of the whole curve."""
    rows = np.arange(len(cum_t))
    n_tar, n_non = cum_t[:, -1], cum_n[:, -1]

    def at(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cum_t[rows, srt.tar_at[k]] / n_tar, (n_non - cum_n[rows, srt.non_at[k]]) / n_non

    lo = np.zeros(len(rows), dtype=np.int64)  # d < 0 there (point 0: Pmiss 0, Pfa 1)
    hi = np.full(len(rows), len(srt.tar_at) - 1, dtype=np.int64)  # d >= 0 there (+inf: Pmiss 1, Pfa 0)
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        pm, pf = at(mid)
        up = pm - pf >= 0
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    m0, f0 = at(lo)
    m1, f1 = at(hi)
    d0, d1 = m0 - f0, m1 - f1
    w = d0 / (d0 - d1)
    return m0 + w * (m1 - m0)


def weighted_verification(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                          p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0,
                          c_fa: float = 1.0) -> tuple[np.ndarray, dict]:
    """EER and normalised minDCF per row of integer trial weights (n_trials or rows x n_trials), as if every
    trial were repeated weight times; NaN for a row without target or non-target weight."""
    scores, is_tar = check_scores(scores, labels, both_classes=True)
    w = np.atleast_2d(np.asarray(weights))
    if w.shape[1] != len(scores) or not np.issubdtype(w.dtype, np.integer) or (w < 0).any():
        raise UsageError(f"weights must be non-negative integers of shape (rows, {len(scores)}), got {w.shape}")
    # Every trial its own group: the weight rows are the group counts.
    srt = _Sorted(scores, is_tar, np.arange(len(scores)))
    eer, min_dcf, _ = _curve_stats(srt, w.astype(np.int64), _dcf_weights(p_targets, c_miss, c_fa),
                                   _Work([srt], len(w), int(w.sum(axis=1).max())))
    return eer, min_dcf


def group_index(groups: Sequence | np.ndarray | None, n: int) -> np.ndarray:
    """0-based group number of each of n trials (its own number each when groups is None)."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise UsageError(f"{len(groups)} group keys for {n} trials")
    return np.unique(groups, return_inverse=True)[1].ravel()


def draw_counts(rng: np.random.Generator, n_boot: int, n_groups: int) -> np.ndarray:
    """(n_boot, n_groups) counts of how often each group is drawn when n_groups draws are made with replacement,
    one row per resample."""
    drawn = rng.integers(0, n_groups, size=(n_boot, n_groups))
    counts = np.bincount((drawn + (np.arange(n_boot) * n_groups)[:, None]).ravel(), minlength=n_boot * n_groups)
    return counts.reshape(n_boot, n_groups)


def _max_total(group_idx: np.ndarray) -> int:
    """Largest total weight a resample can have: every draw falls on the biggest group."""
    sizes = np.bincount(group_idx)
    return len(sizes) * int(sizes.max())


def _block(n_boot: int, n_trials: int, n_groups: int) -> int:
    return max(1, min(n_boot, _BLOCK_ELEMENTS // max(n_trials, n_groups)))


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(8, int(env) if env.isdigit() else len(os.sched_getaffinity(0))))


def _resample(systems: Sequence[_Sorted], gi: np.ndarray, n_boot: int, seed: int, dcf: list,
              threads: int | None) -> tuple[np.ndarray, dict, np.ndarray]:
    """EER (systems x n_boot) and minDCF {p: systems x n_boot} of every resample of the groups, the same
    resamples for every system, and the mask of degenerate resamples.

    Each block of resamples draws from its own child of SeedSequence(seed), so the numbers do not depend
    on how many threads share the blocks (numpy releases the GIL in the array operations)."""
    n_groups = int(gi.max()) + 1
    block = _block(n_boot, len(gi), n_groups)
    starts = list(range(0, n_boot, block))
    seeds = np.random.SeedSequence(seed).spawn(len(starts))
    eer = np.empty((len(systems), n_boot))
    min_dcf = {p: np.empty((len(systems), n_boot)) for p, *_ in dcf}
    bad = np.zeros(n_boot, dtype=bool)
    n_threads = max(1, min(threads or _default_threads(), len(starts)))
    max_total = _max_total(gi)

    def work(first: int) -> None:
        ws = _Work(systems, block, max_total)  # same trials in every system: one set of buffers
        for k in range(first, len(starts), n_threads):
            s0 = starts[k]
            b = min(block, n_boot - s0)
            counts = draw_counts(np.random.default_rng(seeds[k]), b, n_groups)
            for j, srt in enumerate(systems):
                e, d, bd = _curve_stats(srt, counts, dcf, ws)
                eer[j, s0:s0 + b] = e
                for p, v in d.items():
                    min_dcf[p][j, s0:s0 + b] = v
            bad[s0:s0 + b] = bd  # labels and weights are shared: every system is degenerate in the same rows

    if n_threads == 1:
        work(0)
    else:
        with ThreadPoolExecutor(n_threads) as ex:
            list(ex.map(work, range(n_threads)))
    return eer, min_dcf, bad


def percentile_interval(values: np.ndarray, level: float) -> list[float]:
    """[lo, hi] percentiles of resampled values holding `level` of them in the middle."""
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return [float(lo), float(hi)]


def _check_level(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise UsageError(f"confidence level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise UsageError(f"need at least one bootstrap resample, got {n_boot}")


def _finish(samples: np.ndarray, bad: np.ndarray) -> np.ndarray:
    kept = samples[~bad]
    if not len(kept):
        raise DataError(f"all {len(bad)} bootstrap resamples lack targets or non-targets: too few groups "
                        "with both kinds of trial")
    return kept


def bootstrap_verification(scores: np.ndarray, labels: np.ndarray, groups: Sequence | np.ndarray | None = None,
                           n_boot: int = 1000, level: float = 0.95, p_targets: Sequence[float] = (0.01, 0.05),
                           seed: int = 0, unit: str | None = None, c_miss: float = 1.0, c_fa: float = 1.0,
                           threads: int | None = None, samples: bool = False) -> dict:
    """EER and minDCF with percentile intervals from resampling `groups` (one key per trial; None: trials);
    `samples` adds the kept resampled values (`eer_samples`, `min_dcf_samples`)."""
    _check_level(level, n_boot)
    scores, is_tar = check_scores(scores, labels, both_classes=True)
    point = verification_summary(scores, is_tar, p_targets, c_miss, c_fa)
    gi = group_index(groups, len(scores))
    dcf = _dcf_weights(p_targets, c_miss, c_fa)
    eer, min_dcf, bad = _resample([_Sorted(scores, is_tar, gi)], gi, n_boot, seed, dcf, threads)
    out = {"eer": point["eer"], "eer_ci": percentile_interval(_finish(eer[0], bad), level),
           "min_dcf": dict(point["min_dcf"]),
           "min_dcf_ci": {p: percentile_interval(_finish(v[0], bad), level) for p, v in min_dcf.items()},
           "n_target": point["n_target"], "n_nontarget": point["n_nontarget"], "n_groups": int(gi.max()) + 1,
           "n_boot": int(n_boot), "n_dropped": int(bad.sum()), "level": float(level), "seed": int(seed),
           "unit": unit or ("trial" if groups is None else "speaker")}
    if samples:
        out["eer_samples"] = eer[0][~bad].tolist()
        out["min_dcf_samples"] = {p: v[0][~bad].tolist() for p, v in min_dcf.items()}
    return out


def paired_bootstrap_verification(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray,
                                  groups: Sequence | np.ndarray | None = None, n_boot: int = 1000,
                                  level: float = 0.95, p_targets: Sequence[float] = (0.01, 0.05), seed: int = 0,
                                  unit: str | None = None, c_miss: float = 1.0, c_fa: float = 1.0,
                                  threads: int | None = None) -> dict:
    """Interval of EER(A) - EER(B) (and of the minDCF differences) for two systems scored on the same trials,
    each resample applied to both; `significant` says whether the EER interval excludes 0."""
    _check_level(level, n_boot)
    scores_a, is_tar = check_scores(scores_a, labels, both_classes=True)
    scores_b, _ = check_scores(scores_b, labels, both_classes=True)
    if len(scores_a) != len(scores_b):
        raise UsageError(f"system A has {len(scores_a)} scores, system B {len(scores_b)}: need the same trials")
    pa = verification_summary(scores_a, is_tar, p_targets, c_miss, c_fa)
    pb = verification_summary(scores_b, is_tar, p_targets, c_miss, c_fa)
    gi = group_index(groups, len(scores_a))
    dcf = _dcf_weights(p_targets, c_miss, c_fa)
    eer, min_dcf, bad = _resample([_Sorted(scores_a, is_tar, gi), _Sorted(scores_b, is_tar, gi)], gi, n_boot,
                                  seed, dcf, threads)
    diff_ci = percentile_interval(_finish(eer[0] - eer[1], bad), level)
    return {"diff": pa["eer"] - pb["eer"], "diff_ci": diff_ci, "eer_a": pa["eer"], "eer_b": pb["eer"],
            "significant": bool(diff_ci[0] > 0 or diff_ci[1] < 0),
            "min_dcf_diff": {p: pa["min_dcf"][p] - pb["min_dcf"][p] for p in pa["min_dcf"]},
            "min_dcf_diff_ci": {p: percentile_interval(_finish(v[0] - v[1], bad), level) for p, v in min_dcf.items()},
            "n_target": pa["n_target"], "n_nontarget": pa["n_nontarget"], "n_groups": int(gi.max()) + 1,
            "n_boot": int(n_boot), "n_dropped": int(bad.sum()), "level": float(level), "seed": int(seed),
            "unit": unit or ("trial" if groups is None else "speaker")}


# ---------------------------------------------------------------- identification accuracy, per class


def _class_stats(y_true: np.ndarray, preds: Sequence[np.ndarray], n_classes: int) -> tuple[np.ndarray, list]:
    n = np.bincount(y_true, minlength=n_classes)
    hits = [np.bincount(y_true[y_true == p], minlength=n_classes) for p in preds]
    return n, hits


def _accuracy_samples(y_true: np.ndarray, preds: Sequence[np.ndarray], train_counts: np.ndarray, n_boot: int,
                      seed: int, many: int, few: int) -> list[dict]:
    """Per prediction, {metric: n_boot resampled values}: classes with test samples are drawn with
    replacement within each shot group (group sizes fixed, as in the point estimate); every prediction
    sees the same draws."""
    n, hits = _class_stats(y_true, preds, len(train_counts))
    present = n > 0
    groups = shot_groups(np.asarray(train_counts), many, few)
    rng = np.random.default_rng(seed)
    tot_n, tot_acc = np.zeros(n_boot), np.zeros((len(preds), n_boot))
    tot_hit = np.zeros((len(preds), n_boot))
    out: list[dict] = [{} for _ in preds]
    n_present = int(present.sum())
    for g in GROUPS:
        members = np.flatnonzero(present & (groups == g))
        if not len(members):
            for o in out:
                o[g] = None
            continue
        sel = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        tot_n += n[sel].sum(1)
        for k, h in enumerate(hits):
            acc = h[sel] / n[sel]
            out[k][g] = acc.mean(1)
            tot_acc[k] += acc.sum(1)
            tot_hit[k] += h[sel].sum(1)
    for k, o in enumerate(out):
        o["mean_per_class"] = tot_acc[k] / n_present
        o["top1"] = tot_hit[k] / tot_n
    return out


def _check_accuracy_args(y_true: np.ndarray, preds: Sequence[np.ndarray], train_counts: np.ndarray, n_boot: int,
                         level: float, many: int, few: int) -> tuple[np.ndarray, list, list[dict]]:
    _check_level(level, n_boot)
    y_true = np.asarray(y_true, dtype=np.int64)
    preds = [np.asarray(p, dtype=np.int64) for p in preds]
    points = [shot_group_accuracy(y_true, p, train_counts, many, few) for p in preds]  # also validates
    return y_true, preds, points


def bootstrap_accuracy(y_true: np.ndarray, y_pred: np.ndarray, train_counts: np.ndarray, n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0, many: int = MANY, few: int = FEW) -> dict:
    """shot_group_accuracy's figures with per-class (per-speaker) bootstrap intervals (`<key>_ci`; None for
    an empty group)."""
    y_true, preds, points = _check_accuracy_args(y_true, [y_pred], train_counts, n_boot, level, many, few)
    samples = _accuracy_samples(y_true, preds, np.asarray(train_counts), n_boot, seed, many, few)[0]
    out = dict(points[0])
    for k in _ACC_KEYS:
        out[f"{k}_ci"] = None if samples[k] is None else percentile_interval(samples[k], level)
    out.update(n_boot=int(n_boot), level=float(level), seed=int(seed), unit="class")
    return out


def paired_bootstrap_accuracy(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, train_counts: np.ndarray,
                              n_boot: int = 1000, level: float = 0.95, seed: int = 0, many: int = MANY,
                              few: int = FEW) -> dict:
    """Differences A - B of shot_group_accuracy's figures for two predictions of the same test utterances,
    with intervals from shared per-class resamples (`diff`, `diff_ci`, `significant`: per figure)."""
    y_true, preds, (pa, pb) = _check_accuracy_args(y_true, [pred_a, pred_b], train_counts, n_boot, level, many,
                                                   few)
    sa, sb = _accuracy_samples(y_true, preds, np.asarray(train_counts), n_boot, seed, many, few)
    diff, diff_ci, sig = {}, {}, {}
    for k in _ACC_KEYS:
        diff[k] = pa[k] - pb[k]
        ci = None if sa[k] is None else percentile_interval(sa[k] - sb[k], level)
        diff_ci[k], sig[k] = ci, None if ci is None else bool(ci[0] > 0 or ci[1] < 0)
    return {"diff": diff, "diff_ci": diff_ci, "significant": sig, "a": pa, "b": pb, "n_boot": int(n_boot),
            "level": float(level), "seed": int(seed), "unit": "class"}
