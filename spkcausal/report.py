"""Per-experiment results (`<exp>/results.json`) and the paper-style table over experiments (`spkcausal report`).

`results.json` layout (format "spkcausal-results", version 1), filled stage by stage:

    {"format": "spkcausal-results", "version": 1, "exp": "<exp dir>",
     "rows": {"<variant>": {"label": "Baseline (AAM)",
                            "verification": {"scores": "<score file>", "eer": 0.051 (a fraction),
                                             "min_dcf": {"0.01": ..., "0.05": ...}, "n_target": ..., ...},
                            "identification": {"many": ..., "medium": ..., "few": ..., "overall": ..., "top1": ...,
                                               "thresholds": {"many": 100, "few": 20}, ...},
                            "tde_alpha": 0.7}}}

A variant is one way of using the same trained model: `cosine` (plain scoring / plain head), `mean_sub`
(training-set mean subtracted), `asnorm`, `tde` (TDE'd embeddings / TDE logits), `tde_mean_sub`,
`tde_asnorm`. Scoring writes the `verification` part of a variant, identification its `identification`
part; each write re-reads the file and replaces it atomically. Labels default to the system name derived
from the experiment's `config.yaml` (head, sampler, loss) plus the variant.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .utils import DataError, PathLike, UsageError, write_text_atomic

__all__ = ["RESULTS_FILE", "VARIANTS", "system_name", "variant_label", "load_results", "update_results",
           "record_verification", "record_identification", "collect_rows", "format_markdown", "write_report"]

RESULTS_FILE = "results.json"
VARIANTS = ("cosine", "mean_sub", "asnorm", "tde", "tde_mean_sub", "tde_asnorm")
_SUFFIX = {"cosine": "", "mean_sub": " + mean subtraction", "asnorm": " + AS-norm"}


def system_name(cfg: Mapping[str, Any]) -> str:
    """Paper-style system name from a training config: Baseline (AAM), Re-sampling, De-confound, ..."""
    head = str(cfg.get("head", {}).get("name", "aam"))
    sampler = str((cfg.get("sampler") or {}).get("name", "natural"))
    loss = str((cfg.get("loss") or {}).get("name", "ce"))
    head_txt = {"aam": "AAM", "cosine": "cosine", "linear": "softmax", "causal_norm": "Causal Norm",
                "causal_norm_aam": "Causal Norm AAM"}.get(head, head)
    if head.startswith("causal_norm"):
        name = f"De-confound ({head_txt})"
    elif sampler in ("class_balanced", "sqrt"):
        name = f"Re-sampling ({head_txt}, {sampler.replace('_', '-')})"
    elif loss in ("inverse", "effective_number"):
        name = f"Re-weighting ({head_txt}, {loss.replace('_', ' ')})"
    elif loss == "focal":
        name = f"Focal loss ({head_txt})"
    else:
        name = f"Baseline ({head_txt})"
    if head.startswith("causal_norm") and (sampler != "natural" or loss != "ce"):
        name += f" + {sampler if sampler != 'natural' else loss}"
    return name


def variant_label(system: str, variant: str) -> str:
    """Row label of a variant: De-confound + TDE reads 'De-confound-TDE (...)', as in the paper."""
    if variant.startswith("tde"):
        rest = variant[len("tde"):].lstrip("_")
        base = system.replace("De-confound", "De-confound-TDE", 1) if system.startswith("De-confound") \
            else f"{system} + TDE"
        return base + _SUFFIX.get(rest or "cosine", f" + {rest}")
    return system + _SUFFIX.get(variant, f" + {variant}")


def _exp_config(exp_dir: Path) -> dict:
    path = exp_dir / "config.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def load_results(exp_dir: PathLike) -> dict:
    """`<exp>/results.json`, or an empty results object when there is none yet."""
    exp_dir = Path(exp_dir)
    path = exp_dir / RESULTS_FILE
    if not path.is_file():
        return {"format": "spkcausal-results", "version": 1, "exp": str(exp_dir), "rows": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"not valid JSON ({e})", path) from None
    if not isinstance(data, dict) or data.get("format") != "spkcausal-results" or not isinstance(data.get("rows"),
                                                                                                 dict):
        raise DataError('expected a JSON object with "format": "spkcausal-results" and a "rows" object', path)
    return data


def update_results(exp_dir: PathLike, variant: str, label: str | None = None, **sections: Any) -> dict:
    """Merge `sections` (verification=..., identification=..., tde_alpha=...) into one variant, atomically."""
    exp_dir = Path(exp_dir)
    if not variant or any(c.isspace() for c in variant):
        raise UsageError(f"variant name {variant!r} is empty or has whitespace")
    data = load_results(exp_dir)
    row = data["rows"].setdefault(variant, {})
    if label is not None:
        row["label"] = label
    elif "label" not in row:
        row["label"] = variant_label(system_name(_exp_config(exp_dir)), variant)
    for key, value in sections.items():
        if value is not None:
            row[key] = value
    exp_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(exp_dir / RESULTS_FILE, json.dumps(data, indent=1, sort_keys=False) + "\n")
    return data


def record_verification(exp_dir: PathLike, variant: str, score_file: PathLike, label: str | None = None,
                        p_targets: Sequence[float] = (0.01, 0.05), tde_alpha: float | None = None) -> dict:
    """EER / minDCF of a labelled score file, stored as the variant's verification result."""
    from .metrics import evaluate_score_files

    res = evaluate_score_files([str(score_file)], p_targets)[0]
    ver = {"scores": str(Path(score_file).resolve()), "eer": res["eer"],
           "min_dcf": {f"{p:g}": v for p, v in res["min_dcf"].items()}, "n_target": res["n_target"],
           "n_nontarget": res["n_nontarget"]}
    return update_results(exp_dir, variant, label, verification=ver, tde_alpha=tde_alpha)


def record_identification(exp_dir: PathLike, variant: str, result: Mapping[str, Any],
                          label: str | None = None) -> dict:
    """Store an `identify` result as the variant's identification result."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}  # strict JSON
    return update_results(exp_dir, variant, label, identification=clean, tde_alpha=result.get("tde_alpha"))


def _variant_key(v: str) -> tuple[int, str]:
    return (VARIANTS.index(v), v) if v in VARIANTS else (len(VARIANTS), v)


def collect_rows(exp_dirs: Sequence[PathLike], variants: Sequence[str] | None = None) -> list[dict]:
    """One row per (experiment, variant), experiments in the given order, variants in VARIANTS order."""
    rows = []
    for exp in exp_dirs:
        exp = Path(exp)
        if not (exp / RESULTS_FILE).is_file():
            raise DataError(f"no {RESULTS_FILE}: run the scoring / identification stages first", exp)
        data = load_results(exp)
        for v in sorted(data["rows"], key=_variant_key):
            if variants is not None and v not in variants:
                continue
            r = data["rows"][v]
            rows.append({"exp": str(exp), "variant": v, "label": r.get("label", v),
                         "verification": r.get("verification"), "identification": r.get("identification"),
                         "tde_alpha": r.get("tde_alpha")})
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _thresholds(rows: Sequence[dict]) -> tuple[int, int] | None:
    found = {(r["identification"]["thresholds"]["many"], r["identification"]["thresholds"]["few"])
             for r in rows if r.get("identification") and "thresholds" in r["identification"]}
    if len(found) > 1:
        raise DataError(f"experiments use different shot-group thresholds {sorted(found)}: not one table")
    return next(iter(found)) if found else None


def format_markdown(rows: Sequence[dict], p_target: float = 0.01, caption: str | None = None) -> str:
    """Markdown table: System | EER (%) | minDCF | Many | Medium | Few | Overall (accuracy %), plus a caption."""
    key = f"{p_target:g}"
    head = ["System", "EER (%)", f"minDCF ({key})", "Many", "Medium", "Few", "Overall"]
    body = []
    seen: dict[str, set[str]] = {}
    for r in rows:
        seen.setdefault(r["label"], set()).add(r["exp"])
    for r in rows:
        ver, iden = r.get("verification") or {}, r.get("identification") or {}
        label = r["label"] + (f" [{Path(r['exp']).name}]" if len(seen[r["label"]]) > 1 else "")  # same system twice
        label += f" (alpha={r['tde_alpha']:g})" if r.get("tde_alpha") is not None else ""
        dcf = (ver.get("min_dcf") or {}).get(key)
        body.append([label, _pct(ver.get("eer")), "-" if dcf is None else f"{dcf:.4f}",
                     _pct(iden.get("many")), _pct(iden.get("medium")), _pct(iden.get("few")),
                     _pct(iden.get("overall"))])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = [lambda s, w: s.ljust(w)] + [lambda s, w: s.rjust(w)] * (len(head) - 1)
    lines = ["| " + " | ".join(f(c, w) for f, c, w in zip(fmt, row, widths)) + " |" for row in [head]]
    lines.append("|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
    lines += ["| " + " | ".join(f(c, w) for f, c, w in zip(fmt, row, widths)) + " |" for row in body]
    thr = _thresholds(rows)
    notes = []
    if caption:
        notes.append(caption)
    trials = sorted({Path(r["verification"]["scores"]).name.removesuffix(".score") for r in rows
                     if r.get("verification")})
    if trials:
        notes.append(f"EER / minDCF (p_target={key}, normalised) on {', '.join(trials)}.")
    if thr:
        many, few = thr
        notes.append(f"Closed-set identification accuracy (%) on held-out utterances of the training speakers, mean "
                     f"of per-speaker accuracies; shot groups by training utterances: Many > {many}, Medium "
                     f"{few}-{many}, Few < {few}.")
    if any(r.get("tde_alpha") is not None for r in rows):
        notes.append("TDE alpha chosen on a dev set (never on the test trials).")
    return "\n".join(lines) + ("\n\n" + " ".join(notes) if notes else "") + "\n"


def write_report(exp_dirs: Sequence[PathLike], out_dir: PathLike | None = None, caption: str | None = None,
                 variants: Sequence[str] | None = None, p_target: float = 0.01) -> tuple[str, Path]:
    """Write `report.md` and `report.json` (rows as collected) into out_dir (default: the first exp's parent)."""
    if not exp_dirs:
        raise UsageError("no experiment dirs given")
    rows = collect_rows(exp_dirs, variants)
    if not rows:
        raise DataError("no result rows (check --variants)", exp_dirs[0])
    text = format_markdown(rows, p_target, caption)
    out = Path(out_dir) if out_dir is not None else Path(exp_dirs[0]).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    # report.json first: report.md, the file people look at, appears only when both are complete.
    write_text_atomic(out / "report.json", json.dumps({"caption": caption, "p_target": p_target, "rows": rows},
                                                      indent=1) + "\n")
    write_text_atomic(out / "report.md", text)
    return text, out
