"""The paper-style report over experiments (`spkcausal report`): report.md / report.json with the figures and
summary.md beside them, and the paper's tables (`--paper-table`). The per-experiment results it reads are
spkcausal.results (records, store, evidence); their public names are re-exported here, where users import them.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..results.evidence import Intervals
from ..results.records import (
    DECOUPLED_FILE,
    LLR_VARIANTS,
    RESULTS_FILE,
    VARIANTS,
    collect_rows,
    decoupled_name,
    load_results,
    record_identification,
    record_seen,
    record_verification,
    row_label,
    system_name,
    update_results,
    variant_label,
)
from ..results.store import stored_row
from ..utils import DataError, PathLike, UsageError, write_text_atomic
from .figures import write_figures
from .headline import headline_markdown
from .paper import check_row_map, paper_tables, parse_row_map
from .tables import build_tables

__all__ = ["RESULTS_FILE", "VARIANTS", "LLR_VARIANTS", "DECOUPLED_FILE", "system_name", "decoupled_name",
           "variant_label", "row_label", "load_results", "update_results", "record_verification", "record_seen",
           "record_identification", "collect_rows", "format_markdown", "write_report", "write_paper_tables"]


def _thresholds(rows: Sequence[dict]) -> tuple[int, int] | None:
    found = {(sec["thresholds"]["many"], sec["thresholds"]["few"])
             for r in rows for sec in (r.get("identification"), r.get("seen")) if sec and sec.get("thresholds")}
    if len(found) > 1:
        raise DataError(f"experiments use different shot-group thresholds {sorted(found)}: not one table")
    return next(iter(found)) if found else None


def _notes(rows: Sequence[dict], p_target: float, caption: str | None, several_seeds: bool) -> list[str]:
    key = f"{p_target:g}"
    notes = [caption] if caption else []
    trials = sorted({Path(r["verification"]["scores"]).name.removesuffix(".score") for r in rows
                     if (r.get("verification") or {}).get("scores")})
    seen = sorted({Path(r["seen"]["scores"]).name.removesuffix(".score") for r in rows
                   if (r.get("seen") or {}).get("scores")})
    if trials:
        notes.append(f"Held-out speakers: EER / minDCF (p_target={key}, normalised) on {', '.join(trials)}.")
    thr = _thresholds(rows)
    if seen:
        notes.append(f"Seen speakers: the same on {', '.join(seen)}, a list on held-out utterances of the training "
                     "speakers, by shot group of the enrolment speaker.")
    if thr:
        many, few = thr
        notes.append(f"Identification: closed-set accuracy on held-out utterances of the training speakers, mean of "
                     f"per-speaker accuracies. Shot groups by training utterances: Many > {many}, Medium "
                     f"{few}-{many}, Few < {few}.")
    if several_seeds:
        notes.append("Rows over several training seeds: mean ± std over seeds; differences: mean of the per-seed "
                     "differences with a 95% Student-t interval over seeds.")
    if not all(len({x['seed'] for x in rows if x['system'] == r['system']}) > 1 for r in rows):
        notes.append("One training run: [95% interval] from a bootstrap over enrolment speakers (verification) or "
                     "test speakers within each group (identification); differences from a paired bootstrap "
                     "(same trials / utterances, shared resamples).")
    notes.append("Reference of a difference: a TDE row against the same system without TDE; a QMF row against "
                 "the same system's plainly calibrated AS-norm scores; a +LM system against the system it was "
                 "fine-tuned from; any other row against the baseline system's row of the same scoring (a +LM "
                 "system: the baseline's +LM run).")
    if any(r.get("verification", {}) and (r["verification"] or {}).get("llr") for r in rows):
        notes.append("Calibrated rows: scores mapped to log-likelihood ratios on the seen-speaker dev list "
                     "(calibration: score only; QMF: score plus quality measures); Cllr in bits, actual DCF at "
                     "the Bayes threshold -logit(p_target).")
    if any(r.get("tde_alpha") is not None for r in rows):
        notes.append("TDE alpha chosen on a dev set (never on the test trials).")
    if any((Path(r["exp"]) / DECOUPLED_FILE).is_file() for r in rows):
        notes.append("cRT, tau-norm, NCM and LWS re-train / re-scale only the classifier: their embeddings, hence "
                     "their verification figures, are those of the system they were built on, so they appear in "
                     "the identification table only.")
    notes.append("(-: not measured; identification is not defined for a score normalisation such as AS-norm.)")
    return notes


def format_markdown(rows: Sequence[dict], p_target: float = 0.01, caption: str | None = None,
                    baseline: str | None = None, per_seed: bool = False, n_boot: int = 1000) -> str:
    """The report: figure tables (verification held-out / seen by shot group, identification) with intervals or
    mean ± std over seeds, then the differences from each row's reference (report_table), and the notes."""
    return _render(rows, Intervals(p_target, n_boot), caption, baseline, per_seed)[0]


def _render(rows: Sequence[dict], iv: Intervals, caption: str | None, baseline: str | None,
            per_seed: bool) -> tuple[str, dict]:
    lines, summary = build_tables(rows, iv, baseline, per_seed)
    several = any(len({x["seed"] for x in rows if x["system"] == r["system"]}) > 1 for r in rows)
    text = "\n".join(lines).lstrip("\n") + "\n\n" + " ".join(_notes(rows, iv.p_target, caption, several)) + "\n"
    return text, summary


def write_report(exp_dirs: Sequence[PathLike], out_dir: PathLike | None = None, caption: str | None = None,
                 variants: Sequence[str] | None = None, p_target: float = 0.01, baseline: str | None = None,
                 per_seed: bool = False, n_boot: int = 1000) -> tuple[str, Path]:
    """Write `report.md` and `report.json` (rows, per-run figures, differences) into out_dir (default: the first
    exp's parent), with the figures (report.figures) and summary.md (report.headline) beside them."""
    if not exp_dirs:
        raise UsageError("no experiment dirs given")
    rows = collect_rows(exp_dirs, variants)
    if not rows:
        raise DataError("no result rows (check --variants)", exp_dirs[0])
    text, summary = _render(rows, Intervals(p_target, n_boot), caption, baseline, per_seed)
    out = Path(out_dir) if out_dir is not None else Path(exp_dirs[0]).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    # report.json first: report.md, the file people look at, appears only when the rest is complete.
    stored = [stored_row(r, r["exp"]) for r in rows]  # file references as results.json has them: movable
    write_text_atomic(out / "report.json", json.dumps({"caption": caption, "p_target": p_target, "rows": stored,
                                                       **summary}, indent=1) + "\n")
    text = _with_figures(rows, summary, out, Intervals(p_target, n_boot), text)
    write_text_atomic(out / "report.md", text)
    return text, out


def _with_figures(rows: Sequence[dict], summary: dict, out: Path, iv: Intervals, text: str) -> str:
    """Write the figures and summary.md beside the report; the report's text with their links on top."""
    titles = {"eer_groups": "EER by shot group", "differences": "differences from the reference",
              "seeds": "every seed"}
    figs = {titles[k]: Path(v["path"]).name for k, v in write_figures(rows, summary, out, iv).items()}
    write_text_atomic(out / "summary.md", headline_markdown(rows, summary, figs, iv))
    links = " · ".join(f"[{name}]({path})" for name, path in figs.items())
    return ("Headline rows: [summary.md](summary.md)" + (f"; figures: {links}" if links else "") + ".\n\n"
            + "".join(f"![{name}]({path})\n" for name, path in figs.items()) + ("\n" if figs else "") + text)


def write_paper_tables(exp_dirs: Sequence[PathLike], out_dir: PathLike | None = None,
                       row_map: Sequence[str] | None = None, p_target: float = 0.01) -> tuple[str, Path]:
    """Write `paper_table.md` and `paper_table.json` (report.paper: the paper's rows in its order, then K = 1 / 2)
    into out_dir (default: the first exp's parent); the experiments need not cover every row."""
    if not exp_dirs:
        raise UsageError("no experiment dirs given")
    mapping = parse_row_map(row_map)
    rows = collect_rows(exp_dirs)
    check_row_map(mapping, rows)
    text, content = paper_tables(rows, mapping, p_target)
    out = Path(out_dir) if out_dir is not None else Path(exp_dirs[0]).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "paper_table.json", json.dumps({"p_target": p_target, **content}, indent=1) + "\n")
    write_text_atomic(out / "paper_table.md", text)
    return text, out
