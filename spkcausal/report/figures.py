"""The report's result figures, written beside report.md (matplotlib's Agg canvas: no pyplot state, no torch).

- `fig_eer_groups.png`: per system, EER on the held-out list and on the seen-speaker list by shot group
  (Many / Medium / Few) with the table's uncertainty as error bars: the 95% bootstrap interval for one run,
  mean ± std for several seeds (each seed a small dot).
- `fig_differences.png`: the paired differences of the plain rows (and the TDE rows) from their reference
  as a forest plot: point, 95% interval, the zero line; a filled marker when the interval excludes 0.
- `fig_seeds.png` (only when some system has several seeds): both of the above with every seed drawn, the
  seed spread behind the means and intervals.

Every drawing function returns what it drew, read back from the artists (labels, values, interval ends),
so a test can compare the picture with the table.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..results.evidence import Intervals, row_figures, seed_summary
from ..utils import atomic_path
from .tables import group_runs, run_labels, run_parents

__all__ = ["EER_PANELS", "DIFF_PANELS", "FIGURES", "eer_items", "difference_items", "draw_panels",
           "selected_differences", "save_figure", "write_figures"]

EER_PANELS = [("eer", "Held-out EER (%)"), ("seen_eer_many", "Seen Many EER (%)"),
              ("seen_eer_medium", "Seen Medium EER (%)"), ("seen_eer_few", "Seen Few EER (%)")]
DIFF_PANELS = [(c, "Δ " + t) for c, t in EER_PANELS] + [("acc_few", "Δ Few identification acc. (%)")]
FIGURES = {"eer_groups": "fig_eer_groups.png", "differences": "fig_differences.png", "seeds": "fig_seeds.png"}
PLAIN_VARIANTS = ("cosine", "tde")  # the rows a reader compares; the score normalisations stay in the tables
_SCALE = 100.0  # every plotted column is a fraction shown in percent


def _plain(runs: Mapping) -> list[tuple[tuple[str, str], list[Mapping]]]:
    return [(k, rs) for k, rs in runs.items() if k[1] in PLAIN_VARIANTS and not rs[0].get("decoupled")]


def eer_items(runs: Mapping, labels: Mapping[tuple[str, str], str], p_target: float) -> list[dict]:
    """Per plain run: label and, per EER panel, (value, lower, upper, per-seed values), in percent."""
    items = []
    for key, rs in _plain(runs):
        figs = [row_figures(r, p_target) for r in rs]
        cols: dict[str, tuple[float, float, float, list[float]]] = {}
        for col, _ in EER_PANELS:
            vals = [v for v, _ in (f[col] for f in figs) if v is not None]
            if not vals:
                continue
            if len(rs) == 1:
                v, ci = vals[0], figs[0][col][1]
                lo, hi = (ci if ci else (v, v))
                cols[col] = (_SCALE * v, _SCALE * lo, _SCALE * hi, [])
            else:  # the table's mean ± std over seeds
                mean, std, _ = seed_summary(vals)
                cols[col] = (_SCALE * mean, _SCALE * (mean - std), _SCALE * (mean + std),
                             [_SCALE * x for x in vals])
        if cols:
            items.append({"label": labels[key], "cols": cols})
    return items


def _baseline_like(ref_system: str, base: str, parents: Mapping[str, str | None]) -> bool:
    return ref_system == base or parents.get(ref_system) == base


def selected_differences(summary: Mapping, runs: Mapping,
                         parents: Mapping[str, str | None]) -> list[tuple[tuple[str, str], tuple[str, str], dict]]:
    """(run, reference, differences) of the plain rows against the baseline (or the baseline's fine-tuned run)
    and of the TDE rows against the same system without TDE: what did the method change."""
    base = summary["baseline"]
    out = []
    for d in summary["differences"]:
        key, ref = (d["system"], d["variant"]), (d["reference"][0], d["reference"][1])
        if key not in runs or ref not in runs:
            continue
        plain_vs_base = key[1] == "cosine" and ref[1] == "cosine" and _baseline_like(ref[0], base, parents)
        tde_vs_plain = key[1] == "tde" and ref == (key[0], "cosine") and not runs[key][0].get("decoupled")
        if plain_vs_base or tde_vs_plain:
            out.append((key, ref, d["differences"]))
    return out


def difference_items(summary: Mapping, runs: Mapping, labels: Mapping[tuple[str, str], str],
                     parents: Mapping[str, str | None]) -> list[dict]:
    """Forest rows (selected_differences): per panel (diff, lower, upper, per-seed diffs, significant), in %."""
    items = []
    for key, ref, diffs in selected_differences(summary, runs, parents):
        cols = {}
        decoupled = runs[key][0].get("decoupled")
        for col, _ in DIFF_PANELS:
            e = diffs.get(col)
            if not e or decoupled and not col.startswith("acc_"):  # cRT / tau-norm: the base's embeddings
                continue
            lo, hi = e["ci"] if e.get("ci") else (e["diff"], e["diff"])
            cols[col] = (_SCALE * e["diff"], _SCALE * lo, _SCALE * hi, [_SCALE * x for x in e.get("per_seed", [])],
                         bool(e.get("significant")))
        if cols:
            items.append({"label": f"{labels[key]}\nvs {labels[ref]}", "cols": cols})
    return items


def _row(ax: Any, y: int, v: float, lo: float, hi: float, seeds: Sequence[float], color: str, filled: bool,
         dots: bool) -> dict:
    cont = ax.errorbar([v], [y], xerr=[[v - lo], [hi - v]], fmt="o", color=color, ms=5, capsize=3, lw=1.2,
                       mfc=color if filled else "white", zorder=3)
    if dots and seeds:
        ax.scatter(seeds, [y + 0.22] * len(seeds), s=9, color=color, alpha=0.6, lw=0, zorder=2)
    (x0, _), (x1, _) = cont.lines[2][0].get_segments()[0]  # the interval as drawn
    return {"value": float(cont.lines[0].get_xdata()[0]), "lo": float(x0), "hi": float(x1)}


def draw_panels(fig: Any, items: Sequence[dict], panels: Sequence[tuple[str, str]], title: str, zero: bool,
                dots: bool) -> dict:
    """One panel per column of `fig` (a Figure or SubFigure), one row per item; {col: {label: drawn}}. The EER
    panels share their x axis (groups compare at a glance); a forest plot's panels each centre on 0."""
    used = [(c, t) for c, t in panels if any(c in it["cols"] for it in items)]
    gs = fig.add_gridspec(1, max(len(used), 1))
    colors = [f"C{i % 10}" for i in range(len(items))]
    drawn: dict = {}
    first = None
    for p, (col, name) in enumerate(used):
        ax = fig.add_subplot(gs[0, p], sharey=first, sharex=None if zero else first)
        first = first or ax
        if zero:
            ax.axvline(0.0, color="black", lw=0.8, zorder=1)
        for i, it in enumerate(items):
            if col in it["cols"]:
                v, lo, hi, seeds, *sig = it["cols"][col]
                filled = sig[0] if sig else True
                drawn.setdefault(col, {})[it["label"]] = _row(ax, i, v, lo, hi, seeds, colors[i], filled, dots)
        ax.set_title(name, fontsize=9)
        ax.grid(True, axis="x", lw=0.3)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_yticks(range(len(items)))
        if p == 0:
            ax.set_yticklabels([it["label"] for it in items], fontsize=8)
        else:
            ax.tick_params(axis="y", labelleft=False)
    if first is not None:
        first.set_ylim(len(items) - 0.5, -0.5)  # first row on top, as in the table
    fig.suptitle(title, fontsize=10)
    return drawn


def save_figure(fig: Any, out: Path) -> None:
    """Render a matplotlib Figure on the Agg canvas into `out` (PNG), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)


def _figure(n_rows: int, n_panels: int, per_row: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(3.3 + 2.3 * n_panels, 1.0 + per_row * n_rows), layout="constrained")


def write_figures(rows: Sequence[Mapping], summary: Mapping, out_dir: Path, iv: Intervals) -> dict[str, dict]:
    """Write the figures of the module docstring that have something to show; {name: {"path", "drawn"}}."""

    runs = group_runs(rows)
    labels, parents = run_labels(runs), run_parents(rows, runs)
    eer = eer_items(runs, labels, iv.p_target)
    diff = difference_items(summary, runs, labels, parents)
    several = any(len(rs) > 1 for _, rs in _plain(runs))
    spread = "mean ± std over seeds" if several else "95% bootstrap interval"
    out: dict[str, dict] = {}
    specs = [("eer_groups", eer, EER_PANELS, f"EER by shot group ({spread})", False, 0.32),
             ("differences", diff, DIFF_PANELS, "Paired differences from the reference (A − B, 95% interval; "
              "filled: excludes 0)", True, 0.5)]
    for name, items, panels, title, zero, per_row in specs:
        if not items:
            continue
        fig = _figure(len(items), len({c for it in items for c in it["cols"]}), per_row)
        drawn = draw_panels(fig, items, panels, title, zero, dots=several)
        save_figure(fig, out_dir / FIGURES[name])
        out[name] = {"path": str(out_dir / FIGURES[name]), "drawn": drawn}
    if several and (eer or diff):
        from matplotlib.figure import Figure, SubFigure

        n_panels = max(len({c for it in items for c in it["cols"]}) for items in (eer, diff) if items)
        height = 2.0 + 0.32 * len(eer) + 0.5 * len(diff)
        fig = Figure(figsize=(3.3 + 2.3 * n_panels, height), layout="constrained")
        halves = fig.subfigures(2 if eer and diff else 1, 1, height_ratios=[0.5 + 0.32 * len(eer),
                                                                         0.5 + 0.5 * len(diff)][:2 if eer and diff
                                                                                                else 1])
        sub = [halves] if isinstance(halves, SubFigure) else list(halves.ravel())
        drawn = {}
        if eer:
            drawn["eer_groups"] = draw_panels(sub[0], eer, EER_PANELS, "EER by shot group: every seed (dots), "
                                              "mean ± std", False, dots=True)
        if diff:
            drawn["differences"] = draw_panels(sub[-1], diff, DIFF_PANELS, "Paired differences: every seed "
                                               "(dots), mean with 95% t-interval over seeds", True, dots=True)
        save_figure(fig, out_dir / FIGURES["seeds"])
        out["seeds"] = {"path": str(out_dir / FIGURES["seeds"]), "drawn": drawn}
    return out
