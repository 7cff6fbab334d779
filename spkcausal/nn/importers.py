"""Other toolkits' extractor state dicts (wespeaker, 3D-Speaker) onto spkcausal extractors, every key accounted for.

A model whose parameters are laid out as the toolkit's needs nothing; one that names them differently defines
`toolkit_key(self, toolkit: str, key: str) -> str | None` (None: a key it knowingly drops). The toolkits'
classifier weights (`projection.*`) and BatchNorm's `num_batches_tracked` counters are not extractor state and are
skipped. Any other key left over, any parameter or buffer left unfilled and any shape that differs is a DataError
naming the first such key and its shape: a checkpoint of another architecture never half-loads.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..utils import DataError, PathLike

TOOLKITS = ("wespeaker", "3dspeaker", "speechbrain")
# Not extractor state: wespeaker's (and 3D-Speaker's) margin classifier, and BatchNorm's step counters, which
# have no effect in eval mode and which wespeaker checkpoints carry while exported state dicts may not.
SKIPPED_PREFIXES = ("projection.",)
SKIPPED_SUFFIXES = ("num_batches_tracked",)
# Wrappers the toolkits' trainers put around the model: DDP's `module.`, 3D-Speaker's `embedding_model.`.
WRAPPER_PREFIXES = ("module.", "embedding_model.")


def shape_text(t: torch.Tensor) -> str:
    """A tensor's shape as '(a, b, ...)' for an error message."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def map_toolkit_state(model: nn.Module, state: Mapping[str, torch.Tensor], toolkit: str) -> dict[str, torch.Tensor]:
    """The state dict under the model's own key names, without the keys that are not extractor state."""
    if toolkit not in TOOLKITS:
        raise ValueError(f"unknown toolkit {toolkit!r}; expected one of {', '.join(TOOLKITS)}")
    rename = getattr(model, "toolkit_key", None)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(SKIPPED_PREFIXES) or key.endswith(SKIPPED_SUFFIXES):
            continue
        ours = rename(toolkit, key) if rename is not None else key
        if ours is not None:
            out[ours] = value
    return out


def load_toolkit_state(model: nn.Module, state: Mapping[str, torch.Tensor], toolkit: str,
                       source: PathLike | None = None) -> None:
    """Fill every parameter and buffer of `model` from a toolkit's state dict, or raise DataError naming the first
    unexpected, missing or wrongly shaped key (with its shape) and `source`."""
    mapped = map_toolkit_state(model, state, toolkit)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(SKIPPED_SUFFIXES)}
    for key, value in mapped.items():
        if not isinstance(value, torch.Tensor):
            raise DataError(f"{toolkit} key {key!r} is not a tensor ({type(value).__name__})", source)
        if key not in own:
            raise DataError(f"unexpected {toolkit} key {key!r} {shape_text(value)}: not a parameter of "
                            f"{type(model).__name__} (a checkpoint of another architecture or size?)", source)
        if tuple(value.shape) != tuple(own[key].shape):
            raise DataError(f"{toolkit} key {key!r} has shape {shape_text(value)}; {type(model).__name__} expects "
                            f"{shape_text(own[key])}", source)
    missing = [k for k in own if k not in mapped]
    if missing:
        raise DataError(f"{toolkit} checkpoint lacks {missing[0]!r} {shape_text(own[missing[0]])} of "
                        f"{type(model).__name__} ({len(missing)} keys missing; truncated, or another "
                        f"architecture?)", source)
    with torch.no_grad():
        model.load_state_dict(mapped, strict=False)  # strict apart from the num_batches_tracked counters
