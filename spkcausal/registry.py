"""One registry style for everything a config names: models, heads, losses and samplers.

Each kind has one `Registry`; entries are added with the `register(name)` decorator, and an unknown name is a
`UsageError` that lists the valid ones, so `spkcausal` reports a config typo in one line.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .utils import UsageError

T = TypeVar("T")

# The built-in heads by name, Causal Norm or not: lets `spkcausal model-info` (asked by the recipes once per
# experiment) answer without importing torch; tests/test_heads.py checks these against the registered classes.
BUILTIN_HEADS = {"linear": False, "cosine": False, "aam": False, "causal_norm": True, "causal_norm_aam": True}
BUILTIN_HEADS["oltr"] = False  # spkcausal.nn.oltr


class Registry(Generic[T]):
    """Name -> entry (a class or a factory) for one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an entry under `name`; a name registered twice is a bug and raises."""
        def wrap(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = entry
            return entry
        return wrap

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry registered under `name`; UsageError naming the valid ones if there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value from a config (a list, a mapping)
            raise UsageError(f"unknown {self.kind} {name!r}; expected one of {', '.join(self.names())}") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the entry registered under `name` with the given arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
