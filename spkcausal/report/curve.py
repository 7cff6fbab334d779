"""The tail-cost curve (`spkcausal tail-curve`, issue 30 item 1): the long-tail protocol's tail cost at several
imbalances R and in several settings (from scratch, fine-tuned from a pretrained extractor), one table and one
figure.

Each point (setting, R) is an experiments dir whose runs (found through their run.json) include the baseline
over seeds and its balanced control (report.tailcost); other systems there add their recovered shares. Per point
and cost column (tailcost.COST_COLUMNS): the mean per-seed cost with its 95% Student-t interval, the seeds used
and the power figures (results.power: standard deviation, half-width, minimum detectable effect at 80% power,
the seeds the issue's half-width targets need). With `sessions`, the seen-speaker costs within each session
half too (results.halves), the halves by the long-tailed set's sessions for the control as for the baseline.

Written as OUT/tail_curve.json (format "spkcausal-tail-curve", version 1; every path relative to OUT, system
names without their dirs, so a copied tree reports as the original), OUT/tail_curve.md and OUT/tail_curve.png
(cost against R per column, error bars the 95% intervals, one line per setting).
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.sessions import HALVES
from ..experiments.runs import RUN_FILE, read_run
from ..results.evidence import DEFAULT_INTERVALS, Intervals
from ..results.halves import half_row, session_halves
from ..results.records import RESULTS_FILE, collect_rows
from ..scoring.metrics import GROUPS
from ..utils import DataError, PathLike, UsageError, write_text_atomic
from .figures import save_figure
from .markdown import SCALE, markdown_table
from .tables import group_runs
from .tailcost import COST_COLUMNS, HALF_WIDTH_TARGETS, cost_cell, cost_header, share_cell, tail_cost

__all__ = ["CURVE_FORMAT", "CURVE_VERSION", "CurveOptions", "CurveSpec", "parse_spec", "protocol_runs", "curve_point",
           "tail_curve", "curve_markdown", "draw_curve", "write_tail_curve", "group_state", "strict_json", "HALF_NAMES",
           "SEEN_COLUMNS"]

CURVE_FORMAT, CURVE_VERSION = "spkcausal-tail-curve", 1
FILES = ("tail_curve.json", "tail_curve.md", "tail_curve.png")
SEEN_COLUMNS = tuple(f"seen_eer_{g}" for g in GROUPS)
_SPEC = re.compile(r"([A-Za-z0-9_.+-]+):([^=]+)=(.+)")
HALF_NAMES = {"train_session": "test session in training", "new_session": "new test session"}


@dataclass(frozen=True)
class CurveOptions:
    """What the curve reports: the scoring variant, the baselines (names; where a dir has controls of several
    systems, its point's baseline is the one of these its controls are of),
    the systems besides the baseline and its control whose shares it lists (None: every system of the dir),
    and the session halves (with the seen list's test data dir, when not the one the rows record)."""

    variant: str = "cosine"
    baseline: tuple[str, ...] | None = None
    systems: tuple[str, ...] | None = None
    sessions: bool = False
    test_data: str | None = None


@dataclass(frozen=True)
class CurveSpec:
    """One point of the curve: a setting's name, the imbalance R and the experiments dir holding its runs."""

    setting: str
    imbalance: float
    path: Path


def parse_spec(text: str) -> CurveSpec:
    """`SETTING:R=DIR` (e.g. `scratch:30=out-lt30/exp`) as a CurveSpec; R a finite number > 1."""
    m = _SPEC.fullmatch(text)
    if not m:
        raise UsageError(f"--run {text!r}: expected SETTING:R=DIR, e.g. scratch:30=demo-lt30/exp")
    try:
        r = float(m.group(2))
    except ValueError:
        r = math.nan
    if not (math.isfinite(r) and r > 1):
        raise UsageError(f"--run {text!r}: the imbalance R must be a number > 1, got {m.group(2)!r}")
    return CurveSpec(m.group(1), r, Path(m.group(3)))


def protocol_runs(exp_root: PathLike, systems: Sequence[str] | None = None) -> tuple[list[Path], list[Path]]:
    """(the run dirs of an experiments dir that have results, those that have run.json but no results yet);
    a run is a subdir with run.json (experiments.runs), in name order; with `systems`, only the runs of those
    systems (run.json's system), the controls and the systems they control."""
    root = Path(exp_root)
    if not root.is_dir():
        raise DataError("not a directory of experiments", root)
    runs = sorted(p for p in root.iterdir() if (p / RUN_FILE).is_file())
    if systems is not None:
        recs = {p: read_run(p) for p in runs}
        keep = set(systems) | {r.base for r in recs.values() if r is not None and r.control}
        runs = [p for p, r in recs.items() if r is not None and (r.control or r.system in keep)]
    return [p for p in runs if (p / RESULTS_FILE).is_file()], [p for p in runs if not (p / RESULTS_FILE).is_file()]


def _baseline(rows: Sequence[Mapping], baseline: Sequence[str] | None, where: Path) -> str:
    """The baseline system key: the one the control runs are of (run.json base), or the one of `baseline`'s names
    among them (a curve over several trees names each tree's baseline)."""
    bases = list(dict.fromkeys(r["control_of"] for r in rows if r.get("control_of")))
    if not bases:
        raise DataError("no balanced-control run with results (run.json control: true): not a long-tail protocol "
                        "tree, or its control is not scored yet", where)
    if baseline is not None:
        hit = [b for b in bases if Path(b).name in baseline]
        if len(hit) != 1:
            raise UsageError(f"--baseline {' '.join(baseline)}: the controls in {where} are of "
                             f"{', '.join(Path(b).name for b in bases)}; expected exactly one of them named")
        return hit[0]
    if len(bases) > 1:
        raise UsageError(f"{where} has controls of several systems ({', '.join(Path(b).name for b in bases)}): "
                         "give --baseline")
    return bases[0]


def group_state(halves: Sequence[Mapping], half: str, group: str) -> str | None:
    """Why the runs' session half has no EER for a shot group ('no trials', 'no target trials', 'no non-target
    trials'), or None when some run has one."""
    states = [(h["halves"][half].get("groups") or {}).get(group) for h in halves]
    if any(s is not None and "eer" in s for s in states):
        return None
    if all(s is None for s in states):
        return "no trials"
    if all(s is None or s.get("n_target", 0) == 0 for s in states):
        return "no target trials"
    if all(s is None or s.get("n_nontarget", 0) == 0 for s in states):
        return "no non-target trials"
    return "too few trials"


def _names(d: Any) -> Any:
    """A tail-cost result with system keys (paths) reduced to their names, for a movable JSON."""
    out = dict(d)
    for k in ("baseline", "control", "system"):
        if isinstance(out.get(k), str):
            out[k] = Path(out[k]).name
    return out


def _point_halves(rows: Sequence[Mapping], base: str, control: str, variant: str, iv: Intervals,
                  test_data: PathLike | None) -> dict:
    """Per session half: the seen columns' tail cost and, per shot group, why a cost is missing."""
    mine = [r for r in rows if r["system"] in (base, control) and r["variant"] == variant]
    halves = [session_halves(r, test_data, None, (iv.p_target,), iv.n_boot, iv.level) for r in mine]
    out: dict = {}
    for half in HALVES:
        runs = group_runs([half_row(r, h, half) for r, h in zip(mine, halves)])
        tc = tail_cost(runs, base, iv)
        costs = ((tc or {}).get("costs") or {}).get(variant, {})
        out[half] = {"costs": {c: costs[c] for c in SEEN_COLUMNS if c in costs},
                     "missing": {f"seen_eer_{g}": why for g in GROUPS
                                 if (why := group_state(halves, half, g)) is not None},
                     "n_trials": sorted({h["halves"][half]["n_trials"] for h in halves})}
    return out


def curve_point(spec: CurveSpec, out_dir: Path, opts: CurveOptions = CurveOptions(),
                iv: Intervals = DEFAULT_INTERVALS) -> dict:
    """One point of the curve (module docstring), its paths relative to `out_dir`."""
    variant = opts.variant
    have, pending = protocol_runs(spec.path, opts.systems)
    if not have:
        raise DataError("no run with results (a subdir with run.json and results.json)", spec.path)
    tde = "tde" if variant == "cosine" else f"tde_{variant}"
    rows = collect_rows(have, [variant, tde])
    base = _baseline(rows, opts.baseline, spec.path)
    tc = tail_cost(group_runs(rows), base, iv, {tde: variant})
    if tc is None or variant not in tc["costs"]:
        raise DataError(f"the baseline {Path(base).name} and its control have no {variant!r} rows in common",
                        spec.path)
    point = {"setting": spec.setting, "imbalance": spec.imbalance,
             "runs": Path(os.path.relpath(spec.path.resolve(), out_dir.resolve())).as_posix(),
             "baseline": Path(base).name, "control": Path(tc["control"]).name,
             "n_runs": len({r["exp"] for r in rows}), "not_scored": [p.name for p in pending],
             "costs": tc["costs"][variant],
             "shares": [_names(s) for s in tc["shares"] if s["reference_variant"] == variant]}
    if opts.sessions:
        point["halves"] = _point_halves(rows, base, tc["control"], variant, iv, opts.test_data)
    return point


def tail_curve(specs: Sequence[CurveSpec], out_dir: PathLike, opts: CurveOptions = CurveOptions(),
               iv: Intervals = DEFAULT_INTERVALS) -> dict:
    """The curve's content (module docstring): one point per spec, ordered by setting (as first given) and R."""
    if not specs:
        raise UsageError("no --run given")
    seen: set[tuple[str, float]] = set()
    for s in specs:
        if (s.setting, s.imbalance) in seen:
            raise UsageError(f"--run {s.setting}:{s.imbalance:g} is given twice")
        seen.add((s.setting, s.imbalance))
    order = list(dict.fromkeys(s.setting for s in specs))
    specs = sorted(specs, key=lambda s: (order.index(s.setting), s.imbalance))
    out = Path(out_dir)
    points = [curve_point(s, out, opts, iv) for s in specs]
    return {"format": CURVE_FORMAT, "version": CURVE_VERSION, "variant": opts.variant, "p_target": iv.p_target,
            "level": iv.level, "n_boot": iv.n_boot, "sessions": opts.sessions,
            "columns": [{"key": c, "header": h, "sign": s, "target_half_width": HALF_WIDTH_TARGETS.get(c)}
                        for c, h, s in COST_COLUMNS],
            "points": points}


def strict_json(obj: Any) -> Any:
    """`obj` with every non-finite float as None (a share over a zero cost is NaN), so that the file is JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _r(x: float) -> str:
    return f"{x:g}"


def _with_mde(d: Mapping | None, col: str) -> str:
    cell = cost_cell(d, col)
    mde = ((d or {}).get("power") or {}).get("mde")
    if mde is None:
        return cell
    return f"{cell}; MDE {SCALE[col] * mde:.{2 if SCALE[col] != 1.0 else 4}f}"


def curve_markdown(curve: Mapping) -> str:
    """The curve's tables: the cost per setting and R (mean [95% CI]; MDE), the precision of the targeted
    columns, the recovered shares, and, with sessions, the seen costs within each session half."""
    cols = [(c["key"], c["header"]) for c in curve["columns"]]
    lines = [f"**Tail cost by imbalance** (variant {curve['variant']}): baseline on the long-tailed set minus its "
             "balanced control per seed (identification accuracy: control minus baseline; positive = the tail "
             "hurts), mean over seeds [95% Student-t interval]; * = the interval excludes 0; MDE = minimum "
             "detectable effect of a two-sided paired t-test at 80% power with these seeds, "
             "(t_0.975,n-1 + t_0.80,n-1) s / sqrt(n). EER and accuracy in percent points.", ""]
    body = [[p["setting"], _r(p["imbalance"]), str(max((d["power"]["n_seeds"] for d in p["costs"].values()),
                                                       default=0))]
            + [_with_mde(p["costs"].get(c), c) for c, _ in cols] for p in curve["points"]]
    lines += markdown_table(["Setting", "R", "Seeds"] + [cost_header(c, h) for c, h in cols], body)
    targeted = [(c, h) for c, h in cols if c in HALF_WIDTH_TARGETS]
    lines += ["", "**Precision against the issue's targets** (95% half-width at most "
              + ", ".join(f"±{100 * HALF_WIDTH_TARGETS[c]:g} point{'s' * (HALF_WIDTH_TARGETS[c] != 0.01)} on {h}"
                         for c, h in targeted)
              + "): per-seed standard deviation s, the interval's half-width with the seeds used, the exact power "
              "at the MDE (noncentral t), and the seeds the target needs at this s.", ""]
    body = []
    for p in curve["points"]:
        row = [p["setting"], _r(p["imbalance"])]
        for c, _ in targeted:
            pw = (p["costs"].get(c) or {}).get("power")
            if not pw or pw["sd"] is None:
                row.append("-" if not pw else f"one seed (n={pw['n_seeds']})")
                continue
            need = pw["seeds_needed"]
            row.append(f"s {100 * pw['sd']:.2f}, ±{100 * pw['half_width']:.2f} (n={pw['n_seeds']}), power at MDE "
                       f"{pw['power_at_mde']:.2f}, needs {need if need is not None else '> 10000'}")
        body.append(row)
    lines += markdown_table(["Setting", "R"] + [f"{h}" for _, h in targeted], body)
    shares = [(p, s) for p in curve["points"] for s in p["shares"]]
    if shares:
        lines += ["", "**Share of the tail cost recovered** ((baseline - method) / tail cost, sign turned for "
                  "accuracy; ratio of means with Fieller's 95% interval over seeds).", ""]
        lines += markdown_table(["Setting", "R", "System"] + [cost_header(c, h) for c, h in cols],
                                [[p["setting"], _r(p["imbalance"]), s["system"] + ("" if s["variant"] == s[
                                    "reference_variant"] else f" ({s['variant']})")]
                                 + [share_cell(s["columns"].get(c)) for c, _ in cols] for p, s in shares])
    if curve.get("sessions"):
        lines += _halves_lines(curve)
    return "\n".join(lines) + "\n"


def _halves_lines(curve: Mapping) -> list[str]:
    heads = [cost_header(c, f"Seen {c.rsplit('_', 1)[1].capitalize()} EER") for c in SEEN_COLUMNS]
    body = []
    empty = {h: True for h in HALVES}
    for p in curve["points"]:
        for half in HALVES:
            h = p["halves"][half]
            empty[half] &= h["n_trials"] == [0]
            cells = [cost_cell(h["costs"][c], c) if c in h["costs"] else h["missing"].get(c, "-")
                     for c in SEEN_COLUMNS]
            v = h["n_trials"]
            n = str(v[0]) if len(v) == 1 else f"{v[0]}-{v[-1]}"
            body.append([p["setting"], _r(p["imbalance"]), HALF_NAMES[half], n] + cells)
    lines = ["", "**Tail cost within session halves**: the seen-speaker list split by whether the test "
             "utterance's session occurs in its speaker's training data (the long-tailed set's, for the control "
             "too: the same trials in each half), the cost by shot group within each half as above.", ""]
    lines += markdown_table(["Setting", "R", "Half", "Trials"] + heads, body)
    for half, none in empty.items():
        if none:
            lines += ["", f"The half '{HALF_NAMES[half]}' is empty at every point: the split is degenerate here "
                          "(no test utterance is " + ("from a session its speaker trained on" if half ==
                                                       "train_session" else "from a new session") + ")."]
    return lines


def draw_curve(curve: Mapping, path: Path) -> dict:
    """tail_curve.png: one panel per cost column that has a point, cost against R (log axis; settings drawn a
    little apart), error bars the 95% intervals, one line per setting; {column: {setting: [(R, cost, lo, hi),
    ...]}} in the figure's units, read back from the artists."""
    from matplotlib.figure import Figure

    cols = [(c["key"], c["header"]) for c in curve["columns"]
            if any(c["key"] in p["costs"] for p in curve["points"])]
    settings = list(dict.fromkeys(p["setting"] for p in curve["points"]))
    rows = max(1, math.ceil(len(cols) / 3))
    fig = Figure(figsize=(3.2 * min(3, max(1, len(cols))), 2.8 * rows), layout="constrained")
    rs = sorted({p["imbalance"] for p in curve["points"]})
    drawn: dict = {}
    for i, (col, head) in enumerate(cols):
        ax = fig.add_subplot(rows, min(3, len(cols)), i + 1)
        ax.axhline(0.0, color="black", lw=0.8)
        scale = SCALE[col]
        for j, s in enumerate(settings):
            pts = [(p["imbalance"], p["costs"][col]) for p in curve["points"] if p["setting"] == s and col in
                   p["costs"]]
            if not pts:
                continue
            dodge = 10 ** (0.02 * (j - (len(settings) - 1) / 2))  # settings at one R side by side
            y = [scale * d["cost"] for _, d in pts]
            # max(0, .): a one-seed point's bootstrap interval need not hold its value
            lo = [max(0.0, y_ - scale * d["ci"][0]) if d.get("ci") else 0.0 for y_, (_, d) in zip(y, pts)]
            hi = [max(0.0, scale * d["ci"][1] - y_) if d.get("ci") else 0.0 for y_, (_, d) in zip(y, pts)]
            cont = ax.errorbar([r * dodge for r, _ in pts], y, yerr=[lo, hi], fmt="o-", color=f"C{j % 10}",
                               capsize=3, ms=4, lw=1.2, label=s)
            bars = cont.lines[2][0].get_segments()  # the intervals as drawn
            xs = np.asarray(cont.lines[0].get_xdata(), dtype=float).tolist()
            ys = np.asarray(cont.lines[0].get_ydata(), dtype=float).tolist()
            drawn.setdefault(col, {})[s] = [(float(x / dodge), float(v), float(seg[0][1]), float(seg[1][1]))
                                            for x, v, seg in zip(xs, ys, bars)]
        ax.set_xscale("log")
        ax.margins(x=0.12)
        ax.set_xticks(rs, [_r(r) for r in rs])
        ax.minorticks_off()
        ax.set_xlabel("imbalance R", fontsize=8)
        ax.set_title(cost_header(col, head) + " cost", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, lw=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"Tail cost against imbalance (variant {curve['variant']}; 95% intervals over seeds)", fontsize=10)
    save_figure(fig, path)
    return drawn


def write_tail_curve(specs: Sequence[CurveSpec], out_dir: PathLike, opts: CurveOptions = CurveOptions(),
                     iv: Intervals = DEFAULT_INTERVALS) -> tuple[str, dict]:
    """Write OUT/tail_curve.{json,png,md} (the markdown last: it appears when the rest is complete); the markdown
    and the content."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = strict_json(tail_curve(specs, out, opts, iv))
    if opts.sessions and opts.test_data is not None:
        curve["test_data"] = Path(os.path.relpath(Path(opts.test_data).resolve(), out.resolve())).as_posix()
    write_text_atomic(out / FILES[0], json.dumps(curve, indent=1, allow_nan=False) + "\n")
    draw_curve(curve, out / FILES[2])
    text = curve_markdown(curve)
    write_text_atomic(out / FILES[1], f"![tail cost against R]({FILES[2]})\n\n" + text)
    return text, curve
