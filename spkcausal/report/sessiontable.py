"""Seen-speaker EER by shot group within each session half for a set of runs (`spkcausal session-halves`, issue
30 item 2): the baseline and each method, plain and TDE rows, every figure as in the report (one run: value
[95% bootstrap interval]; several seeds: mean ± std), and where a half has no EER for a group, why (no trials,
no target trials, ...), never an empty cell.

Written as OUT/session_halves.json (format "spkcausal-session-halves", version 1; experiment and data dirs
relative to OUT) and OUT/session_halves.md.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.sessions import HALVES
from ..results.evidence import DEFAULT_INTERVALS, Intervals, row_figures
from ..results.halves import half_row, session_halves
from ..results.records import collect_rows
from ..utils import DataError, PathLike, UsageError, write_text_atomic
from .curve import HALF_NAMES, SEEN_COLUMNS, group_state, strict_json
from .markdown import figure_cell, markdown_table
from .tables import group_runs, run_labels

__all__ = ["HALVES_FORMAT", "HALVES_VERSION", "session_table", "session_markdown", "write_session_table"]

HALVES_FORMAT, HALVES_VERSION = "spkcausal-session-halves", 1


def _rel(path: PathLike, out: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()


def session_table(exp_dirs: Sequence[PathLike], out_dir: PathLike, variants: Sequence[str] = ("cosine", "tde"),
                  test_data: PathLike | None = None, train_data: PathLike | None = None,
                  iv: Intervals = DEFAULT_INTERVALS) -> dict:
    """The table's content: per run (system and variant over its seeds) and half, the trial counts and the seen
    figures of every seed (results.halves), paths relative to `out_dir`."""
    if not exp_dirs:
        raise UsageError("no experiment dirs given")
    out = Path(out_dir)
    rows = [r for r in collect_rows(exp_dirs, variants)
            if (r.get("seen") or {}).get("scores") and not r.get("decoupled")]
    if not rows:
        raise DataError(f"no seen-speaker rows of the variants {', '.join(variants)} (stage 5's seen list)",
                        exp_dirs[0])
    halves = [session_halves(r, test_data, train_data, (iv.p_target,), iv.n_boot, iv.level) for r in rows]
    by_exp = {(r["exp"], r["variant"]): h for r, h in zip(rows, halves)}
    runs = group_runs(rows)
    labels = run_labels(runs)
    entries = []
    for key, rs in runs.items():
        hs = [by_exp[(r["exp"], r["variant"])] for r in rs]
        entry: dict[str, Any] = {"system": Path(key[0]).name, "variant": key[1], "label": labels[key],
                 "seeds": [r["seed"] for r in rs], "exps": [_rel(r["exp"], out) for r in rs],
                 "test_data": sorted({_rel(h["test_data"], out) for h in hs}),
                 "session_train_data": sorted({_rel(h["session_train_data"], out) for h in hs}), "halves": {}}
        for half in HALVES:
            figs = [row_figures(half_row(r, h, half), iv.p_target) for r, h in zip(rs, hs)]
            entry["halves"][half] = {
                "n_trials": [h["halves"][half]["n_trials"] for h in hs],
                "groups": [h["halves"][half]["groups"] for h in hs],
                "eer": {c: [f[c][0] for f in figs] for c in SEEN_COLUMNS},
                "eer_ci": {c: [f[c][1] for f in figs] for c in SEEN_COLUMNS},
                "missing": {c: why for c in SEEN_COLUMNS
                            if (why := group_state(hs, half, c.rsplit("_", 1)[1])) is not None}}
        entries.append(entry)
    return {"format": HALVES_FORMAT, "version": HALVES_VERSION, "p_target": iv.p_target, "level": iv.level,
            "n_boot": iv.n_boot, "variants": list(variants), "runs": entries}


def session_markdown(table: Mapping) -> str:
    """The table: System | Half | Trials | Seen Many / Medium / Few EER, and a line for a half empty everywhere."""
    body = []
    for e in table["runs"]:
        for half in HALVES:
            h = e["halves"][half]
            cells = []
            for c in SEEN_COLUMNS:
                vals = list(zip(h["eer"][c], h["eer_ci"][c]))
                cells.append(figure_cell(vals, c) if any(v is not None for v, _ in vals) else h["missing"].get(c, "-"))
            n = sorted(set(h["n_trials"]))
            body.append([e["label"], HALF_NAMES[half], str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}"] + cells)
    heads = [f"Seen {c.rsplit('_', 1)[1].capitalize()} EER (%)" for c in SEEN_COLUMNS]
    lines = ["**Seen-speaker EER within session halves**: the seen list split by whether the test utterance's "
             "session occurs in its speaker's training data; EER by shot group of the enrolment speaker within "
             "each half (one run: [95% bootstrap interval over enrolment speakers]; several seeds: mean ± std).",
             ""] + markdown_table(["System", "Half", "Trials"] + heads, body)
    for half in HALVES:
        if all(set(e["halves"][half]["n_trials"]) == {0} for e in table["runs"]):
            lines += ["", f"The half '{HALF_NAMES[half]}' is empty for every run: the split is degenerate here."]
    return "\n".join(lines) + "\n"


def write_session_table(exp_dirs: Sequence[PathLike], out_dir: PathLike, variants: Sequence[str] = ("cosine", "tde"),
                        test_data: PathLike | None = None, train_data: PathLike | None = None,
                        iv: Intervals = DEFAULT_INTERVALS) -> tuple[str, dict]:
    """Write OUT/session_halves.json then OUT/session_halves.md; the markdown and the content."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = strict_json(session_table(exp_dirs, out, variants, test_data, train_data, iv))
    write_text_atomic(out / "session_halves.json", json.dumps(table, indent=1, allow_nan=False) + "\n")
    text = session_markdown(table)
    write_text_atomic(out / "session_halves.md", text)
    return text, table
