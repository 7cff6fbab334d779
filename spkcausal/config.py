"""YAML configs merged with `key.sub=value` command-line overrides; the merged config is saved with results."""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .utils import DataError, PathLike, write_text_atomic


def load_yaml(path: PathLike) -> dict[str, Any]:
    """Load a YAML mapping; errors name the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise DataError("config file not found", path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(f"invalid YAML: {getattr(e, 'problem', e)}", path,
                        None if mark is None else mark.line + 1) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"expected a mapping at top level, got {type(data).__name__}", path, 1)
    return data


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
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ValueError(f"override {item!r} has an empty key part")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: value is not valid YAML ({e})") from None
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def load_config(path: PathLike | None, overrides: Iterable[str] = (),
                defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """defaults <- YAML file <- overrides, in that order."""
    cfg = dict(defaults or {})
    if path is not None:
        cfg = deep_merge(cfg, load_yaml(path))
    return apply_overrides(cfg, overrides)


def save_config(cfg: Mapping[str, Any], path: PathLike) -> Path:
    """Write the merged config as YAML, atomically."""
    path = Path(path)
    write_text_atomic(path, yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None))
    return path
