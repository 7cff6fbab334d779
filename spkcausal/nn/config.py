"""Training configs: the schema (`Config`, one frozen dataclass per fixed section, whose annotations say what each
key holds and whose defaults are DEFAULTS; docs/training.md explains them), YAML loading and `key.sub=value`
command-line overrides. A config stays a plain nested dict (`cfg["train"]["epochs"]`, config.yaml);
`merge_defaults` types every fixed key once through the annotations (spkcausal.schema.coerce), so readers take
`cfg[...]` as it is. The merged config is saved with every experiment."""
from __future__ import annotations

import copy
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml

from ..schema import AtLeast1, NonNegative, Positive, Probs, Range, coerce, field_hints
from ..utils import DataError, PathLike, UsageError, write_text_atomic

Precision = Literal["bf16", "fp16", "fp32"]

# The kinds of value the fixed sections hold (bounds as Annotated metadata: spkcausal.schema).
PathText = str | None  # a path, kept as text in the saved config
Count = Annotated[int, Range(0)]


@dataclass(frozen=True)
class Data:
    """`data`: the training data dir (or shards) and how it is read."""

    train: PathText = None
    labels: Literal["speaker", "utterance"] = "speaker"
    sample_rate: AtLeast1 = 16000
    chunk_seconds: Positive = 2.0
    min_seconds: NonNegative = 0.5
    num_workers: Count = 4
    prefetch_factor: AtLeast1 = 4
    pin_memory: bool = True
    scan_threads: AtLeast1 = 8
    shards: PathText = None
    shuffle_buffer: AtLeast1 = 1000
    shard_streams: AtLeast1 | None = None


@dataclass(frozen=True)
class Features:
    """`features`: the front-end; keys beyond these pass on to the front-end's class."""

    OPEN: ClassVar[bool] = True
    frontend: str = "kaldi"
    n_mels: AtLeast1 = 80
    dither: NonNegative = 0.0


@dataclass(frozen=True)
class Augment:
    """`augment`: speed perturbation, MUSAN noise, RIRs, and their tail-aware group probabilities."""

    speed_perturb: bool = False
    speed_new_speakers: bool = True
    musan: PathText = None
    rirs: PathText = None
    prob: Annotated[float, Range(0, 1)] = 0.6
    musan_max_seconds: Positive = 10.0
    rir_max_seconds: Positive = 2.0
    group_prob: Probs | None = None
    group_speed: Probs | None = None
    group_many: Count = 100
    group_few: Count = 20


@dataclass(frozen=True)
class Sampler:
    """`sampler`: which utterances make a batch."""

    name: str = "natural"
    num_samples: AtLeast1 | None = None
    utts_per_speaker: AtLeast1 = 2
    views: AtLeast1 = 1


@dataclass(frozen=True)
class Optim:
    """`optim`: SGD and its warm-up / exponential-decay learning rate."""

    lr: Positive = 0.1
    final_lr: Positive = 5.0e-5
    warmup_epochs: NonNegative = 6
    momentum: NonNegative = 0.9
    nesterov: bool = True
    weight_decay: NonNegative = 1.0e-4
    grad_clip: NonNegative | None = 0.0


@dataclass(frozen=True)
class Margin:
    """`margin`: the margin schedule of margin heads (ramped between the two epochs)."""

    start_epoch: NonNegative = 20
    end_epoch: NonNegative = 40


@dataclass(frozen=True)
class Train:
    """`train`: the run's length, batch, precision, checkpoints and logging."""

    epochs: AtLeast1 = 150
    batch_size: AtLeast1 = 128
    precision: Precision = "bf16"
    device: str = "auto"
    ckpt_every_steps: Count = 1000
    keep_last: Count = 3
    keep_epochs: Count = 0
    log_every: Count = 50
    tensorboard: bool = True
    progress: bool = True
    init_from: PathText = None
    init_head: bool = False
    dist_timeout: Annotated[float, Range(0, gt=True)] | None = 1800


def _named(name: str) -> Any:
    return field(default_factory=lambda: {"name": name})


@dataclass(frozen=True)
class Config:
    """A training config: its sections in the order config.yaml lists them. model / head / loss / encoder_loss
    pass their keys other than `name` to the built class (checked against its signature: spkcausal.registry)."""

    exp_dir: PathText = None
    seed: int = 42
    data: Data = field(default_factory=Data)
    features: Features = field(default_factory=Features)
    augment: Augment = field(default_factory=Augment)
    model: dict[str, Any] = _named("ecapa512")
    head: dict[str, Any] = _named("aam")  # AAM defaults: scale 32, margin 0.2
    loss: dict[str, Any] = _named("ce")
    encoder_loss: dict[str, Any] = _named("none")  # spkcausal.nn.encoder_losses
    sampler: Sampler = field(default_factory=Sampler)
    optim: Optim = field(default_factory=Optim)
    margin: Margin = field(default_factory=Margin)
    train: Train = field(default_factory=Train)


_HINTS = field_hints(Config)
_SECTIONS: dict[str, type] = {name: hint for name, hint in _HINTS.items()
                              if isinstance(hint, type) and is_dataclass(hint)}

# The defaults as a plain nested dict (what a config is in memory and in config.yaml).
DEFAULTS: dict[str, Any] = asdict(Config())
# What every typed key holds: top-level keys map to their annotation, sections to {key: annotation}.
TYPES: dict[str, Any] = {name: (field_hints(_SECTIONS[name]) if name in _SECTIONS else hint)
                         for name, hint in _HINTS.items() if name in _SECTIONS or typing.get_origin(hint) is not dict}
# Sections whose keys are fixed; model / head / loss / encoder_loss / features pass theirs on to the built class.
_FIXED_SECTIONS = tuple(name for name, cls in _SECTIONS.items() if not getattr(cls, "OPEN", False))


def typed(cfg: dict[str, Any]) -> dict[str, Any]:
    """Type every key of TYPES in a merged config in place (and return it); a wrong value is a UsageError."""
    for name, spec in TYPES.items():
        if isinstance(spec, dict):
            section = cfg[name]
            for key, hint in spec.items():
                section[key] = coerce(section[key], hint, f"{name}.{key}")
        else:
            cfg[name] = coerce(cfg[name], spec, name)
    return cfg


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
        bad = set(cfg.get(section) or {}) - set(DEFAULTS[section])
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
    return [path] if isinstance(path, (str, os.PathLike)) else list(path)


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
