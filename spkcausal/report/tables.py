"""The report's tables: figures with intervals (one training run) or mean +- std (several seeds), and the
differences of every system from its reference with paired intervals.

Rows are grouped into *runs*: the result rows of one system and variant over its seeds (the runs whose run.json
names that system, experiments.runs). The references of a run (`references_of`), in this order:
- a TDE variant (tde, tde_mean_sub, tde_asnorm, ...): the same system without TDE, so the row answers
  "what does TDE add";
- a QMF variant: the same system's plainly calibrated scores ("what do the quality measures add");
- a fine-tuned system (config train.init_from, the "+LM" systems): the system it started from, same variant
  ("what does large-margin fine-tuning add");
- any other variant of a system that is not the baseline: the baseline system's row of the same variant (for
  a fine-tuned system, the baseline's fine-tuned run when there is one: "does it still help after LM");
- the baseline system's own rows: none.
One run each: the paired bootstrap (same trials, same test utterances, shared resamples) gives the interval
of the difference. Several seeds: the per-seed differences are averaged, with a Student-t interval over the
seeds that both systems have (the training noise). A difference is significant (*) only when its interval
excludes 0. The differences table lists the plain rows (cosine scoring / plain head, TDE, and the full
back-end AS-norm + QMF); those of the other score normalisations are in report.json, to keep the table
readable.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..results.evidence import COLUMNS, DEFAULT_INTERVALS, Intervals, paired_differences, row_figures, t_interval
from ..utils import UsageError
from .markdown import diff_cell, figure_cell, markdown_table
from .tailcost import tail_cost, tail_cost_lines

__all__ = ["group_runs", "references_of", "resolve_baseline", "run_labels", "run_parents", "build_tables"]

_TDE_BASE = {"tde": "cosine", "tde_mean_sub": "mean_sub", "tde_asnorm": "asnorm", "tde_asnorm_cal": "asnorm_cal",
             "tde_asnorm_qmf": "asnorm_qmf"}
_QMF_BASE = {"asnorm_qmf": "asnorm_cal"}
_HEAD = {c: h for c, h, _ in COLUMNS}
TABLES = [("Verification: held-out speakers (EER, minDCF) and seen speakers by shot group of the enrolment "
           "speaker (EER)", ["eer", "min_dcf", "seen_eer_many", "seen_eer_medium", "seen_eer_few"]),
          ("Verification, seen speakers: minDCF by shot group of the enrolment speaker",
           ["seen_dcf_many", "seen_dcf_medium", "seen_dcf_few"]),
          ("Closed-set identification accuracy (%) by shot group", ["acc_many", "acc_medium", "acc_few",
                                                                   "acc_overall"]),
          ("Calibrated scores (LLRs), held-out speakers: Cllr, minCllr, actual DCF at the Bayes threshold and "
           "minDCF", ["cllr", "min_cllr", "act_dcf", "min_dcf"])]
_NEEDS = {"cllr"}  # a table with one of these columns lists only the rows that have it
TABLE_DIFF_VARIANTS = ("cosine", "tde", "asnorm_qmf")
DIFF_COLUMNS = ["eer", "min_dcf", "seen_eer_many", "seen_eer_medium", "seen_eer_few", "acc_many", "acc_medium",
                "acc_few", "acc_overall", "cllr", "act_dcf"]


def group_runs(rows: Sequence[Mapping]) -> dict[tuple[str, str], list[Mapping]]:
    """(system, variant) -> its rows sorted by seed, in first-appearance order."""
    runs: dict[tuple[str, str], list[Mapping]] = {}
    for r in rows:
        runs.setdefault((r["system"], r["variant"]), []).append(r)
    for v in runs.values():
        v.sort(key=lambda r: -1 if r["seed"] is None else r["seed"])
    return runs


def resolve_baseline(rows: Sequence[Mapping], baseline: str | None) -> str:
    """The baseline system key: the first system, or the one whose dir name, system key or row label is
    `baseline`."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    if baseline is None:
        return systems[0]
    for s in systems:
        if baseline in (s, Path(s).name) or Path(baseline).resolve() == Path(s).resolve():
            return s
    for r in rows:
        if baseline in (r["label"], Path(r["exp"]).name):
            return r["system"]
    raise UsageError(f"--baseline {baseline!r} names none of the systems ({', '.join(Path(s).name for s in systems)})")


def references_of(key: tuple[str, str], runs: Mapping, baseline: str,
                  parents: Mapping[str, str | None] | None = None) -> list[tuple[str, str]]:
    """The runs a run is compared with (module docstring), those that exist, in order."""
    system, variant = key
    parents = parents or {}
    if variant in _TDE_BASE:
        refs = [(system, _TDE_BASE[variant])]
    else:
        refs = [(system, _QMF_BASE[variant])] if variant in _QMF_BASE else []
        parent = parents.get(system)
        if parent is not None:
            refs.append((parent, variant))
        if system != baseline:
            peer = baseline
            if parent is not None:  # a fine-tuned system: against the baseline's fine-tuned run, if any
                peer = next((s for s, p in parents.items() if p == baseline), None) or baseline
            if peer != system:
                refs.append((peer, variant))
    return [r for r in dict.fromkeys(refs) if r in runs]


def _label(rs: Sequence[Mapping], dup: bool) -> str:
    r = rs[0]
    label = r["label"] + (f" [{Path(r['system']).name}]" if dup else "")
    alphas = sorted({x["tde_alpha"] for x in rs if x.get("tde_alpha") is not None})
    if len(alphas) == 1:
        label += f" (alpha={alphas[0]:g})"
    elif alphas:
        label += f" (alpha {alphas[0]:g}-{alphas[-1]:g})"
    if len(rs) > 1:
        label += f" ({len(rs)} seeds)"
    return label


def run_labels(runs: Mapping[tuple[str, str], Sequence[Mapping]]) -> dict[tuple[str, str], str]:
    """The table's label of every run (system dir added where two systems share a label)."""
    systems: dict[str, set[str]] = {}
    for (system, _), rs in runs.items():
        systems.setdefault(rs[0]["label"], set()).add(system)
    return {k: _label(rs, len(systems[rs[0]["label"]]) > 1) for k, rs in runs.items()}


def run_parents(rows: Sequence[Mapping], runs: Mapping) -> dict[str, str | None]:
    """System -> the system it was fine-tuned from (as a key of `runs`), or None."""
    by_path = {str(Path(s).resolve()): s for s, _ in runs}  # init_from may spell the dir differently
    return {r["system"]: by_path.get(str(Path(r["parent"]).resolve())) if r.get("parent") else None for r in rows}


def _run_diffs(rs: Sequence[Mapping], refs: Sequence[Mapping], iv: Intervals) -> dict[str, dict]:
    """Paired bootstrap for one run each; else mean and t-interval of the per-seed differences."""
    if len(rs) == 1 and len(refs) == 1:
        return paired_differences(rs[0], refs[0], iv.p_target, iv.n_boot, iv.level)
    by_seed = {r["seed"]: r for r in refs}
    pairs = [(r, by_seed[r["seed"]]) for r in rs if r["seed"] in by_seed]
    out: dict[str, dict] = {}
    for col in DIFF_COLUMNS:
        diffs = []
        for a, b in pairs:
            va, vb = row_figures(a, iv.p_target)[col][0], row_figures(b, iv.p_target)[col][0]
            if va is not None and vb is not None:
                diffs.append(va - vb)
        if diffs:
            mean, ci = t_interval(diffs, iv.level)
            out[col] = {"diff": mean, "ci": ci, "significant": None if ci is None else bool(ci[0] > 0 or ci[1] < 0),
                        "n_seeds": len(diffs), "per_seed": diffs}
    return out


def build_tables(rows: Sequence[Mapping], iv: Intervals = DEFAULT_INTERVALS, baseline: str | None = None,
                 per_seed: bool = False) -> tuple[list[str], dict]:
    """Markdown lines of the figure tables and the differences table, and their content for report.json."""
    p_target = iv.p_target
    runs = group_runs(rows)
    base = resolve_baseline(rows, baseline)
    labels: dict[str, set[str]] = {}
    for (system, _), rs in runs.items():
        labels.setdefault(rs[0]["label"], set()).add(system)
    out_lines: list[str] = []
    summary: dict = {"baseline": base, "runs": [], "differences": []}
    for title, cols in TABLES:
        body = []
        need = [c for c in cols if c in _NEEDS] or cols
        iden = all(c.startswith("acc_") for c in cols)
        for rs in runs.values():
            if rs[0].get("decoupled") and not iden:  # the base's embeddings: its verification rows, repeated
                continue
            figs = [row_figures(r, p_target) for r in rs]
            if not any(f[c][0] is not None for f in figs for c in need):
                continue
            label = _label(rs, len(labels[rs[0]["label"]]) > 1)
            body.append([label] + [figure_cell([f[c] for f in figs], c) for c in cols])
            if per_seed and len(rs) > 1:
                body += [[_label([r], False).replace(r["label"], f"{r['label']} [seed {r['seed']}]", 1)]
                         + [figure_cell([f[c]], c) for c in cols] for r, f in zip(rs, figs)]
        if body:
            hdr = [_HEAD[c].replace("minDCF", f"minDCF ({p_target:g})") for c in cols]
            out_lines += ["", f"**{title}**", ""] + markdown_table(["System"] + hdr, body)
    for key, rs in runs.items():
        figs = [row_figures(r, p_target) for r in rs]
        summary["runs"].append({"system": key[0], "variant": key[1], "label": rs[0]["label"],
                                "seeds": [r["seed"] for r in rs],
                                "figures": {c: [f[c][0] for f in figs] for c, _, _ in COLUMNS}})
    body = []
    parents = run_parents(rows, runs)
    for key, rs in runs.items():
        for ref in references_of(key, runs, base, parents):
            diffs = _run_diffs(rs, runs[ref], iv)
            if not diffs:
                continue
            summary["differences"].append({"system": key[0], "variant": key[1], "reference": list(ref),
                                           "differences": diffs})
            if key[1] not in TABLE_DIFF_VARIANTS or (rs[0].get("decoupled") and key[1] != "cosine"):
                continue  # a decoupled system differs from its base in identification only
            body.append([_label(rs, len(labels[rs[0]["label"]]) > 1), _label(runs[ref], False)]
                        + [diff_cell(diffs.get(c), c) for c in DIFF_COLUMNS])
    if body:
        hdr = ["System", "vs"] + ["Δ " + _HEAD[c].replace("minDCF", f"minDCF ({p_target:g})") for c in DIFF_COLUMNS]
        out_lines += ["", "**Differences from the reference** (A - B; * = the 95% interval excludes 0)", ""]
        out_lines += markdown_table(hdr, body)
    # the long-tail protocol: only when the baseline has a balanced control (<baseline>_control)
    tail = tail_cost(runs, base, iv, _TDE_BASE)
    if tail is not None:
        summary["tail_cost"] = tail
        out_lines += tail_cost_lines(tail, runs, lambda rs: _label(rs, len(labels[rs[0]["label"]]) > 1),
                                     TABLE_DIFF_VARIANTS)
    return out_lines, summary
