"""`<exp>/results.json` on disk: checked on reading, its file references stored relative to the experiment dir
(experiments.paths) and found where the experiment is now.

Format "spkcausal-results", version 2 (layout: results.records). Version 2 differs from 1 only in its paths: every
file reference (REFERENCES) is relative to the experiment dir when the file lies inside the experiment's tree, so
that a moved or copied tree reports as the original did; and the `exp` key (the dir as first given) is gone.
Version-1 files are read with experiments.paths' legacy rule and written back as version 2 at the next record.

In memory (load_results) a reference is an absolute path: where the file is now, or, when it is nowhere, where it
should be. The report (results.records.collect_rows) asks `need_all` of every row it reports: a file of EVIDENCE
that is missing is one line naming results.json and the file, never a row or a difference silently dropped.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..experiments.paths import Kind, locate, stored_path
from ..utils import DataError, PathLike, UsageError, write_text_atomic

__all__ = ["RESULTS_FILE", "FORMAT", "VERSION", "FIGURE_SECTIONS", "REFERENCES", "load_results", "update_results",
           "stored_row", "need", "need_all", "EVIDENCE"]

RESULTS_FILE = "results.json"
FORMAT, VERSION = "spkcausal-results", 2
FIGURE_SECTIONS = ("verification", "seen", "identification")
# section -> key -> the kind of path it holds (experiments.paths.Kind)
REFERENCES: dict[str, dict[str, Kind]] = {
    "verification": {"scores": "file", "utt2spk": "file"},
    "seen": {"scores": "file", "utt2spk": "file", "train_data": "dir"},
    "identification": {"predictions": "file", "checkpoint": "any", "data": "dir", "train_data": "dir"},
}
_ACC = ("many", "medium", "few", "overall", "top1")
# the references whose files the report reads (paired differences, resampling units); the others are
# information (the checkpoint and data dirs an identification used)
EVIDENCE = (("verification", "scores"), ("verification", "utt2spk"), ("seen", "scores"), ("seen", "utt2spk"),
            ("seen", "train_data"), ("identification", "predictions"))


# ------------------------------------------------------------------ checking a row's values


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: Any) -> str | None:
    if v is None or _is_num(v) and math.isfinite(v):
        return None
    return "a finite number" if _is_num(v) else "a number or null"


def _pair(v: Any) -> str | None:
    ok = v is None or isinstance(v, list) and len(v) == 2 and all(_is_num(x) and math.isfinite(x) for x in v)
    return None if ok else "null or a [low, high] pair of finite numbers"


def _mapping(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def inner(v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, dict):
            return "an object"
        bad = next((k for k, x in v.items() if check(x)), None)
        return None if bad is None else f"an object whose {bad!r} is {check(v[bad])}"
    return inner


def _path(v: Any) -> str | None:
    return None if v is None or isinstance(v, str) and v else "null or a non-empty path string"


def _shots(v: Any) -> str | None:
    ok = v is None or isinstance(v, dict) and all(isinstance(v.get(k), int) and not isinstance(v.get(k), bool) for k in
                                     ("many", "few"))
    return None if ok else 'null or an object {"many": <int>, "few": <int>}'


def _group(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        return "null or an object"
    if "eer" in v and not isinstance(v.get("min_dcf"), dict):
        return "an object with a min_dcf object beside its eer"
    return next((f"an object whose {k!r} is {f(v.get(k))}" for k, f in _GROUP.items() if f(v.get(k))), None)


_GROUP = {"eer": _num, "eer_ci": _pair, "min_dcf": _mapping(_num), "min_dcf_ci": _mapping(_pair)}
_SCHEMA: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "verification": {**_GROUP, "scores": _path, "utt2spk": _path, "cllr": _num, "cllr_ci": _pair,
                     "min_cllr": _num, "act_dcf": _mapping(_num), "act_dcf_ci": _mapping(_pair),
                     "llr": lambda v: None if v is None or isinstance(v, bool) else "true or false"},
    "seen": {"scores": _path, "utt2spk": _path, "train_data": _path, "thresholds": _shots,
             "groups": _mapping(_group)},
    "identification": {**{g: _num for g in _ACC}, **{f"{g}_ci": _pair for g in _ACC}, "tde_alpha": _num,
                       "thresholds": _shots, "predictions": _path, "checkpoint": _path, "data": _path,
                       "train_data": _path},
}
# keys a section needs when it has another key: the report reads them together
_NEEDS = {("seen", "scores"): ("utt2spk", "train_data", "thresholds"), ("identification", "predictions"):
          ("thresholds",)}


def _has_figures(section: str, sec: Mapping) -> bool:
    if section == "verification":
        return _is_num(sec.get("eer"))
    if section == "seen":
        return any(isinstance(g, dict) and _is_num(g.get("eer")) for g in (sec.get("groups") or {}).values())
    return any(_is_num(sec.get(g)) for g in _ACC)


def _check_row(variant: str, row: Any, figures: bool = True) -> str | None:
    """What is wrong with one row (`rows.<variant>...: expected ...`), or None; `figures`: it must hold one (a
    row being recorded may get its figures from a later stage)."""
    where = f"rows.{variant}"
    if not isinstance(row, dict):
        return f"{where} is not an object"
    if row.get("label") is not None and not isinstance(row["label"], str):
        return f"{where}.label is not a string"
    if _num(row.get("tde_alpha")):
        return f"{where}.tde_alpha is not {_num(row.get('tde_alpha'))}"
    for section, schema in _SCHEMA.items():
        sec = row.get(section)
        if sec is None:
            continue
        if not isinstance(sec, dict):
            return f"{where}.{section} is not an object"
        for key, check in schema.items():
            what = check(sec.get(key))
            if what:
                return f"{where}.{section}.{key} is not {what}"
        for (s, key), needed in _NEEDS.items():
            missing = [k for k in needed if s == section and sec.get(key) is not None and sec.get(k) is None]
            if missing:
                return f"{where}.{section} has {key} but no {missing[0]}"
    if figures and not any(isinstance(row.get(s), dict) and _has_figures(s, row[s]) for s in FIGURE_SECTIONS):
        return (f"row {variant!r} has no figures (expected one of {', '.join(FIGURE_SECTIONS)} as an object with "
                "an EER or an accuracy)")
    return None


def _non_finite(value: Any, where: str) -> str | None:
    """The key path of the first NaN / inf number inside `value`, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _non_finite(v, f"{where}.{k}")
        if found:
            return found
    return None


# ------------------------------------------------------------------ reading and writing


def _map_row(row: Mapping[str, Any], fn: Callable[[str, Kind], str]) -> dict:
    """A copy of one row with every file reference replaced by fn(path, kind)."""
    row = dict(row)
    for section, refs in REFERENCES.items():
        if isinstance(row.get(section), dict):
            row[section] = {k: fn(v, refs[k]) if k in refs and isinstance(v, str) else v
                            for k, v in row[section].items()}
    return row


def _map_references(rows: Mapping[str, Any], fn: Callable[[str, Kind], str]) -> dict:
    return {variant: _map_row(row, fn) for variant, row in rows.items()}


def load_results(exp_dir: PathLike) -> dict:
    """`<exp>/results.json` (an empty results object when there is none yet), checked, with its file references
    as absolute paths where the experiment is now (module docstring)."""
    exp_dir = Path(exp_dir)
    path = exp_dir / RESULTS_FILE
    if not path.is_file():
        return {"format": FORMAT, "version": VERSION, "rows": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"not valid JSON ({e})", path) from None
    except OSError as e:
        raise DataError(f"cannot read ({e.strerror})", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("rows"), dict):
        raise DataError(f'expected a JSON object with "format": "{FORMAT}" and a "rows" object', path)
    version = data.get("version")
    if version not in (1, VERSION) or isinstance(version, bool):
        raise DataError(f"format version {version!r}; this spkcausal reads versions 1 and {VERSION}", path)
    for variant, row in data["rows"].items():
        bad = _non_finite(row, f"rows.{variant}")
        if bad:
            raise DataError(f"{bad} is not a finite number", path)
        bad = _check_row(variant, row)
        if bad:
            raise DataError(bad, path)
    legacy = version == 1
    data["rows"] = _map_references(data["rows"], lambda p, kind: str(locate(p, exp_dir, legacy, kind)[0]))
    data["version"] = VERSION
    data.pop("exp", None)
    return data


def stored_row(row: Mapping[str, Any], exp_dir: PathLike) -> dict:
    """A row with its file references as results.json stores them (relative to `exp_dir` inside its tree)."""
    return _map_row(row, lambda p, kind: stored_path(p, exp_dir))


def update_results(exp_dir: PathLike, variant: str, label: str | None = None, **sections: Any) -> dict:
    """Merge `sections` (verification=..., identification=..., tde_alpha=...) into one variant, atomically; paths
    in them are absolute or relative to the cwd. Returns the results as load_results would."""
    exp_dir = Path(exp_dir)
    if not variant or any(c.isspace() for c in variant):
        raise UsageError(f"variant name {variant!r} is empty or has whitespace")
    data = load_results(exp_dir)
    row = data["rows"].setdefault(variant, {})
    if label is not None:  # only a label the user chose is stored; the default follows config.yaml (collect_rows)
        row["label"] = label
    for key, value in sections.items():
        if value is not None:
            row[key] = value
    nf = _non_finite(row, f"rows.{variant}")
    if nf:  # a row that a later report would refuse: do not store it
        raise DataError(f"refusing to record {nf}: not a finite number", exp_dir / RESULTS_FILE)
    bad = _check_row(variant, row, figures=False)
    if bad:
        raise DataError(f"refusing to record: {bad}", exp_dir / RESULTS_FILE)
    data["rows"][variant] = _map_references({variant: row}, lambda p, kind: str(Path(p).absolute()))[variant]
    exp_dir.mkdir(parents=True, exist_ok=True)
    out = {"format": FORMAT, "version": VERSION,
           "rows": {v: stored_row(r, exp_dir) for v, r in data["rows"].items()}}
    write_text_atomic(exp_dir / RESULTS_FILE, json.dumps(out, indent=1, sort_keys=False) + "\n")
    return data


def need(row: Mapping[str, Any], section: str, key: str) -> str:
    """A file a report row refers to, which the report is about to read: its path, or a DataError naming the
    experiment's results.json and where the file should be."""
    path = row[section][key]
    kind = REFERENCES[section][key]
    if not (Path(path).is_file() if kind == "file" else Path(path).is_dir() if kind == "dir" else
            Path(path).exists()):
        raise DataError(f"rows.{row.get('variant', '?')}.{section}.{key} refers to {path}, which is missing (a "
                        "moved or copied experiment reads only its own tree's files)", Path(row["exp"]) / RESULTS_FILE)
    return path


def need_all(row: Mapping[str, Any]) -> None:
    """Every file of EVIDENCE a report row refers to must exist (need): a missing one is an error, whether or not
    this report's pairings would read it."""
    for section, key in EVIDENCE:
        if (row.get(section) or {}).get(key) is not None:
            need(row, section, key)
