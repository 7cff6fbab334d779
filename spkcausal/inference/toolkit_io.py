"""wespeaker and 3D-Speaker extractor checkpoints in: `spkcausal import-checkpoint` (docs/models.md).

A toolkit checkpoint is read with `torch.load(weights_only=True)` only, in the layouts the toolkits save:
wespeaker's `save_checkpoint` writes the model's plain state dict (`avg_model.pt`, `model_N.pt`, with the
`projection.*` classifier), 3D-Speaker's Checkpointer one plain state dict per recoverable
(`CKPT-EPOCH-N-00/embedding_model.ckpt`; its released `*.ckpt` / `*.bin` files are the same); a dict holding the
state dict under `model`, `state_dict`, `embedding_model` or `model_state_dict` is unwrapped. The keys go through
`nn.importers.load_toolkit_state` onto our registered model (`--model NAME`); the embedding width is read from
the shapes when the name's default does not fit, other widths come from `--model-args`. The result is an
experiment dir (config.yaml + avg_model.pt, no head) that embed, extract, export, load_model and
`train.init_from` take. SpeechBrain ECAPA checkpoints go to `speechbrain_io.import_speechbrain`.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn.importers import TOOLKITS
from ..utils import DataError, PathLike, UsageError, atomic_dir
from .speechbrain_io import import_speechbrain

# What a directory given as PATH is searched for, per toolkit (the toolkits' own file names).
CHECKPOINT_FILES = {"wespeaker": ("avg_model.pt", "final_model.pt", "avg_model"),
                    "3dspeaker": ("embedding_model.ckpt",)}
# Keys a checkpoint dict may nest its state dict under (trainers' and hubs' habits).
NESTED_KEYS = ("model", "state_dict", "embedding_model", "model_state_dict")
# Front-ends as the toolkits compute them: both Kaldi fbank with per-utterance mean normalisation; wespeaker
# uses a Hamming window on int16-scaled audio, 3D-Speaker Kaldi's default (povey) window on [-1, 1) audio (the
# scale is a constant log offset, which the mean normalisation removes).
FRONTENDS = {"wespeaker": {"window": "hamming"}, "3dspeaker": {"window": "povey"}}
# Where one of our models follows two toolkits, the other toolkit's variant: 3D-Speaker's CAM++ pools the std
# without wespeaker's 1e-7 under the square root (../shared/parity/README.md).
TOOLKIT_DEFAULTS = {("3dspeaker", "campplus"): {"std_eps": 0.0}}


def toolkit_builders() -> dict[tuple[str, str], Callable[[dict], tuple[str, dict]]]:
    """Every model family module's TOOLKIT_BUILDERS, merged: (toolkit, class) -> ctor args -> (name, kwargs)."""
    from ..nn import models

    out: dict[tuple[str, str], Callable[[dict], tuple[str, dict]]] = {}
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"{models.__name__}.{info.name}")
        out.update(getattr(module, "TOOLKIT_BUILDERS", {}))
    return out


def default_n_mels(name: str) -> int:
    """The mel bins a registered model's factory defaults to (72 for ReDimNet, as wespeaker trains it; else 80)."""
    import inspect

    from ..nn.models import MODELS

    param = inspect.signature(MODELS.get(name)).parameters.get("n_mels")
    return int(param.default) if param is not None and isinstance(param.default, int) else 80


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) for k in obj) and \
        all(isinstance(v, torch.Tensor) for v in obj.values())


def read_toolkit_state(src: PathLike, toolkit: str) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of a toolkit checkpoint file (or of the toolkit's file in a directory) and its path."""
    from ..nn.checkpoint import load_checkpoint

    path = Path(src)
    if path.is_dir():
        found = [path / n for n in CHECKPOINT_FILES.get(toolkit, ()) if (path / n).is_file()]
        if not found:
            raise DataError(f"no {' or '.join(CHECKPOINT_FILES.get(toolkit, ('checkpoint',)))} in this directory",
                            path)
        path = found[0]
    if not path.is_file():
        raise DataError("checkpoint file not found", path)
    obj = load_checkpoint(path, expected=f"expected a {toolkit} state dict (torch.save of tensors)")
    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        obj = next((obj[k] for k in NESTED_KEYS if _is_state_dict(obj.get(k))), obj)
    if not _is_state_dict(obj):
        what = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise DataError(f"no state dict of tensors here ({what}); expected a {toolkit} model state dict, "
                        f"plain or under one of {', '.join(NESTED_KEYS)}", path)
    return dict(obj), path


def _infer_embed_dim(model: nn.Module, state: Mapping[str, torch.Tensor], toolkit: str) -> int | None:
    """The embedding width a state dict was saved with, read from the first key whose shape differs from the
    model's only where the model has its own embed_dim (None: no such key, the width is not the difference)."""
    from ..nn.importers import map_toolkit_state

    ours, own = int(model.embed_dim), model.state_dict()
    for key, value in map_toolkit_state(model, state, toolkit).items():
        if key not in own or tuple(own[key].shape) == tuple(value.shape) or own[key].dim() != value.dim():
            continue
        diff = [i for i, (a, b) in enumerate(zip(own[key].shape, value.shape)) if a != b]
        widths = {int(value.shape[i]) for i in diff}
        if all(own[key].shape[i] == ours for i in diff) and len(widths) == 1:
            return widths.pop()
        return None
    return None


def build_imported(toolkit: str, name: str, state: Mapping[str, torch.Tensor], model_args: Mapping[str, Any],
                   source: PathLike | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Our model `name` filled from a toolkit state dict, and its merged config (no head); DataError names the
    first key that does not fit."""
    from ..nn.config import merge_defaults
    from ..nn.importers import load_toolkit_state
    from ..nn.network import build_extractor

    args = {**TOOLKIT_DEFAULTS.get((toolkit, name), {}), **model_args}
    n_mels = int(args.pop("n_mels", default_n_mels(name)))
    features = {"frontend": "kaldi", "n_mels": n_mels, **FRONTENDS.get(toolkit, {})}

    def config(kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return merge_defaults({"model": {"name": name, **kwargs}, "features": features, "head": {"name": "aam"}})

    cfg = config(args)
    try:
        model = build_extractor(cfg)
    except (TypeError, UsageError) as e:  # a --model-args key the factory does not take (the key check's words)
        raise UsageError(f"--model-args for {name}: {e}") from None
    if "embed_dim" not in args:
        width = _infer_embed_dim(model, state, toolkit)
        if width is not None and width != model.embed_dim:
            cfg = config({**args, "embed_dim": width})
            model = build_extractor(cfg)
    load_toolkit_state(model, state, toolkit, source)
    return model.eval(), cfg


def import_checkpoint(toolkit: str, src: PathLike, name: str | None, out: PathLike,
                      model_args: Mapping[str, Any] | None = None) -> Path:
    """Write experiment dir `out` (config.yaml, avg_model.pt without a head) from a toolkit checkpoint."""
    from ..data.shards import sha256_file
    from ..nn.checkpoint import load_checkpoint, save_checkpoint
    from ..nn.config import save_config

    if toolkit not in TOOLKITS:
        raise UsageError(f"--from {toolkit!r}; expected one of {', '.join(TOOLKITS)}")
    with atomic_dir(out) as tmp:
        if toolkit == "speechbrain":  # the ECAPA importer reads the whole architecture from the shapes
            if model_args:
                raise UsageError("--model-args: a SpeechBrain ECAPA's architecture is read from its shapes")
            ckpt = load_checkpoint(import_speechbrain(src, tmp / "avg_model.pt"))
            path = Path(ckpt["imported_from"]["path"])
        else:
            if not name:
                raise UsageError(f"--model: which of our models holds this {toolkit} checkpoint (docs/models.md)")
            state, path = read_toolkit_state(src, toolkit)
            model, cfg = build_imported(toolkit, name, state, model_args or {}, path)
            ckpt = {"config": cfg, "model": model.state_dict(), "head": None, "speakers": []}
        ckpt["imported_from"] = {"format": toolkit, "toolkit": toolkit, "path": str(path.resolve()),
                                 "sha256": sha256_file(path), "model": ckpt["config"]["model"]["name"]}
        save_config(ckpt["config"], tmp / "config.yaml")
        save_checkpoint(ckpt, tmp / "avg_model.pt")
    return Path(out)
