"""Shared operations of the heads: the registry, the K-chunk split and its normalisations (l2, capsule), the
Causal Norm weight, and the float32 logit path (docs/design.md section 2)."""
from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...registry import Registry
from ...utils import UsageError

__all__ = ["EPS", "HEADS", "FEATURE_NORMS", "split_heads", "normalize_heads", "squash_heads", "feature_heads",
           "FeatureNorm", "causal_norm_weight", "float32", "in_float32"]

EPS = 1e-12

HEADS: Registry[type[nn.Module]] = Registry("head")


def split_heads(x: Tensor, num_heads: int) -> tuple[Tensor, ...]:
    """Split the last axis into `num_heads` contiguous equal chunks; the feature size must divide evenly."""
    d = x.shape[-1]
    if num_heads < 1 or d % num_heads:
        raise UsageError(f"feature size {d} is not divisible by num_heads={num_heads}")
    return torch.split(x, d // num_heads, dim=-1)


def normalize_heads(x: Tensor, num_heads: int) -> Tensor:
    """x^k / ||x^k|| for every chunk k, concatenated back to the full width."""
    return torch.cat([F.normalize(c, dim=-1, eps=EPS) for c in split_heads(x, num_heads)], dim=-1)


# The per-chunk feature normalisation of a Causal Norm head (its `feature_norm` annotation).
FeatureNorm = Literal["l2", "capsule"]
FEATURE_NORMS: tuple[str, ...] = typing.get_args(FeatureNorm)


def squash_heads(x: Tensor, num_heads: int) -> Tensor:
    """Capsule squash of every chunk, ||x^k|| / (1 + ||x^k||) * x^k / ||x^k||, concatenated to the full width."""
    parts = []
    for c in split_heads(x, num_heads):
        n = c.norm(dim=-1, keepdim=True)
        parts.append(c / (1.0 + n))  # = n / (1 + n) * c / n, without dividing by a zero norm
    return torch.cat(parts, dim=-1)


def feature_heads(x: Tensor, num_heads: int, feature_norm: str = "l2") -> Tensor:
    """The per-chunk feature normalisation of a Causal Norm head: unit length (l2) or the capsule squash."""
    if feature_norm == "capsule":
        return squash_heads(x, num_heads)
    return normalize_heads(x, num_heads)


def causal_norm_weight(weight: Tensor, num_heads: int, gamma: float) -> Tensor:
    """w_i^k / (||w_i^k|| + gamma) for every class i and chunk k, concatenated back to (C, D)."""
    return torch.cat([c / (c.norm(dim=-1, keepdim=True) + gamma) for c in split_heads(weight, num_heads)], dim=-1)


_F = TypeVar("_F", bound=Callable[..., Tensor])


def float32(t: Tensor) -> Tensor:
    """t in float32 if it is half precision (bf16 / fp16); float32 and float64 tensors are returned as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def in_float32(method: _F) -> _F:
    """Run a head method on x (its first argument) with autocast off and x in at least float32 precision."""
    @functools.wraps(method)
    def wrapper(self: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # Autocast would re-cast F.linear's inputs to bf16 even when x is float32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return method(self, float32(x), *args, **kwargs)
    return wrapper  # type: ignore[return-value]
