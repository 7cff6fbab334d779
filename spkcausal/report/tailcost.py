"""The cost of the long tail, and the share of it each method recovers (the long-tail protocol, docs/recipes.md).

The protocol trains the baseline system twice per seed: on a long-tailed subset (system `<baseline>`) and on
its balanced control, the same speakers and utterance count spread evenly (the plan's system
`<baseline>+control`, run `<baseline>_control[_seed<k>]`; its run.json's `control` and `base` mark it).
For a figure x where lower is better (held-out EER and minDCF, seen-speaker Many / Medium / Few EER; the groups
by the long-tailed counts):

    tail cost        c_k = x(baseline, seed k) - x(control, seed k)
    recovered share  r   = mean_k (x(baseline, k) - x(method, k)) / mean_k c_k      (seeds all three have)

and for Few identification accuracy, where higher is better, both with the sign turned (c_k = control - baseline,
gain = method - baseline), so that a positive cost always means "the tail hurts" (COST_COLUMNS).

The tail cost is the mean of the per-seed c_k with a Student-t interval over seeds (one seed each: the paired
bootstrap of evidence.paired_differences). The share is a ratio of means of paired per-seed values; its
interval is Fieller's: the set of r for which the per-seed values a_k - r c_k (a_k = the numerator's) have a
mean that a Student-t test at the level does not reject as 0. It accounts for the uncertainty of the tail cost
as well as of the gain, and is unbounded (reported as such) when the tail cost itself is not significantly
non-zero. One seed: the point value only. 100% = the method closes the whole gap to the balanced control.
Every cost also carries its power figures over the seeds used (results.power: the interval's half-width, the
minimum detectable effect at 80% power, and the seeds the issue's half-width targets need, HALF_WIDTH_TARGETS).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..results.evidence import DEFAULT_INTERVALS, LEVEL, Intervals, paired_differences, row_figures, t_interval
from ..results.power import power_figures
from .markdown import SCALE, markdown_table

__all__ = ["COST_COLUMNS", "TAIL_COLUMNS", "HALF_WIDTH_TARGETS", "cost_header", "cost_cell", "share_cell",
           "control_system", "fieller_ratio", "tail_cost", "tail_cost_lines"]

# (key, header, sign): sign +1 where lower is better (cost = baseline - control), -1 where higher is better
COST_COLUMNS = (("eer", "Held-out EER", 1), ("min_dcf", "Held-out minDCF", 1), ("seen_eer_many", "Seen Many EER", 1),
                ("seen_eer_medium", "Seen Medium EER", 1), ("seen_eer_few", "Seen Few EER", 1),
                ("acc_few", "Few identification acc.", -1))
TAIL_COLUMNS = tuple((c, h) for c, h, _ in COST_COLUMNS)
_SIGN = {c: s for c, _, s in COST_COLUMNS}
# the precision targets for the tail cost's 95% interval (fractions: 1 and 2 EER points)
HALF_WIDTH_TARGETS = {"eer": 0.01, "seen_eer_few": 0.02}


def cost_header(col: str, header: str) -> str:
    """A cost column's header with its unit: percent points for EER / accuracy, minDCF as is."""
    return f"{header} (%)" if SCALE[col] != 1.0 else header


def control_system(baseline: str, runs: Mapping[tuple[str, str], Sequence[Mapping]]) -> str | None:
    """The system key of the baseline's balanced control among the runs (a row's `control_of`, from run.json), or
    None."""
    return next((s for (s, _), rs in runs.items() if rs and rs[0].get("control_of") == baseline), None)


def fieller_ratio(num: Sequence[float], den: Sequence[float], level: float = LEVEL) -> dict:
    """mean(num) / mean(den) of paired per-seed values with Fieller's interval (None, bounded False, when the
    denominator's mean is not significantly non-zero; None with fewer than two seeds)."""
    from scipy.stats import t

    a, d = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if len(a) != len(d) or len(a) == 0:
        raise ValueError(f"need as many numerators as denominators, got {len(a)} and {len(d)}")
    ratio = float(a.mean() / d.mean()) if d.mean() != 0 else math.nan
    n = len(a)
    if n < 2:
        return {"ratio": ratio, "ci": None, "bounded": None, "n_seeds": n}
    cov = np.cov(np.stack([a, d]), ddof=1)
    q = float(t.ppf((1.0 + level) / 2.0, n - 1)) ** 2 / n
    # (abar - r dbar)^2 <= q Var_k(a_k - r d_k): a quadratic A r^2 - 2 B r + C <= 0
    qa = d.mean() ** 2 - q * cov[1, 1]
    qb = a.mean() * d.mean() - q * cov[0, 1]
    qc = a.mean() ** 2 - q * cov[0, 0]
    if qa <= 0:
        return {"ratio": ratio, "ci": None, "bounded": False, "n_seeds": n}
    root = math.sqrt(max(0.0, qb * qb - qa * qc))
    return {"ratio": ratio, "ci": [float((qb - root) / qa), float((qb + root) / qa)], "bounded": True, "n_seeds": n}


def _by_seed(rs: Sequence[Mapping]) -> dict:
    return {r["seed"]: r for r in rs}


def _values(rows: Mapping, seeds: Sequence, col: str, p_target: float) -> list[float | None]:
    return [row_figures(rows[k], p_target)[col][0] for k in seeds]


def _cost_of(b: Mapping, c: Mapping, col: str, iv: Intervals) -> dict | None:
    """One column's tail cost over the seeds both runs have a value for (module docstring), with its power."""
    seeds = [k for k in b if k in c]
    xb, xc = _values(b, seeds, col, iv.p_target), _values(c, seeds, col, iv.p_target)
    keep = [(k, p, q) for k, p, q in zip(seeds, xb, xc) if p is not None and q is not None]
    if not keep:
        return None
    per = [_SIGN[col] * (p - q) for _, p, q in keep]
    mean, ci = t_interval(per, iv.level)
    if len(per) == 1:  # one run each: the paired bootstrap over speakers, when the score files line up
        pair = paired_differences(b[keep[0][0]], c[keep[0][0]], iv.p_target, iv.n_boot, iv.level)
        ci = (pair.get(col) or {}).get("ci")
        ci = None if ci is None else sorted(_SIGN[col] * x for x in ci)
    return {"cost": mean, "ci": ci, "significant": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
            "seeds": [k for k, _, _ in keep], "per_seed": per,
            "power": power_figures(per, HALF_WIDTH_TARGETS.get(col), iv.level)}


def tail_cost(runs: Mapping[tuple[str, str], Sequence[Mapping]], baseline: str, iv: Intervals = DEFAULT_INTERVALS,
              tde_base: Mapping[str, str] | None = None) -> dict | None:
    """Tail cost per scoring variant and every other long-tailed system's recovered share (module docstring);
    None without a control system. A method's variant is paired with the baseline's same variant, or for a TDE
    variant the baseline has not, with its plain one (`tde_base`)."""
    control = control_system(baseline, runs)
    if control is None:
        return None
    tde_base = tde_base or {}
    costs: dict[str, dict] = {}
    for (s, v), rs in runs.items():
        if s != baseline or (control, v) not in runs:
            continue
        b, c = _by_seed(rs), _by_seed(runs[(control, v)])
        cols = {col: d for col, _ in TAIL_COLUMNS if (d := _cost_of(b, c, col, iv)) is not None}
        if cols:
            costs[v] = cols
    shares = []
    for (s, w), rs in runs.items():
        if s in (baseline, control):
            continue
        base_v = w if w in costs else tde_base.get(w)
        if base_v is None or base_v not in costs:
            continue
        m, b = _by_seed(rs), _by_seed(runs[(baseline, base_v)])
        cols = {}
        for col, cost in costs[base_v].items():
            if rs[0].get("decoupled") and not col.startswith("acc_"):
                continue  # a decoupled classifier has its base's embeddings: no verification of its own
            trip = [(k, b[k], m[k]) for k in cost["seeds"] if k in m]
            gains, dens = [], []
            for k, rb, rm in trip:
                fb, fm = row_figures(rb, iv.p_target)[col][0], row_figures(rm, iv.p_target)[col][0]
                if fb is not None and fm is not None:  # fb: always (the cost's seeds have baseline values)
                    gains.append(_SIGN[col] * (fb - fm))
                    dens.append(cost["per_seed"][cost["seeds"].index(k)])
            if gains:
                fr = fieller_ratio(gains, dens, iv.level)
                ci = fr["ci"]
                cols[col] = {"share": fr["ratio"], "ci": ci, "bounded": fr["bounded"], "n_seeds": fr["n_seeds"],
                             "significant": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
                             "per_seed_gain": gains, "per_seed_cost": dens}
        if cols:
            shares.append({"system": s, "variant": w, "reference_variant": base_v, "columns": cols})
    return {"control": control, "baseline": baseline, "costs": costs, "shares": shares,
            "method": "tail cost: mean of per-seed differences, Student-t interval; share: ratio of means, "
                      "Fieller interval over seeds"}


def cost_cell(d: Mapping | None, col: str) -> str:
    """A tail cost's cell: '+c [lo, hi]' (percent points, minDCF as is), ' *' when its interval excludes 0."""
    if not d:
        return "-"
    scale = SCALE[col]
    digits = 2 if scale != 1.0 else 4
    txt = f"{scale * d['cost']:+.{digits}f}"
    if d.get("ci"):
        txt += f" [{scale * d['ci'][0]:+.{digits}f}, {scale * d['ci'][1]:+.{digits}f}]"
    return txt + (" *" if d.get("significant") else "")


def share_cell(d: Mapping | None) -> str:
    """A recovered share's cell: 'r% [lo%, hi%]', '[unbounded]' when Fieller's set is, ' *' when it excludes 0."""
    if not d or d["share"] is None or not math.isfinite(d["share"]):
        return "-"
    def pct(x: float) -> str:
        return f"{int(round(100 * x))}%"  # int: no "-0%"

    txt = pct(d["share"])
    if d.get("ci"):
        txt += f" [{pct(d['ci'][0])}, {pct(d['ci'][1])}]"
    elif d.get("bounded") is False:
        txt += " [unbounded]"
    return txt + (" *" if d.get("significant") else "")


def tail_cost_lines(result: Mapping | None, runs: Mapping, label: Callable[[Sequence[Mapping]], str],
                    variants: Sequence[str]) -> list[str]:
    """Markdown lines of the "Tail cost" table (the listed reference variants only); none without a control."""
    if not result:
        return []

    body = []
    base, control = result["baseline"], result["control"]
    for v, cols in result["costs"].items():
        if v not in variants:
            continue
        body.append([f"Tail cost: {label(runs[(base, v)])}", label(runs[(control, v)])]
                    + [cost_cell(cols.get(c), c) for c, _ in TAIL_COLUMNS])
        for sh in result["shares"]:
            if sh["reference_variant"] == v:
                body.append([f"Share recovered: {label(runs[(sh['system'], sh['variant'])])}", label(runs[(base, v)])]
                            + [share_cell(sh["columns"].get(c)) for c, _ in TAIL_COLUMNS])
    if not body:
        return []
    return (["", "**Tail cost**: the baseline on the long-tailed set minus the same on its balanced control (same "
                 "speakers and utterances, spread evenly), in EER points (minDCF as is; identification accuracy: "
                 "control minus baseline, so that a positive cost always means the tail hurts); the share of it a "
                 "method recovers, (baseline - method) / tail cost, sign turned for accuracy (100% closes the gap). "
                 "Tail cost: mean over seeds with a 95% Student-t interval; share: ratio of means with Fieller's "
                 "95% interval over seeds; * = the interval excludes 0. Many / Medium / Few = by training "
                 "utterances in the long-tailed set.", ""]
            + markdown_table(["System", "vs"] + [cost_header(c, h) for c, h in TAIL_COLUMNS], body))
