"""Building a head from its config section: the registry name, its keys checked against the head's signature."""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ...registry import check_kwargs
from ...utils import UsageError
from .causal import CausalNormHead
from .ops import HEADS

__all__ = ["check_head_kwargs", "build_head"]

# What build_head sets itself: never a config key of the head section.
_SET_BY_BUILDER = ("embed_dim", "num_classes", "class_counts")


def check_head_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The head section's keys as the head class takes them (a Causal Norm head's `scale` is its `tau`), coerced by
    its annotations; a key it does not have, or a value of the wrong kind, is a UsageError naming `head.key`."""
    cls, kwargs = HEADS.get(name), dict(kwargs)
    if issubclass(cls, CausalNormHead) and "scale" in kwargs:
        if "tau" in kwargs and kwargs["tau"] != kwargs["scale"]:
            raise UsageError("config key head.scale: give either tau or scale for a Causal Norm head, not both")
        kwargs["tau"] = kwargs.pop("scale")
    return check_kwargs(cls, kwargs, "head", fixed=_SET_BY_BUILDER)


def build_head(name: str, embed_dim: int, num_classes: int, class_counts: Any = None, **kwargs: Any) -> nn.Module:
    """Build a head by registry name; for Causal Norm heads `scale` is accepted as an alias of `tau`.

    `class_counts` (training utterances per class) reach the heads that use them (LDAM margins, feature
    transfer) and are dropped for the others; an option the head does not have is a UsageError naming it."""
    cls = HEADS.get(name)
    kwargs = check_head_kwargs(name, kwargs)
    if "class_counts" in inspect.signature(cls.__init__).parameters:
        kwargs["class_counts"] = class_counts
    return cls(embed_dim, num_classes, **kwargs)
