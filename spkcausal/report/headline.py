"""`summary.md`: the headline rows of a report (plain and TDE rows: held-out EER, seen Few EER, Few
identification accuracy, and what each changed against its reference), with links to the figures and to the
full report.md beside it."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..results.evidence import Intervals, row_figures
from .figures import PLAIN_VARIANTS, selected_differences
from .markdown import diff_cell, figure_cell, markdown_table
from .tables import group_runs, run_labels, run_parents

__all__ = ["HEADLINE_COLUMNS", "headline_markdown"]

HEADLINE_COLUMNS = ["eer", "seen_eer_few", "acc_few"]
_HEAD = {"eer": "EER (%)", "seen_eer_few": "Seen Few EER (%)", "acc_few": "Few acc. (%)"}


def headline_markdown(rows: Sequence[Mapping], summary: Mapping, figures: Mapping[str, str],
                      iv: Intervals) -> str:
    """summary.md's text: one row per plain / TDE run, its figures and its differences from its reference."""

    runs = group_runs(rows)
    labels = run_labels(runs)
    refs = {key: (ref, diffs) for key, ref, diffs in selected_differences(summary, runs, run_parents(rows, runs))}
    body = []
    for key, rs in runs.items():
        if key[1] not in PLAIN_VARIANTS:
            continue
        figs = [row_figures(r, iv.p_target) for r in rs]
        ref, diffs = refs.get(key, (None, {}))
        # cRT / tau-norm: the base's embeddings, so its verification figures; only identification is theirs
        cols = [c for c in HEADLINE_COLUMNS if not rs[0].get("decoupled") or c.startswith("acc_")]
        body.append([labels[key]]
                    + [figure_cell([f[c] for f in figs], c) if c in cols else "-" for c in HEADLINE_COLUMNS]
                    + [labels[ref] if ref else "-"]
                    + [diff_cell(diffs.get(c), c) if c in cols else "-" for c in HEADLINE_COLUMNS])
    head = (["System"] + [_HEAD[c] for c in HEADLINE_COLUMNS] + ["vs"]
            + ["Δ " + _HEAD[c] for c in HEADLINE_COLUMNS])
    links = " · ".join(f"[{name}]({path})" for name, path in figures.items())
    return "\n".join(["**Headline** (the full tables, every scoring variant and the notes: [report.md](report.md))",
                      "", *markdown_table(head, body), "",
                      "Single run: [95% bootstrap interval]; several seeds: mean ± std, differences with a 95% "
                      "t-interval over seeds; * = the interval excludes 0.",
                      *(["", f"Figures: {links}"] if links else [])]) + "\n"
