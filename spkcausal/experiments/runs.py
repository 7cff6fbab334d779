"""A run's identity, kept in its experiment dir as `run.json` by the command that creates the dir (spkcausal
train, spkcausal decouple), so that nothing downstream parses a directory name.

    {"format": "spkcausal-run", "version": 1, "name": "aam_lm_seed1", "kind": "lm", "system": "aam_lm",
     "base": "aam", "parent": "aam_seed1", "seed": 1, "control": false, "config_hash": "3f2a...",
     "causal": false}

- `kind`: `train` (trained from scratch, or fine-tuned from a checkpoint outside the plan), `lm` (the recipes'
  large-margin fine-tuning of `parent`'s averaged model), `decoupled` (a classifier on `parent`'s embeddings,
  `method` names which);
- `system`: the system this run is a seed of (the report averages runs of one system over their seeds);
- `base`: the system an lm or decoupled run derives from, the baseline a control run controls for;
- `parent`: the experiment-dir name, beside this one, of the run it starts from (lm, decoupled);
- `control`: the long-tail protocol's balanced control of the baseline (report.tailcost);
- `config_hash`: sha256 of the merged config (canonical JSON), to tell runs of a changed config apart;
- `causal`: the head is a Causal Norm head (TDE applies).

`legacy_identity` is the explicit fallback for experiment dirs written before run.json existed: it reads the
identity back from the directory name (`<system>_seed<k>`, `<baseline>_control`) and the config's
`train.init_from`, as the report did until then; nothing else reads names.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ..utils import DataError, PathLike, write_text_atomic
from .paths import locate

__all__ = ["RUN_FILE", "RUN_FORMAT", "RUN_VERSION", "CAUSAL_HEADS", "NON_CAUSAL_HEADS", "RunRecord", "Kind",
           "config_hash", "head_is_causal", "write_run", "read_run", "legacy_identity", "run_identity", "init_source",
           "checkpoint_experiment",
           "CONTROL_SUFFIX"]

RUN_FILE = "run.json"
RUN_FORMAT = "spkcausal-run"
RUN_VERSION = 1
Kind = Literal["train", "lm", "decoupled"]
KINDS = ("train", "lm", "decoupled")
# The built-in heads, Causal Norm or not, so that the plan answers without importing torch;
# tests/test_heads.py checks them against the registered classes (nn.heads.is_causal).
CAUSAL_HEADS = ("causal_norm", "causal_norm_aam")
NON_CAUSAL_HEADS = ("linear", "cosine", "aam", "oltr")
CONTROL_SUFFIX = "_control"  # legacy_identity only: how the recipes named the control before run.json


@dataclass(frozen=True)
class RunRecord:
    """One run of the plan: what `run.json` holds (module docstring)."""

    name: str
    kind: Kind
    system: str
    seed: int | None = None
    base: str | None = None
    parent: str | None = None
    control: bool = False
    method: str | None = None
    config_hash: str | None = None
    causal: bool | None = None

    def to_json(self) -> dict:
        """The run.json content, format name and version first."""
        return {"format": RUN_FORMAT, "version": RUN_VERSION, **asdict(self)}


def config_hash(cfg: Mapping[str, Any]) -> str:
    """sha256 of a config as canonical JSON (sorted keys), so equal configs hash equal whatever their order."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def head_is_causal(cfg: Mapping[str, Any]) -> bool | None:
    """Whether a config's head is a Causal Norm head, from the built-in table (None: a head registered elsewhere,
    which only its class can answer)."""
    head = str((cfg.get("head") or {}).get("name", "aam"))
    return True if head in CAUSAL_HEADS else False if head in NON_CAUSAL_HEADS else None


def write_run(exp_dir: PathLike, record: RunRecord) -> Path:
    """Write `exp_dir/run.json` atomically; returns its path."""
    path = Path(exp_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record.to_json(), indent=1) + "\n")
    return path


def read_run(exp_dir: PathLike) -> RunRecord | None:
    """The record of `exp_dir/run.json`, None when the dir has none (an experiment older than run.json); a file
    of another format or version, or with a wrong field, is a DataError naming it."""
    path = Path(exp_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"not JSON ({e})", path) from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise DataError(f"not a {RUN_FORMAT} file (format {data.get('format') if isinstance(data, dict) else None!r})",
                        path)
    if data.get("version") != RUN_VERSION:
        raise DataError(f"{RUN_FORMAT} version {data.get('version')!r} is not one this spkcausal reads "
                        f"(version {RUN_VERSION})", path)
    names = {f.name for f in fields(RunRecord)}
    body = {k: v for k, v in data.items() if k not in ("format", "version")}
    unknown = sorted(set(body) - names)
    if unknown:
        raise DataError(f"unknown key {unknown[0]!r} (keys: {', '.join(sorted(names))})", path)
    try:
        record = RunRecord(**body)
    except TypeError as e:  # a missing required key
        raise DataError(f"incomplete run record ({e})", path) from None
    if record.kind not in KINDS:
        raise DataError(f"kind {record.kind!r}, expected one of {', '.join(KINDS)}", path)
    if record.seed is not None and (isinstance(record.seed, bool) or not isinstance(record.seed, int)):
        raise DataError(f"seed {record.seed!r}, expected an integer or null", path)
    return record


def _config(exp_dir: Path) -> dict:
    path = exp_dir / "config.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def _legacy_split_seed(exp_dir: Path) -> tuple[str, int | None]:
    m = re.fullmatch(r"(.+)_seed(\d+)", exp_dir.name)
    return (str(exp_dir.parent / m.group(1)), int(m.group(2))) if m else (str(exp_dir), None)


def legacy_identity(exp_dir: PathLike) -> tuple[str, int | None, str | None, bool]:
    """(system key, seed, parent system key, control) of an experiment dir without run.json, read back from its
    name and config as before run.json (the legacy path): `<dir>/<name>_seed<k>` is run k of system
    `<dir>/<name>`, a name ending in `_control` the protocol's control, the parent the experiment holding
    `train.init_from` (found inside the experiment's tree first, as experiments.paths reads a version-1 path)."""
    e = Path(exp_dir)
    system, seed = _legacy_split_seed(e)
    parent = None
    src = (_config(e).get("train") or {}).get("init_from")
    if src:
        parent = _legacy_split_seed(checkpoint_experiment(locate(str(src), e, legacy=True, kind="any")[0]))[0]
    return system, seed, parent, system.endswith(CONTROL_SUFFIX)


def checkpoint_experiment(path: PathLike) -> Path:
    """The experiment dir a checkpoint belongs to: the dir of `avg_model.pt`, the one above `checkpoints/<name>.pt`
    (a dir is taken as the experiment itself)."""
    p = Path(path)
    if p.suffix in (".pt", ".pth", ".ckpt") or p.is_file():
        p = p.parent
        if p.name == "checkpoints":
            p = p.parent
    return p


def init_source(exp_dir: PathLike, init_from: str | None) -> Path | None:
    """The experiment dir whose checkpoint a run started from (its config's `train.init_from`, as given, or found
    inside the run's tree when the tree was moved); None without init_from."""
    if not init_from:
        return None
    given = Path(str(init_from)).expanduser()
    return checkpoint_experiment(given if given.exists() else
                                 locate(str(init_from), exp_dir, legacy=True, kind="any")[0])


def run_identity(exp_dir: PathLike) -> tuple[str, int | None, str | None, bool]:
    """(system key, seed, parent system key, control) of an experiment dir, for the report: keys are paths of
    system names beside the dir (`<dir>/<system>`), from run.json; legacy_identity for a dir without one."""
    e = Path(exp_dir)
    rec = read_run(e)
    if rec is None:
        return legacy_identity(e)
    parent = str(e.parent / rec.base) if rec.kind == "lm" and rec.base else None
    return str(e.parent / rec.system), rec.seed, parent, rec.control
