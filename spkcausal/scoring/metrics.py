"""Verification metrics (EER, minDCF, actual DCF, DET) in O(N log N), and identification metrics by shot group.

Scores: higher means more likely the same speaker; a trial is accepted at threshold t when score >= t.
Pmiss(t) = share of targets below t, Pfa(t) = share of non-targets at or above t. Every operating point is a
distinct score value (tied scores form one group, so their order never matters) plus t = +inf (reject all).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.longtail import FEW, GROUPS, MANY, shot_groups
from ..utils import DataError, PathLike, UsageError

__all__ = [
    "DetCurve", "det_curve", "compute_eer", "compute_min_dcf", "eer_with_threshold", "min_dcf_with_threshold",
    "actual_dcf", "verification_summary", "shot_group_accuracy", "confusion_summary", "shot_group_verification",
    "enroll_train_counts", "evaluate_score_files", "format_table", "plot_det",
]


@dataclass
class DetCurve:
    """Every operating point: thresholds ascending (last is +inf), Pmiss non-decreasing, Pfa non-increasing."""

    thresholds: np.ndarray
    pmiss: np.ndarray
    pfa: np.ndarray
    n_target: int
    n_nontarget: int


def check_scores(scores: np.ndarray, labels: np.ndarray, both_classes: bool = False,
                 finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(scores as float64, labels as a target mask), checked: equal lengths, 0/1 labels, finite scores unless
    `finite=False` (LLRs may be infinite), and with `both_classes` at least one target and one non-target."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    if finite and not np.isfinite(scores).all():
        raise DataError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    if labels.dtype == bool:
        labels = labels.astype(np.int8)
    if not np.isin(labels, (0, 1)).all():
        raise DataError("labels must be 1 (target) or 0 (non-target)")
    is_tar = labels.astype(bool)
    if both_classes and (is_tar.all() or not is_tar.any()):
        raise DataError(f"need both targets and non-targets (got {int(is_tar.sum())} targets, "
                        f"{int((~is_tar).sum())} non-targets)")
    return scores, is_tar


def det_curve(scores: np.ndarray, labels: np.ndarray) -> DetCurve:
    """Pmiss / Pfa at every distinct score threshold (ties grouped) and at +inf; O(N log N), float64."""
    scores, is_tar = check_scores(scores, labels, both_classes=True)
    n_tar = int(is_tar.sum())
    n_non = len(is_tar) - n_tar
    # Two value sorts (SIMD in numpy) instead of an argsort: targets below each distinct score by searchsorted.
    s = np.sort(scores)
    first = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))  # start of each tie group
    tar_below = np.searchsorted(np.sort(scores[is_tar]), s[first], side="left").astype(np.int64)
    below = first.astype(np.int64)
    non_below = below - tar_below
    tar_below = np.append(tar_below, n_tar)
    non_below = np.append(non_below, n_non)
    return DetCurve(thresholds=np.append(s[first], np.inf), pmiss=tar_below / n_tar,
                    pfa=(n_non - non_below) / n_non, n_target=n_tar, n_nontarget=n_non)


def _eer_from_curve(c: DetCurve) -> tuple[float, float]:
    d = c.pmiss - c.pfa  # -1 at the lowest threshold, +1 at +inf, non-decreasing in between
    i = int(np.argmax(d >= 0))
    d0, d1 = d[i - 1], d[i]
    w = d0 / (d0 - d1)  # where the segment between the two neighbouring points meets Pmiss = Pfa
    eer = c.pmiss[i - 1] + w * (c.pmiss[i] - c.pmiss[i - 1])
    t0, t1 = c.thresholds[i - 1], c.thresholds[i]
    thr = t0 + w * (t1 - t0) if np.isfinite(t1) else t0
    return float(eer), float(thr)


def eer_with_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(EER as a fraction, threshold at the EER, interpolated like the EER itself)."""
    return _eer_from_curve(det_curve(scores, labels))


def compute_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate (fraction): Pmiss = Pfa, linearly interpolated between neighbouring thresholds."""
    return eer_with_threshold(scores, labels)[0]


def _dcf_norm(p_target: float, c_miss: float, c_fa: float) -> float:
    if not 0.0 < p_target < 1.0:
        raise UsageError(f"p_target must be in (0, 1), got {p_target}")
    return min(c_miss * p_target, c_fa * (1.0 - p_target))


def _min_dcf_from_curve(c: DetCurve, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    norm = _dcf_norm(p_target, c_miss, c_fa)
    dcf = c_miss * p_target * c.pmiss + c_fa * (1.0 - p_target) * c.pfa
    i = int(np.argmin(dcf))
    return float(dcf[i] / norm), float(c.thresholds[i])


def min_dcf_with_threshold(scores: np.ndarray, labels: np.ndarray, p_target: float, c_miss: float = 1.0,
                           c_fa: float = 1.0) -> tuple[float, float]:
    """(normalised minDCF, threshold that attains it)."""
    return _min_dcf_from_curve(det_curve(scores, labels), p_target, c_miss, c_fa)


def compute_min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float, c_miss: float = 1.0,
                    c_fa: float = 1.0) -> float:
    """Normalised minimum detection cost: min_t DCF(t) / min(c_miss*p, c_fa*(1-p)) (NIST / Kaldi / wespeaker)."""
    return min_dcf_with_threshold(scores, labels, p_target, c_miss, c_fa)[0]


def actual_dcf(scores: np.ndarray, labels: np.ndarray, threshold: float, p_target: float, c_miss: float = 1.0,
               c_fa: float = 1.0) -> float:
    """Normalised DCF at a fixed threshold (accept score >= threshold)."""
    scores, is_tar = check_scores(scores, labels, both_classes=True)
    pmiss = float(np.mean(scores[is_tar] < threshold))
    pfa = float(np.mean(scores[~is_tar] >= threshold))
    return (c_miss * p_target * pmiss + c_fa * (1.0 - p_target) * pfa) / _dcf_norm(p_target, c_miss, c_fa)


def verification_summary(scores: np.ndarray, labels: np.ndarray, p_targets: Sequence[float] = (0.01, 0.05),
                         c_miss: float = 1.0, c_fa: float = 1.0) -> dict:
    """EER, minDCF per p_target and their thresholds from one DET curve."""
    c = det_curve(scores, labels)
    eer, eer_thr = _eer_from_curve(c)
    out: dict = {"n_target": c.n_target, "n_nontarget": c.n_nontarget, "eer": eer, "eer_threshold": eer_thr,
                 "min_dcf": {}, "min_dcf_threshold": {}}
    for p in p_targets:
        v, t = _min_dcf_from_curve(c, p, c_miss, c_fa)
        out["min_dcf"][float(p)] = v
        out["min_dcf_threshold"][float(p)] = t
    return out


# ---------------------------------------------------------------- identification, by shot group


def _per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    n = np.bincount(y_true, minlength=n_classes)
    hit = np.bincount(y_true[y_true == y_pred], minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hit / n, n


def mean_per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in `y_true` of their accuracy (equal to top-1 on a balanced set)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    acc, n = _per_class_accuracy(y_true, y_pred, int(max(y_true.max(), y_pred.max())) + 1)
    return float(acc[n > 0].mean())


def shot_group_accuracy(y_true: np.ndarray, y_pred: np.ndarray, train_counts: np.ndarray, many: int = MANY,
                        few: int = FEW) -> dict:
    """Top-1 accuracy, mean per-class accuracy overall and within the Many / Medium / Few groups.

    Classes are indices into `train_counts` (training utterances per class); only classes with test
    samples enter a group mean; an empty group gives NaN."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    counts = np.asarray(train_counts)
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(f"{len(y_true)} labels and {len(y_pred)} predictions; need equal, non-zero lengths")
    if y_true.min() < 0 or max(y_true.max(), y_pred.max()) >= len(counts):
        raise ValueError(f"class index outside [0, {len(counts)})")
    acc, n = _per_class_accuracy(y_true, y_pred, len(counts))
    present = n > 0
    groups = shot_groups(counts, many, few)
    out: dict = {"top1": float(np.mean(y_true == y_pred)), "mean_per_class": float(acc[present].mean())}
    for g in GROUPS:
        sel = present & (groups == g)
        out[g] = float(acc[sel].mean()) if sel.any() else float("nan")
        out[f"n_{g}_classes"] = int(sel.sum())
    return out


def confusion_summary(y_true: np.ndarray, y_pred: np.ndarray, train_counts: np.ndarray, many: int = MANY,
                      few: int = FEW) -> dict:
    """For each true shot group: share of its test samples predicted correctly, or as a class of each group.

    `out["few"]["many"]` is how often a tail (Few) speaker is taken for some head (Many) speaker (wrong
    predictions only; the `correct` entry holds the rest)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    groups = shot_groups(np.asarray(train_counts), many, few)
    g_true, g_pred = groups[y_true], groups[y_pred]
    wrong = y_true != y_pred
    out: dict = {}
    for g in GROUPS:
        sel = g_true == g
        n = int(sel.sum())
        row: dict = {"n": n, "correct": float(np.mean(~wrong[sel])) if n else float("nan")}
        for h in GROUPS:
            row[h] = float(np.mean(wrong[sel] & (g_pred[sel] == h))) if n else float("nan")
        out[g] = row
    return out


def shot_group_verification(scores: np.ndarray, labels: np.ndarray, enroll_train_counts: np.ndarray,
                            p_targets: Sequence[float] = (0.01, 0.05), many: int = MANY, few: int = FEW) -> dict:
    """EER / minDCF of seen-speaker trials grouped by the enrolled speaker's training-utterance count
    (a negative count marks an unseen enrolled speaker: that trial is left out)."""
    scores, is_tar = check_scores(scores, labels)
    counts = np.asarray(enroll_train_counts)
    if len(counts) != len(scores):
        raise ValueError(f"{len(counts)} enrol counts for {len(scores)} trials")
    groups = np.where(counts < 0, "unseen", shot_groups(counts, many, few))
    out: dict = {}
    for g in GROUPS:
        sel = groups == g
        if is_tar[sel].any() and (~is_tar[sel]).any():
            out[g] = verification_summary(scores[sel], is_tar[sel], p_targets)
        else:
            out[g] = None  # a group without both kinds of trial has no error rate
    return out


def enroll_train_counts(enroll: Sequence[str], speakers: Sequence[str], counts: Sequence[int],
                        utt2spk: Mapping[str, str] | None = None) -> np.ndarray:
    """Training-utterance count of each trial's enrolled speaker, -1 when unseen. Pass a training profile's
    `speakers` / `utterances` (spkcausal.data.longtail.profile_datadir) and, for utterance keys, the eval utt2spk."""
    table = dict(zip([str(x) for x in speakers], np.asarray(counts).tolist()))
    u2s = utt2spk or {}
    return np.fromiter((table.get(u2s.get(k, k), -1) for k in enroll), dtype=np.int64, count=len(enroll))


# ---------------------------------------------------------------- files and DET plots


def evaluate_score_files(paths: Sequence[PathLike], p_targets: Sequence[float] = (0.01, 0.05),
                         summary: Callable[..., dict] | None = None) -> list[dict]:
    """`summary(scores, labels, p_targets)` (default verification_summary) of each labelled score file
    (`enroll test score label`), with its file name and trial counts."""
    from ..data.trialio import read_scores

    summary = summary or verification_summary
    out = []
    for p in paths:
        table = read_scores(p, need_labels=True)
        try:
            res = summary(table.scores, table.labels, p_targets)
        except DataError as e:  # the arrays do not know their file: name it
            raise DataError(e.message, p) from None
        res.setdefault("n_target", int((table.labels == 1).sum()))
        res.setdefault("n_nontarget", int((table.labels == 0).sum()))
        res["file"] = str(p)
        out.append(res)
    return out


def format_table(results: Sequence[dict]) -> str:
    """Plain-text table: EER in percent, minDCF per p_target, trial counts."""
    ps = list(results[0]["min_dcf"]) if results else []
    head = ["EER(%)"] + [f"minDCF({p:g})" for p in ps] + ["targets", "nontargets", "file"]
    rows = [[f"{r['eer'] * 100:.3f}"] + [f"{r['min_dcf'][p]:.4f}" for p in ps]
            + [str(r["n_target"]), str(r["n_nontarget"]), r["file"]] for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.rjust(w) if i < len(head) - 1 else x for i, (x, w) in enumerate(zip(row, widths)))
                     for row in [head, *rows])


def _thin(pfa: np.ndarray, pmiss: np.ndarray, n_max: int = 4000) -> np.ndarray:
    """Indices of at most ~n_max curve points, evenly spread along the curve's length in probit space."""
    from scipy.stats import norm

    if len(pfa) <= n_max:
        return np.arange(len(pfa))
    x = norm.ppf(np.clip(pfa, 1e-6, 1 - 1e-6))
    y = norm.ppf(np.clip(pmiss, 1e-6, 1 - 1e-6))
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    keep = np.unique(np.searchsorted(arc, np.linspace(0, arc[-1], n_max)))
    return np.unique(np.concatenate([[0], np.minimum(keep, len(pfa) - 1), [len(pfa) - 1]]))


def _det_limits(ticks: np.ndarray, eers: Sequence[float], points: Sequence[tuple[float, float]]) -> tuple:
    """(low, high) axis ends, snapped to ticks: from well below the best EER to well above the worst (an 0.8 %
    and an 18 % system are both drawn where their curves are), widened to cover every marked operating point."""
    coords = [v for pt in points for v in pt if ticks[0] <= v <= ticks[-1]]
    low_want = min([max(min(eers, default=0.01) / 20, ticks[0])] + coords)
    high_want = max([min(max(max(eers, default=0.01) * 3, 0.4), 0.99)] + coords)
    low = ticks[max(0, int(np.searchsorted(ticks, low_want, side="right")) - 1)]
    high = ticks[min(len(ticks) - 1, int(np.searchsorted(ticks, high_want)))]
    return low, high


def plot_det(paths: Sequence[str], out: str, p_targets: Sequence[float] = (0.01, 0.05),
             labels: Sequence[str] | None = None) -> dict:
    """DET curves (probit axes) of score files, EER and minDCF points marked, one legend entry per system and
    per marker drawn; returns the axes limits and the markers as drawn (probit units) for checking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    from ..data.trialio import read_scores
    from ..utils import atomic_path

    ticks = np.array([0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 90, 95, 98, 99, 99.5, 99.9,
                      99.99]) / 100
    lo = 1e-5
    curves = []
    for n, path in enumerate(paths):
        table = read_scores(path, need_labels=True)
        c = det_curve(table.scores, table.labels)
        eer, _ = _eer_from_curve(c)
        marks = []
        for p in p_targets:
            dcf = p * c.pmiss + (1 - p) * c.pfa
            i = int(np.argmin(dcf))
            marks.append((float(c.pfa[i]), float(c.pmiss[i]), f"  minDCF({p:g}) {dcf[i] / min(p, 1 - p):.3f}"))
        curves.append((labels[n] if labels else Path(path).name, c, eer, marks))
    low, high = _det_limits(ticks, [e for _, _, e, _ in curves], [m[:2] for *_, ms in curves for m in ms])
    fig, ax = plt.subplots(figsize=(6, 6))
    markers = ["s", "^", "v", "D"]
    drawn = []
    for name, c, eer, marks in curves:
        idx = _thin(c.pfa, c.pmiss)
        inside = [low <= pfa <= high and low <= pmiss <= high for pfa, pmiss, _ in marks]
        # a point at Pfa 0 or Pmiss 1 lies off any probit axis: its value goes into the system's entry instead
        off = ", ".join(t.strip() for (_, _, t), ok in zip(marks, inside) if not ok)
        (line,) = ax.plot(norm.ppf(np.clip(c.pfa[idx], lo, 1 - lo)), norm.ppf(np.clip(c.pmiss[idx], lo, 1 - lo)),
                          label=f"{name} (EER {eer * 100:.2f}%)" + (f"\n  off-axis: {off}" if off else ""))
        ax.plot(norm.ppf(eer), norm.ppf(eer), "o", color=line.get_color())
        for m, (pfa, pmiss, text) in enumerate(marks):
            if not inside[m]:
                continue
            x, y = float(norm.ppf(pfa)), float(norm.ppf(pmiss))
            ax.plot(x, y, markers[m % len(markers)], color=line.get_color(), mfc="none", label=text)
            drawn.append((text, x, y))
    ax.plot(norm.ppf([lo, 1 - lo]), norm.ppf([lo, 1 - lo]), ":", color="grey", lw=0.8)
    shown = ticks[(ticks >= low) & (ticks <= high)]
    pt = norm.ppf(shown)
    # probit ticks crowd at the ends (0.05 / 0.1 / 0.2 %): a label closer than 1/22 of the axis to the last one
    # kept stays a tick without text, so rotated labels never overlap
    names, last = [], -np.inf
    for t, x in zip(shown, pt):
        keep = x - last >= (norm.ppf(high) - norm.ppf(low)) / 22
        names.append(f"{t * 100:g}" if keep else "")
        last = x if keep else last
    ax.set_xticks(pt, names, rotation=45)
    ax.set_yticks(pt, names)
    ax.set_xlim(norm.ppf(low), norm.ppf(high))
    ax.set_ylim(norm.ppf(low), norm.ppf(high))
    ax.set_xlabel("False alarm probability (%)")
    ax.set_ylabel("Miss probability (%)")
    ax.grid(True, lw=0.3)
    # beside the axes, not on them: with many systems or long names an inside legend hides the curves
    legend = ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_title("DET (o: EER; open markers: minDCF operating points)", fontsize=10)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)
    texts = [t.get_text() for t in legend.get_texts()]
    return {"xlim": ax.get_xlim(), "ylim": ax.get_ylim(), "points": drawn,
            "legend": [t for t in texts if t.startswith("  minDCF")],
            "curves": [t for t in texts if not t.startswith("  minDCF")]}
