"""The paper's two tables for speakers (`spkcausal report --paper-table`; docs/causal.md, "The paper's rows").

Tang, Huang & Zhang (NeurIPS 2020) compare De-confound-TDE with fifteen systems on ImageNet-LT (their Table 3) and
repeat Cosine, Capsule, De-confound and their TDE versions with K = 1 and 2 heads. Here every row is one toolkit
system (an experiment dir name without `_seed<k>`) and one variant of its results.json (`cosine`: plain head /
cosine scoring, `tde`: TDE logits / TDE'd embeddings), in the paper's order, with the columns Many / Medium / Few /
Overall identification accuracy, held-out EER and seen-speaker Few EER. A cell is `v [lo, hi]`: one run, the 95%
bootstrap interval over speakers; several seeds, the mean and the 95% Student-t interval over seeds. A row whose
system is not among the experiments stays in the table, marked "not run".
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..results.evidence import LEVEL, row_figures, t_interval
from ..utils import UsageError
from .markdown import markdown_table

__all__ = ["PaperRow", "PAPER_ROWS", "K_ROWS", "PAPER_COLUMNS", "NOT_RUN", "parse_row_map", "check_row_map",
           "paper_table",
           "paper_tables"]

NOT_RUN = "not run"


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: its name in the paper and the toolkit system + variant that stands for it."""

    name: str
    system: str
    variant: str = "cosine"


# Table 3 of the paper, in its order; Baseline and Decouple-Joint are both the jointly trained AAM system here
# (the decoupled classifiers are built on its embeddings), Decouple-OLTR is the OLTR classifier on them.
PAPER_ROWS = (
    PaperRow("Focal Loss", "focal"),
    PaperRow("OLTR", "oltr"),
    PaperRow("Decouple-OLTR", "aam_oltr"),
    PaperRow("Decouple-Joint", "aam"),
    PaperRow("Decouple-NCM", "aam_ncm"),
    PaperRow("Decouple-cRT", "aam_crt"),
    PaperRow("Decouple-tau-norm", "aam_tau_norm"),
    PaperRow("Decouple-LWS", "aam_lws"),
    PaperRow("Baseline", "aam"),
    PaperRow("Cosine", "cosine_k2"),
    PaperRow("Capsule", "capsule_k2"),
    PaperRow("De-confound", "cnaam"),
    PaperRow("Cosine-TDE", "cosine_k2", "tde"),
    PaperRow("Capsule-TDE", "capsule_k2", "tde"),
    PaperRow("De-confound-TDE", "cnaam", "tde"),
)

# The paper's K table: the three normalisations and their TDE versions with one and two heads.
_K_SYSTEMS = (("Cosine", "cosine_k1", "cosine_k2"), ("Capsule", "capsule_k1", "capsule_k2"),
              ("De-confound", "cnaam_k1", "cnaam"))
K_ROWS = tuple(PaperRow(f"{name}{'-TDE' if v == 'tde' else ''} (K={k})", system, v)
               for v in ("cosine", "tde") for name, *systems in _K_SYSTEMS for k, system in zip((1, 2), systems))

# (figure key of results.evidence.row_figures, header, scale)
PAPER_COLUMNS = (("acc_many", "Many (%)", 100.0), ("acc_medium", "Medium (%)", 100.0), ("acc_few", "Few (%)", 100.0),
                 ("acc_overall", "Overall (%)", 100.0), ("eer", "EER (%)", 100.0),
                 ("seen_eer_few", "Seen Few EER (%)", 100.0))


def parse_row_map(items: Sequence[str] | None) -> dict[str, tuple[str, str | None]]:
    """`NAME=SYSTEM[:VARIANT]` overrides of the rows' systems (e.g. `OLTR=oltr_v2`, `Cosine (K=1)=cos1:tde`):
    NAME one of the rows' names (which may hold '='), SYSTEM a non-empty experiment dir name without `_seed<k>`
    (up to the first ':'), VARIANT, when given, a non-empty name without whitespace; one entry per NAME."""
    names = [r.name for r in PAPER_ROWS + K_ROWS]
    out: dict[str, tuple[str, str | None]] = {}
    for item in items or ():
        name = next((n for n in names if item.startswith(n + "=")), None)
        system, colon, variant = item[len(name) + 1:].partition(":") if name else ("", "", "")
        if name is None or not system or colon and (not variant or any(c.isspace() for c in variant)):
            raise UsageError(f"--paper-map expects NAME=SYSTEM[:VARIANT] with NAME one of the rows "
                             f"({', '.join(r.name for r in PAPER_ROWS)}; K rows like 'Cosine (K=1)'), got {item!r}")
        if name in out:
            raise UsageError(f"--paper-map names row {name!r} twice ({item!r}): one system per row")
        out[name] = (system, variant or None)
    return out


def check_row_map(row_map: Mapping[str, tuple[str, str | None]], rows: Sequence[Mapping]) -> None:
    """Refuse a `--paper-map` entry whose system (or system:variant) is not among the experiments' results."""
    runs = _runs(rows)
    systems = sorted({s for s, _ in runs})
    for name, (system, variant) in row_map.items():
        item = f"{name}={system}" + (f":{variant}" if variant else "")
        if system not in systems:
            raise UsageError(f"--paper-map {item!r}: no experiment of system {system!r} among those given "
                             f"(expected one of {', '.join(systems)})")
        if variant is not None and (system, variant) not in runs:
            have = sorted(v for s, v in runs if s == system)
            raise UsageError(f"--paper-map {item!r}: system {system!r} has no variant {variant!r} in its "
                             f"results.json (expected one of {', '.join(have)})")


def _runs(rows: Sequence[Mapping]) -> dict[tuple[str, str], list[Mapping]]:
    """(system dir name, variant) -> its result rows (one per seed)."""
    runs: dict[tuple[str, str], list[Mapping]] = {}
    for r in rows:
        runs.setdefault((Path(r["system"]).name, r["variant"]), []).append(r)
    return runs


def _cell(values: list[float], cis: list, scale: float, level: float) -> str:
    """'v [lo, hi]' (one run: its bootstrap interval) or 'mean [lo, hi]' (t-interval over seeds); '-' if absent."""
    if not values:
        return "-"
    if len(values) == 1:
        ci = cis[0]
        return f"{scale * values[0]:.2f}" + (f" [{scale * ci[0]:.2f}, {scale * ci[1]:.2f}]" if ci else "")
    mean, ci = t_interval(values, level)
    return f"{scale * mean:.2f}" + (f" [{scale * ci[0]:.2f}, {scale * ci[1]:.2f}]" if ci else "")


def _row_cells(rs: Sequence[Mapping], p_target: float, level: float) -> tuple[list[str], dict]:
    figs = [row_figures(r, p_target) for r in rs]
    cells, content = [], {}
    for key, _, scale in PAPER_COLUMNS:
        pairs = [(v, ci) for v, ci in (f[key] for f in figs) if v is not None]
        cells.append(_cell([v for v, _ in pairs], [ci for _, ci in pairs], scale, level))
        content[key] = [v for v, _ in pairs]
    return cells, content


def paper_table(rows: Sequence[Mapping], table: Sequence[PaperRow] = PAPER_ROWS,
                row_map: Mapping[str, tuple[str, str | None]] | None = None, p_target: float = 0.01,
                level: float = LEVEL) -> tuple[list[str], list[dict]]:
    """Markdown lines of one paper table over result rows (report.results.collect_rows), and its content."""

    runs, body, content = _runs(rows), [], []
    for pr in table:
        system, variant = (row_map or {}).get(pr.name, (pr.system, None))
        variant = variant or pr.variant
        rs = runs.get((system, variant), [])
        seeds = sorted({r["seed"] for r in rs if r["seed"] is not None})
        if not rs:
            body.append([pr.name, f"{system} ({variant})", "-"] + [NOT_RUN] * len(PAPER_COLUMNS))
            content.append({"row": pr.name, "system": system, "variant": variant, "run": False})
            continue
        cells, figs = _row_cells(rs, p_target, level)
        alphas = sorted({r["tde_alpha"] for r in rs if r.get("tde_alpha") is not None})
        what = f"{system} ({variant}" + (f", alpha {alphas[0]:g}-{alphas[-1]:g}" if len(alphas) > 1 else
                                         f", alpha {alphas[0]:g}" if alphas else "") + ")"
        body.append([pr.name, what, str(len(seeds) or len(rs))] + cells)
        content.append({"row": pr.name, "system": system, "variant": variant, "run": True, "seeds": seeds,
                        "figures": figs})
    head = ["Paper row", "System (variant)", "Runs"] + [h for _, h, _ in PAPER_COLUMNS]
    return markdown_table(head, body), content


def paper_tables(rows: Sequence[Mapping], row_map: Mapping[str, tuple[str, str | None]] | None = None,
                 p_target: float = 0.01, level: float = LEVEL) -> tuple[str, dict]:
    """Both tables (the paper's Table 3 rows, then K = 1 / 2) as markdown with their notes, and their content."""
    several = any(len([x for x in rows if x["system"] == r["system"] and x["variant"] == r["variant"]]) > 1
                  for r in rows)
    main, main_c = paper_table(rows, PAPER_ROWS, row_map, p_target, level)
    ktab, k_c = paper_table(rows, K_ROWS, row_map, p_target, level)
    how = ("mean [95% Student-t interval over seeds]" if several else
           "figure [95% bootstrap interval over test speakers]")
    notes = (f"Cells: {how}; identification accuracy on held-out utterances of the training speakers (mean of "
             "per-speaker accuracies by shot group), EER on the held-out-speaker list, Seen Few EER on the "
             "seen-speaker list's Few enrolment speakers. Decoupled classifiers (NCM, cRT, tau-norm, LWS, "
             "Decouple-OLTR) have their base's embeddings, so their two EER columns are the base's. "
             f"'{NOT_RUN}': the row's system is not among the experiments (docs/causal.md maps every row).")
    text = "\n".join(["**The paper's Table 3 rows, for speakers**", "", *main, "",
                      "**K = 1 / 2: Cosine, Capsule, De-confound and their TDE versions**", "", *ktab, "",
                      notes]) + "\n"
    return text, {"paper_rows": main_c, "k_rows": k_c}
