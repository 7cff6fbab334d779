"""The run plan: which experiment dirs a recipe makes for its systems x seeds, as typed records (runs.RunRecord),
so that the recipes, the bench scripts and the report agree on names without building or parsing them.

A system word is a config (a name in the config dir, or a YAML path), or BASE+EXT where BASE is such a config
and EXT is

- `lm`: the large-margin fine-tuning of BASE's averaged model (run `<base>_lm`);
- a decoupled method (variants.DECOUPLED_METHODS): a classifier on BASE's embeddings (run `<base>_<method>`);
- `control`: BASE trained on the long-tail protocol's balanced control (run `<base>_control`).

With seeds, each system runs once per seed k in `<run>_seed<k>` (its parent: the base's run of the same seed);
without, once in `<run>`. `spkcausal plan` prints the plan for bash to loop over (`format_line`).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..utils import DataError, PathLike, UsageError
from .runs import RunRecord, config_hash, head_is_causal, read_run
from .variants import DECOUPLED_METHODS, FINE_TUNES

__all__ = ["EXTENSIONS", "LINE_FIELDS", "PlannedRun", "plan_runs", "planned", "parse_run", "format_line", "plan_json",
           "system_conf", "record_for", "decoupled_record"]

EXTENSIONS = (*FINE_TUNES, *DECOUPLED_METHODS, "control")
LINE_FIELDS = ("name", "kind", "system", "seed", "parent", "control", "causal", "method", "conf", "run")


@dataclass(frozen=True)
class PlannedRun:
    """A run of the plan: its record, the config it trains from (None: decoupled) and `run`, the word@seed that
    `spkcausal train --plan-run` takes to write the same record."""

    record: RunRecord
    conf: str | None
    run: str


def _sys_name(word: str) -> str:
    """A config word's system name: its last path component without .yaml / .yml (`paper/capsule_k2` and
    `conf/paper/capsule_k2.yaml` are both `capsule_k2`: runs lie side by side in the experiments dir)."""
    name = Path(word).name
    return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def system_conf(word: str, conf_dir: PathLike | None) -> str | None:
    """The config file of a config word: the YAML path itself, else conf_dir/<word>.yaml (None without
    conf_dir: a plan that only names runs)."""
    if word.endswith((".yaml", ".yml")):
        return word
    return None if conf_dir is None else str(Path(conf_dir) / f"{word}.yaml")


def _split(word: str) -> tuple[str, str | None]:
    if "+" not in word:
        return word, None
    base, ext = word.rsplit("+", 1)
    if ext not in EXTENSIONS or not base or "+" in base:
        raise UsageError(f"system {word!r}: expected CONFIG or CONFIG+EXT, EXT one of {', '.join(EXTENSIONS)}")
    return base, ext


def _head_causal(conf: str | None, exp_dir: Path | None) -> bool | None:
    """Causal Norm or not, torch-free: the run's merged config when it is trained, else its system's config; a
    head registered elsewhere: what `spkcausal train` recorded in run.json (None before)."""
    for path in ([exp_dir / "config.yaml"] if exp_dir else []) + ([Path(conf)] if conf else []):
        if path.is_file():
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
            found = head_is_causal(cfg if isinstance(cfg, Mapping) else {})
            if found is not None:
                return found
            break
    rec = read_run(exp_dir) if exp_dir is not None and exp_dir.is_dir() else None
    return rec.causal if rec else None


def planned(word: str, seed: int | None, conf_dir: PathLike | None = None, exp: PathLike | None = None) -> PlannedRun:
    """The plan's run of one system word and seed; with `exp`, the experiments dir, the head's causality is read
    from the run's merged config where it is trained already."""
    base, ext = _split(word)
    tail = f"_seed{seed}" if seed is not None else ""
    bname = _sys_name(base)
    system = f"{bname}_{ext}" if ext else bname
    name = system + tail
    conf = None if ext in DECOUPLED_METHODS else system_conf(base, conf_dir)
    if ext is None:
        rec = RunRecord(name=name, kind="train", system=system, seed=seed)
    elif ext == "control":
        rec = RunRecord(name=name, kind="train", system=system, seed=seed, base=bname, control=True)
    else:
        rec = RunRecord(name=name, kind="lm" if ext in FINE_TUNES else "decoupled", system=system, seed=seed,
                        base=bname, parent=bname + tail, method=ext)
    causal = False if rec.kind == "decoupled" else _head_causal(conf, Path(exp) / name if exp else None)
    return PlannedRun(replace(rec, causal=causal), conf, f"{word}@{'' if seed is None else seed}")


def parse_run(run: str) -> tuple[str, int | None]:
    """(system word, seed) of a `word@seed` run (as format_line prints it; seed empty: none)."""
    word, sep, seed = run.rpartition("@")
    if not sep or not word:
        raise UsageError(f"run {run!r}: expected SYSTEM@SEED (SEED empty for none)")
    try:
        return word, int(seed) if seed else None
    except ValueError:
        raise UsageError(f"run {run!r}: seed {seed!r} is not an integer") from None


def plan_runs(systems: Sequence[str], seeds: Sequence[int] = (), conf_dir: PathLike | None = None,
              exp: PathLike | None = None) -> list[PlannedRun]:
    """Every run of systems x seeds, system by system in the given order, seeds in order; no name may come twice
    (a parent, lm or decoupled, may be left out: a run trained before)."""
    each: list[int | None] = list(seeds) or [None]  # no seeds: each system once, without a seed
    runs = [planned(w, s, conf_dir, exp) for w in systems for s in each]
    names = [r.record.name for r in runs]
    for r in runs:
        if names.count(r.record.name) > 1:
            raise UsageError(f"run {r.record.name} comes twice in the plan (systems {' '.join(systems)})")
    return runs


def format_line(run: PlannedRun) -> str:
    """One run as a line of LINE_FIELDS separated by spaces, `-` for an empty field (for `read -r` in bash)."""
    rec: Mapping[str, Any] = asdict(run.record)
    vals = {**rec, "conf": run.conf, "run": run.run,
            "causal": {True: "true", False: "false", None: "unknown"}[run.record.causal],
            "control": "true" if run.record.control else "false"}
    out = []
    for f in LINE_FIELDS:
        v = vals[f]
        text = "-" if v is None or v == "" else str(v)
        if any(c.isspace() for c in text):
            raise DataError(f"{f} {text!r} has a space: the plan's lines cannot carry it", run.conf)
        out.append(text)
    return " ".join(out)


def plan_json(runs: Sequence[PlannedRun]) -> str:
    """The plan as JSON: one object per run, its record plus conf and run."""
    return json.dumps([{**run.record.to_json(), "conf": run.conf, "run": run.run} for run in runs], indent=1)


def record_for(exp_dir: PathLike, cfg: Mapping[str, Any], causal: bool, run: str | None = None) -> RunRecord:
    """The run.json record `spkcausal train` writes: the plan's record of `run` (word@seed; its name must be the
    experiment dir's), else a run of its own (system: the dir's name, no seed), with the merged config's hash and
    the head's causality as its class says."""
    e = Path(exp_dir)
    if run is None:
        rec = RunRecord(name=e.name, kind="train", system=e.name)
    else:
        rec = planned(*parse_run(run)).record
        if rec.name != e.name:
            raise UsageError(f"--plan-run {run} is run {rec.name} of the plan, but the experiment dir is {e}")
    return replace(rec, config_hash=config_hash(cfg), causal=causal)


def decoupled_record(out_exp: PathLike, base_exp: PathLike, method: str, cfg: Mapping[str, Any]) -> RunRecord:
    """The run.json record of a decoupled classifier on `base_exp`: a seed of `<base system>_<method>` with the
    base run's seed (from its run.json; a base without one: the base dir's name as its system)."""
    b = Path(base_exp)
    base = read_run(b)
    system = base.system if base else b.name
    return RunRecord(name=Path(out_exp).name, kind="decoupled", system=f"{system}_{method}",
                     seed=base.seed if base else None, base=system, parent=b.name, method=method,
                     config_hash=config_hash(cfg), causal=False)
