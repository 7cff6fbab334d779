"""Training configs: the schema (DEFAULTS, every key, and TYPES, what each key of the fixed sections holds;
docs/training.md explains them), YAML loading and `key.sub=value` command-line overrides. `merge_defaults` types
every fixed key once, so readers take `cfg[...]` as it is. The merged config is saved with every experiment."""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..utils import DataError, PathLike, UsageError, write_text_atomic

DEFAULTS: dict[str, Any] = {
    "exp_dir": None,
    "seed": 42,
    "data": {"train": None, "sample_rate": 16000, "chunk_seconds": 2.0, "min_seconds": 0.5, "num_workers": 4,
             "prefetch_factor": 4, "pin_memory": True, "scan_threads": 8, "shards": None, "shuffle_buffer": 1000,
             "shard_streams": None},
    "features": {"frontend": "kaldi", "n_mels": 80, "dither": 0.0},
    "augment": {"speed_perturb": False, "musan": None, "rirs": None, "prob": 0.6, "musan_max_seconds": 10.0,
                "rir_max_seconds": 2.0, "group_prob": None, "group_speed": None,
                "group_many": 100, "group_few": 20},
    "model": {"name": "ecapa512"},
    "head": {"name": "aam"},  # other keys go to the head class (AAM defaults: scale 32, margin 0.2)
    "loss": {"name": "ce"},
    "encoder_loss": {"name": "none"},  # other keys go to the term's class (spkcausal.nn.encoder_losses)
    "sampler": {"name": "natural", "num_samples": None, "utts_per_speaker": 2},
    "optim": {"lr": 0.1, "final_lr": 5.0e-5, "warmup_epochs": 6, "momentum": 0.9, "nesterov": True,
              "weight_decay": 1.0e-4, "grad_clip": 0.0},
    "margin": {"start_epoch": 20, "end_epoch": 40},
    "train": {"epochs": 150, "batch_size": 128, "precision": "bf16", "device": "auto", "ckpt_every_steps": 1000,
              "keep_last": 3, "keep_epochs": 0, "log_every": 50, "tensorboard": True, "progress": True,
              "init_from": None, "init_head": False, "dist_timeout": 1800},
}

PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Key:
    """What one config key holds: kind 'int' | 'float' | 'bool' | 'str' | 'probs' ([many, medium, few]), an
    optional lower bound (`gt`: strict), upper bound and set of choices, and whether null is allowed."""

    kind: str
    minimum: float | None = None
    gt: bool = False
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False

    def describe(self) -> str:
        """The expectation in words, for error messages."""
        what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "probs": "[many, medium, few] probabilities in [0, 1]"}[self.kind]
        if self.choices:
            what = f"one of {', '.join(self.choices)}"
        if self.minimum is not None:
            what += f" {'>' if self.gt else '>='} {self.minimum:g}"
        if self.maximum is not None:
            what += f" <= {self.maximum:g}"
        return what + (" or null" if self.optional else "")

    def coerce(self, value: Any, key: str) -> Any:
        """`value` typed (numeric strings such as YAML's '1e-4' become numbers), or a UsageError naming `key`."""
        if value is None and self.optional:
            return None
        out = _COERCE[self.kind](value)
        ok = out is not None and (not self.choices or out in self.choices)
        if ok and self.minimum is not None:
            ok = out > self.minimum if self.gt else out >= self.minimum
        if ok and self.maximum is not None:
            ok = out <= self.maximum
        if not ok:
            raise UsageError(f"config key {key}: expected {self.describe()}, got {value!r}")
        return out


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    f = _as_float(v)
    return int(f) if f is not None and f.is_integer() else None


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v) if isinstance(v, (int, float, str)) else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


def _as_bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _as_str(v: Any) -> str | None:
    return str(v) if isinstance(v, (str, os.PathLike)) else None


def _as_probs(v: Any) -> list[float] | None:
    """Three probabilities [Many, Medium, Few] (tail-aware augmentation)."""
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        return None
    out = [_as_float(x) for x in v]
    return out if all(x is not None and 0.0 <= x <= 1.0 for x in out) else None


_COERCE = {"int": _as_int, "float": _as_float, "bool": _as_bool, "str": _as_str, "probs": _as_probs}
_PATH = Key("str", optional=True)
_POS, _COUNT = Key("float", 0, gt=True), Key("int", 0)
_GROUP_PROBS = Key("probs", optional=True)

TYPES: dict[str, Any] = {
    "exp_dir": _PATH,
    "seed": Key("int"),
    "data": {"train": _PATH, "sample_rate": Key("int", 1), "chunk_seconds": _POS, "min_seconds": Key("float", 0),
             "num_workers": _COUNT, "prefetch_factor": Key("int", 1), "pin_memory": Key("bool"),
             "scan_threads": Key("int", 1), "shards": _PATH, "shuffle_buffer": Key("int", 1),
             "shard_streams": Key("int", 1, optional=True)},
    "features": {"frontend": Key("str"), "n_mels": Key("int", 1), "dither": Key("float", 0)},
    "augment": {"speed_perturb": Key("bool"), "musan": _PATH, "rirs": _PATH, "prob": Key("float", 0, maximum=1),
                "musan_max_seconds": _POS, "rir_max_seconds": _POS, "group_prob": _GROUP_PROBS,
                "group_speed": _GROUP_PROBS, "group_many": _COUNT, "group_few": _COUNT},
    "sampler": {"name": Key("str"), "num_samples": Key("int", 1, optional=True), "utts_per_speaker": Key("int", 1)},
    "optim": {"lr": _POS, "final_lr": _POS, "warmup_epochs": Key("float", 0), "momentum": Key("float", 0),
              "nesterov": Key("bool"), "weight_decay": Key("float", 0), "grad_clip": Key("float", 0, optional=True)},
    "margin": {"start_epoch": Key("float", 0), "end_epoch": Key("float", 0)},
    "train": {"epochs": Key("int", 1), "batch_size": Key("int", 1), "precision": Key("str", choices=PRECISIONS),
              "device": Key("str"), "ckpt_every_steps": _COUNT, "keep_last": _COUNT, "keep_epochs": _COUNT,
              "log_every": _COUNT, "tensorboard": Key("bool"), "progress": Key("bool"), "init_from": _PATH,
              "init_head": Key("bool"), "dist_timeout": Key("float", 0, gt=True, optional=True)},
}


def typed(cfg: dict[str, Any]) -> dict[str, Any]:
    """Type every key of TYPES in a merged config in place (and return it); a wrong value is a UsageError."""
    for name, spec in TYPES.items():
        if isinstance(spec, Key):
            cfg[name] = spec.coerce(cfg[name], name)
        else:
            section = cfg[name]
            for key, kspec in spec.items():
                section[key] = kspec.coerce(section[key], f"{name}.{key}")
    return cfg


# Sections whose keys are fixed; model / head / loss / features pass their keys on to the built class.
_FIXED_SECTIONS = ("data", "augment", "sampler", "optim", "margin", "train")


def merge_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """DEFAULTS <- cfg, typed by TYPES; unknown sections, unknown keys of fixed sections (typos, mostly) and values
    of the wrong type or range are rejected."""
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise UsageError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(DEFAULTS)}")
    cfg = {k: ({} if v is None and isinstance(DEFAULTS[k], dict) else v) for k, v in cfg.items()}  # `data:` empty
    for section, value in cfg.items():
        if isinstance(DEFAULTS[section], dict) and not isinstance(value, Mapping):
            raise UsageError(f"config section {section!r} must be a mapping, got {value!r}")
    for section in _FIXED_SECTIONS:
        value = cfg.get(section) or {}
        if not isinstance(value, Mapping):
            raise UsageError(f"config section {section!r} must be a mapping, got {value!r}")
        bad = set(value) - set(DEFAULTS[section])
        if bad:
            raise UsageError(f"unknown key(s) {sorted(bad)} in config section {section!r}; "
                             f"expected some of {sorted(DEFAULTS[section])}")
    return typed(deep_merge(DEFAULTS, cfg))


def load_yaml(path: PathLike) -> dict[str, Any]:
    """Load a YAML mapping; errors name the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise DataError("config file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a directory; expected a YAML config file", path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(f"invalid YAML: {_yaml_problem(e)}", path, None if mark is None else mark.line + 1) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"expected a mapping at top level, got {type(data).__name__}", path, 1)
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """YAML's complaint in one line (its own text spans several, with the context and a caret)."""
    return " ".join(str(getattr(e, "problem", None) or e).split())


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge `update` into a copy of `base` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (`lr=0.1`, `dims=[1,2]`, `name=x`)."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise UsageError(f"override {item!r} has an empty key part")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise UsageError(f"override {item!r}: value {raw!r} is not valid YAML ({_yaml_problem(e)}); expected a "
                             "YAML scalar, [list] or {mapping}, e.g. train.epochs=10") from None
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def _paths(path: PathLike | Sequence[PathLike] | None) -> list[PathLike]:
    if path is None:
        return []
    return [path] if isinstance(path, (str, Path)) else list(path)


def load_config(path: PathLike | Sequence[PathLike] | None, overrides: Iterable[str] = (),
                defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """defaults <- YAML file(s), each over the one before (a base config, then e.g. a fine-tuning overlay)
    <- overrides, in that order."""
    cfg = dict(defaults or {})
    for p in _paths(path):
        cfg = deep_merge(cfg, load_yaml(p))
    return apply_overrides(cfg, overrides)


def save_config(cfg: Mapping[str, Any], path: PathLike) -> Path:
    """Write the merged config as YAML, atomically."""
    path = Path(path)
    write_text_atomic(path, yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None))
    return path


def load_train_config(path: PathLike | Sequence[PathLike] | None, overrides: Iterable[str] = (),
                      exp_dir: PathLike | None = None) -> dict[str, Any]:
    """DEFAULTS <- YAML(s) <- overrides (<- exp_dir), checked; a mistake is a DataError naming the config
    file(s)."""
    try:
        cfg = load_config(path, overrides)
        if exp_dir:
            cfg["exp_dir"] = str(exp_dir)
        return merge_defaults(cfg)
    except UsageError as e:
        raise DataError(str(e), " + ".join(str(p) for p in _paths(path)) or None) from None


def section_kwargs(section: Mapping[str, Any]) -> dict[str, Any]:
    """A config section's keys except `name` (what the registry passes to the built class)."""
    return {k: v for k, v in section.items() if k != "name"}
