"""Scores as log-likelihood ratios: linear logistic calibration (BOSARIS-style) and the metrics of LLR scores.

Calibration maps the inputs x of a trial (the raw score, plus quality measures for QMF: spkcausal.scoring.qmf) to a
natural-log likelihood ratio llr = w.x + b. w, b minimise the prior-weighted cross-entropy

    p / N_tar * sum_tar log(1 + e^-(llr + logit p)) + (1 - p) / N_non * sum_non log(1 + e^(llr + logit p))

with p = the training prior (p_eff, default 0.01): targets and non-targets weigh p and 1 - p whatever their
counts, and the logit(p) offset makes llr the likelihood ratio itself, so the Bayes decision for any
application prior p' is llr >= -logit(p'). Inputs are standardised for the optimiser (L-BFGS, a 1e-6 ridge
on the weights so that separable dev data stays finite) and the weights are stored in raw units.

Metrics (all on natural-log LLRs):
  Cllr     = 0.5 * [mean_tar log2(1 + e^-llr) + mean_non log2(1 + e^llr)]  (np.logaddexp: no overflow);
  minCllr  = Cllr after the optimal monotone map of the scores to LLRs: pool-adjacent-violators on the
             labels sorted by score (tied scores pooled first), posterior -> log-odds minus the list's own
             log(N_tar / N_non); the lowest and highest blocks may get -inf / +inf, which cost 0 here;
  act_dcf  = normalised DCF deciding llr >= -logit(p_target) (metrics.actual_dcf), next to minDCF.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.trialio import Trials, read_scores, write_scores
from ..utils import DataError, PathLike, UsageError, get_logger, write_text_atomic
from .metrics import actual_dcf, check_scores, compute_min_dcf, evaluate_score_files

__all__ = ["CalibrationModel", "logit", "bayes_threshold", "cllr", "pav", "pav_llr", "min_cllr", "act_dcf",
           "llr_summary", "evaluate_llr_files", "format_llr_table", "fit_logistic", "train_calibration",
           "train_calibration_file", "apply_calibration_file", "read_labelled", "llr_bootstrap", "MODEL_FORMAT"]

MODEL_FORMAT = "spkcausal-calibration"
RIDGE = 1e-6
log = get_logger(__name__)


def logit(p: float) -> float:
    """log(p / (1 - p))."""
    if not 0.0 < p < 1.0:
        raise UsageError(f"a prior must be in (0, 1), got {p}")
    return math.log(p) - math.log1p(-p)


def bayes_threshold(p_target: float) -> float:
    """The LLR threshold of the Bayes decision at prior p_target with unit costs: -logit(p_target)."""
    return -logit(p_target)


def cllr(llr: np.ndarray, labels: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits: 0 is perfect, 1 is a system that always says llr = 0."""
    llr, tar = check_scores(llr, labels, both_classes=True, finite=False)
    return float(0.5 * (np.logaddexp(0.0, -llr[tar]).mean() + np.logaddexp(0.0, llr[~tar]).mean()) / math.log(2))


def pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) least-squares fit of y, by pool-adjacent-violators with a stack."""
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if len(y) == 0:
        return y.copy()
    # Adjacent equal values are never split by PAV: pool them first (one vectorised pass), so the Python loop
    # runs over runs of equal values (for 0/1 labels, the label alternations) rather than over every score.
    start = np.flatnonzero(np.concatenate([[True], y[1:] != y[:-1]]))
    ws = np.add.reduceat(w, start)
    ys = np.add.reduceat(w * y, start)
    sums: list[float] = []
    weights: list[float] = []
    counts: list[int] = []
    run_len = np.diff(np.append(start, len(y))).tolist()
    for s, ww, c in zip(ys.tolist(), ws.tolist(), run_len):
        while sums and sums[-1] * ww >= s * weights[-1]:  # previous block's mean >= this one's: pool
            s += sums.pop()
            ww += weights.pop()
            c += counts.pop()
        sums.append(s)
        weights.append(ww)
        counts.append(c)
    return np.repeat(np.array(sums) / np.array(weights), counts)


def pav_llr(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The optimal monotone map of scores to LLRs (PAV on labels sorted by score, ties pooled), with the
    list's own prior log(N_tar / N_non) removed; LLRs of pure blocks at the ends are -inf / +inf."""
    scores, tar = check_scores(scores, labels, both_classes=True, finite=False)
    uniq, inv = np.unique(scores, return_inverse=True)
    n = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    n_tar = np.bincount(inv, weights=tar, minlength=len(uniq))
    post = pav(n_tar / n, n)
    with np.errstate(divide="ignore"):
        log_odds = np.log(post) - np.log1p(-post)
    prior = math.log(tar.sum()) - math.log((~tar).sum())
    return (log_odds - prior)[inv]


def min_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Cllr of the PAV-optimal LLRs: the discrimination part of Cllr (Cllr - minCllr is calibration loss)."""
    return cllr(pav_llr(scores, labels), labels)


def act_dcf(llr: np.ndarray, labels: np.ndarray, p_target: float) -> float:
    """Normalised DCF of LLR scores decided at the Bayes threshold -logit(p_target)."""
    return actual_dcf(llr, labels, bayes_threshold(p_target), p_target)


def llr_summary(scores: np.ndarray, labels: np.ndarray, p_targets: Sequence[float] = (0.01, 0.05)) -> dict:
    """cllr, min_cllr, and act_dcf / min_dcf per p_target ({p: value}) of LLR scores."""
    return {"cllr": cllr(scores, labels), "min_cllr": min_cllr(scores, labels),
            "act_dcf": {float(p): act_dcf(scores, labels, p) for p in p_targets},
            "min_dcf": {float(p): compute_min_dcf(scores, labels, p) for p in p_targets}}


def _llr_trial_costs(llr: np.ndarray, tar: np.ndarray, p_targets: Sequence[float]) -> np.ndarray:
    """Per-trial additive parts of Cllr and actDCF: (n_trials, 4 + 2P) columns target?, non-target?, target
    cost log2(1 + e^-llr), non-target cost log2(1 + e^llr), then per p_target a miss and a false alarm."""
    cols = [tar, ~tar, np.where(tar, np.logaddexp(0.0, -llr), 0.0) / math.log(2),
            np.where(tar, 0.0, np.logaddexp(0.0, llr)) / math.log(2)]
    for p in p_targets:
        thr = bayes_threshold(p)
        cols += [tar & (llr < thr), ~tar & (llr >= thr)]
    return np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1)


def llr_bootstrap(llrs: Sequence[np.ndarray], labels: np.ndarray, groups: Sequence | np.ndarray | None = None,
                  n_boot: int = 1000, p_targets: Sequence[float] = (0.01, 0.05), seed: int = 0) -> dict:
    """Resampled Cllr and actDCF of one or more LLR score vectors on the same trials, the same resamples of
    `groups` (one key per trial; None: trials) for all: {"cllr": (systems, kept), "act_dcf": {p: (systems,
    kept)}, "n_dropped": resamples without targets or non-targets}. Both figures are sums over trials, so a
    resample is a count vector over groups times the per-group sums (exact, no re-sorting)."""
    from .bootstrap import draw_counts, group_index

    _, tar = check_scores(np.zeros(len(labels)), labels, both_classes=True)
    gi = group_index(groups, len(tar))
    n_groups = int(gi.max()) + 1
    per_group = []
    for llr in llrs:
        llr = np.asarray(llr, dtype=np.float64)
        if llr.shape != tar.shape:
            raise UsageError(f"{len(llr)} LLRs for {len(tar)} trials: need the same trials")
        costs = _llr_trial_costs(llr, tar, p_targets)
        per_group.append(np.stack([np.bincount(gi, weights=costs[:, j], minlength=n_groups)
                                   for j in range(costs.shape[1])], axis=1))
    rng = np.random.default_rng(seed)
    cllr_s = np.empty((len(llrs), n_boot))
    dcf_s = {float(p): np.empty((len(llrs), n_boot)) for p in p_targets}
    bad = np.zeros(n_boot, dtype=bool)
    block = max(1, min(n_boot, (1 << 20) // n_groups))
    for s0 in range(0, n_boot, block):
        b = min(block, n_boot - s0)
        counts = draw_counts(rng, b, n_groups).astype(np.float64)
        for j, g in enumerate(per_group):
            tot = counts @ g  # (b, columns)
            nt, nn = tot[:, 0], tot[:, 1]
            ok = (nt > 0) & (nn > 0)
            bad[s0:s0 + b] |= ~ok
            nt, nn = np.where(ok, nt, 1.0), np.where(ok, nn, 1.0)
            cllr_s[j, s0:s0 + b] = 0.5 * (tot[:, 2] / nt + tot[:, 3] / nn)
            for i, p in enumerate(dcf_s):
                pm, pf = tot[:, 4 + 2 * i] / nt, tot[:, 5 + 2 * i] / nn
                dcf_s[p][j, s0:s0 + b] = (p * pm + (1.0 - p) * pf) / min(p, 1.0 - p)
    if bad.all():
        raise DataError(f"all {n_boot} bootstrap resamples lack targets or non-targets")
    return {"cllr": cllr_s[:, ~bad], "act_dcf": {p: v[:, ~bad] for p, v in dcf_s.items()},
            "n_dropped": int(bad.sum())}


def fit_logistic(x: np.ndarray, labels: np.ndarray, p_target: float = 0.01,
                 ridge: float = RIDGE) -> tuple[np.ndarray, float]:
    """Prior-weighted linear logistic regression: (w, b) with llr = x @ w + b a natural-log LLR (see module)."""
    from scipy.optimize import minimize
    from scipy.special import expit

    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    _, tar = check_scores(np.zeros(len(x)), labels, both_classes=True)
    if not np.isfinite(x).all():
        raise DataError(f"{int((~np.isfinite(x)).any(axis=1).sum())} trials have a NaN or infinite input")
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0  # a constant input cannot be told from the bias: its weight stays at 0 (ridge)
    z = (x - mu) / sd
    weight = np.where(tar, p_target / tar.sum(), (1.0 - p_target) / (~tar).sum())
    sign = np.where(tar, 1.0, -1.0)
    offset = logit(p_target)
    k = z.shape[1]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = sign * (z @ theta[:k] + theta[k] + offset)
        loss = float(weight @ np.logaddexp(0.0, -margin)) + ridge * float(theta[:k] @ theta[:k])
        g = -weight * sign * expit(-margin)  # d loss / d llr, per trial
        return loss, np.append(z.T @ g + 2.0 * ridge * theta[:k], g.sum())

    res = minimize(objective, np.zeros(k + 1), jac=True, method="L-BFGS-B",
                   options={"maxiter": 1000, "gtol": 1e-10, "ftol": 1e-14})
    if not res.success and not np.isfinite(res.fun):
        raise DataError(f"calibration did not converge: {res.message}")
    w = res.x[:k] / sd
    b = float(res.x[k] - w @ mu)
    return w, b


@dataclass
class CalibrationModel:
    """llr = sum(weights[i] * input[i]) + bias; inputs[0] is the score, further inputs are QMF quality measures."""

    inputs: list[str]
    weights: list[float]
    bias: float
    p_target: float  # the training prior
    quality: dict | None = None  # QMF only: how the measures are computed (spkcausal.scoring.qmf)
    dev: dict = field(default_factory=dict)  # facts of the training list: counts, Cllr before / after

    @property
    def kind(self) -> str:
        """"linear" (score only) or "qmf" (score and quality measures)."""
        return "linear" if len(self.inputs) == 1 else "qmf"

    def apply(self, scores: np.ndarray, quality: np.ndarray | None = None) -> np.ndarray:
        """LLRs of raw scores (and, for QMF, the matching quality matrix: one column per inputs[1:])."""
        x = np.asarray(scores, dtype=np.float64)[:, None]
        if self.kind == "qmf":
            q = np.asarray(quality, dtype=np.float64) if quality is not None else None
            if q is None or q.shape != (len(x), len(self.inputs) - 1):
                raise UsageError(f"this QMF model needs {len(self.inputs) - 1} quality measures per trial "
                                 f"({', '.join(self.inputs[1:])})")
            x = np.hstack([x, q])
        return x @ np.asarray(self.weights, dtype=np.float64) + self.bias

    def to_dict(self) -> dict:
        """The JSON form."""
        return {"format": MODEL_FORMAT, "version": 1, "kind": self.kind, "inputs": list(self.inputs),
                "weights": [float(w) for w in self.weights], "bias": float(self.bias),
                "p_target": float(self.p_target), "quality": self.quality, "dev": self.dev}

    def save(self, path: PathLike) -> None:
        """Write the model as JSON, atomically."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> CalibrationModel:
        """Read a model written by save; anything else is a DataError naming the file."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise DataError("file not found", path) from None
        except IsADirectoryError:
            raise DataError("is a directory; expected a calibration model (JSON)", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"not a JSON calibration model ({type(e).__name__}: {e})", path) from None
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT:
            raise DataError(f"not a calibration model (format is not {MODEL_FORMAT!r})", path)
        try:
            if not isinstance(d["inputs"], list) or not isinstance(d["weights"], list):
                raise TypeError("inputs and weights must be lists")
            model = cls(inputs=[str(i) for i in d["inputs"]], weights=[_number(w) for w in d["weights"]],
                        bias=_number(d["bias"]), p_target=_number(d["p_target"]), quality=d.get("quality"),
                        dev=d.get("dev") or {})
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"calibration model lacks or mangles a field ({type(e).__name__}: {e})", path) from None
        if not 0 < model.p_target < 1:
            raise DataError(f"calibration model: p_target {model.p_target} is not in (0, 1)", path)
        if model.quality is not None and not isinstance(model.quality, dict) or not isinstance(model.dev, dict):
            raise DataError("calibration model: quality and dev must be JSON objects", path)
        if len(model.inputs) != len(model.weights) or not model.inputs or model.inputs[0] != "score":
            raise DataError("calibration model: inputs and weights must match, the first input being 'score'", path)
        if not all(math.isfinite(v) for v in [*model.weights, model.bias]):
            raise DataError("calibration model has a non-finite weight", path)
        return model


def _number(v: object) -> float:
    """A JSON number as a float (true / false or a numeric string are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"expected a number, got {v!r}")
    return float(v)


def train_calibration(scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01,
                      quality: np.ndarray | None = None, measures: Sequence[str] = (),
                      quality_settings: dict | None = None) -> CalibrationModel:
    """Fit score (and quality measures, for QMF) -> LLR on a labelled dev list; the model records dev facts."""
    scores = np.asarray(scores, dtype=np.float64)
    x = scores[:, None] if quality is None else np.hstack([scores[:, None], np.asarray(quality, np.float64)])
    if x.shape[1] != 1 + len(measures):
        raise ValueError(f"{x.shape[1] - 1} quality columns for {len(measures)} measure names")
    w, b = fit_logistic(x, labels, p_target)
    model = CalibrationModel(inputs=["score", *measures], weights=w.tolist(), bias=b, p_target=p_target,
                             quality=quality_settings)
    llr = model.apply(scores, quality)
    tar = np.asarray(labels).astype(bool)
    model.dev = {"n_target": int(tar.sum()), "n_nontarget": int((~tar).sum()), "cllr": cllr(llr, labels),
                 "min_cllr": min_cllr(llr, labels),
                 "act_dcf": act_dcf(llr, labels, p_target), "min_dcf": compute_min_dcf(llr, labels, p_target)}
    log.info("%s calibration on %d targets, %d non-targets (p_target %g): Cllr %.4f, minCllr %.4f",
             model.kind, model.dev["n_target"], model.dev["n_nontarget"], p_target, model.dev["cllr"],
             model.dev["min_cllr"])
    return model


def read_labelled(path: PathLike) -> tuple[Trials, np.ndarray]:
    """A labelled score file as (trials with keys and labels, scores)."""
    table = read_scores(path, keys=True, need_labels=True)
    return table.trials(), table.scores


def train_calibration_file(dev_scores: PathLike, out: PathLike, p_target: float = 0.01) -> CalibrationModel:
    """Train linear calibration on a labelled score file and save the model to `out` (JSON, atomic)."""
    table = read_scores(dev_scores, need_labels=True)
    try:
        model = train_calibration(table.scores, table.labels, p_target)
    except DataError as e:
        raise DataError(e.message, dev_scores) from None
    model.dev["scores"] = str(dev_scores)
    model.save(out)
    return model


def apply_calibration_file(model_path: PathLike, scores_path: PathLike, out: PathLike) -> Path:
    """Write `enroll test llr [label]` for every line of a score file, with a linear calibration model."""
    model = CalibrationModel.load(model_path)
    if model.kind != "linear":
        raise UsageError(f"{model_path} is a QMF model: apply it with `spkcausal qmf --model ... --apply ...`")
    table = read_scores(scores_path, keys=True)
    write_scores(out, table.trials(), model.apply(table.scores))
    log.info("%s -> %s (llr = %.4f * score + %.4f)", scores_path, out, model.weights[0], model.bias)
    return Path(out)


def evaluate_llr_files(paths: Sequence[PathLike], p_targets: Sequence[float] = (0.01, 0.05)) -> list[dict]:
    """llr_summary of each labelled score file of LLRs, with its file name and trial counts."""
    return evaluate_score_files(paths, p_targets, summary=llr_summary)


def format_llr_table(results: Sequence[dict]) -> str:
    """Plain-text table: Cllr, minCllr, actDCF and minDCF per p_target, file."""
    ps = list(results[0]["act_dcf"]) if results else []
    head = ["Cllr", "minCllr"] + [f"{k}({p:g})" for p in ps for k in ("actDCF", "minDCF")] + ["file"]
    rows = [[f"{r['cllr']:.4f}", f"{r['min_cllr']:.4f}"]
            + [f"{r[k][p]:.4f}" for p in ps for k in ("act_dcf", "min_dcf")] + [r["file"]] for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.rjust(w) if i < len(head) - 1 else x for i, (x, w) in enumerate(zip(row, widths)))
                     for row in [head, *rows])
