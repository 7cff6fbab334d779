"""Markdown of the report: pipe tables, and the cells of a figure (with its interval or mean ± std over seeds)
and of a difference (with its interval and significance mark), scaled as the report's columns say
(results.evidence.COLUMNS)."""
from __future__ import annotations

from collections.abc import Mapping

from ..results.evidence import COLUMNS, seed_summary

__all__ = ["SCALE", "number", "figure_cell", "diff_cell", "markdown_table"]

SCALE = {c: s for c, _, s in COLUMNS}


def number(v: float, col: str, digits: int | None = None) -> str:
    """A figure of column `col` scaled for display (percent columns: 2 decimals, the others: 4)."""
    scale = SCALE[col]
    d = digits if digits is not None else (2 if scale != 1.0 else 4)
    return f"{scale * v:.{d}f}"


def figure_cell(values: list[tuple], col: str) -> str:
    """One run's cell: 'v [lo, hi]' for one run, 'mean ± std' over seeds, '-' when absent."""
    vals = [v for v, _ in values if v is not None]
    if not vals:
        return "-"
    if len(values) == 1:
        v, ci = values[0]
        return number(v, col) + (f" [{number(ci[0], col, 1 if SCALE[col] != 1 else 3)}, "
                                 f"{number(ci[1], col, 1 if SCALE[col] != 1 else 3)}]" if ci else "")
    mean, std, n = seed_summary(vals)
    return f"{number(mean, col)} ± {number(std, col)}" + ("" if n == len(values) else f" (n={n})")


def diff_cell(d: Mapping | None, col: str) -> str:
    """A difference's cell: '+d [lo, hi]', with ' *' when its interval excludes 0; '-' when absent."""
    if not d:
        return "-"
    digits = 2 if SCALE[col] != 1 else 4
    ci = d.get("ci")
    txt = f"{SCALE[col] * d['diff']:+.{digits}f}"
    if ci:
        txt += f" [{SCALE[col] * ci[0]:+.{digits}f}, {SCALE[col] * ci[1]:+.{digits}f}]"
    return txt + (" *" if d.get("significant") else "")


def markdown_table(head: list[str], body: list[list[str]]) -> list[str]:
    """A pipe table's lines: first column left-aligned, the others right-aligned, columns padded to one width."""
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = [lambda s, w: s.ljust(w)] + [lambda s, w: s.rjust(w)] * (len(head) - 1)
    lines = ["| " + " | ".join(f(c, w) for f, c, w in zip(fmt, head, widths)) + " |"]
    lines.append("|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
    lines += ["| " + " | ".join(f(c, w) for f, c, w in zip(fmt, row, widths)) + " |" for row in body]
    return lines
