"""One registry style for everything a config names: models, heads, losses and samplers.

Each kind has one `Registry`; entries are added with the `register(name)` decorator, and an unknown name is a
`UsageError` that lists the valid ones, so `spkcausal` reports a config typo in one line.
"""
from __future__ import annotations

import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .utils import UsageError

T = TypeVar("T")


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
        """Call the entry registered under `name` with the given arguments (config values type-checked)."""
        entry = self.get(name)
        check_kwargs(entry, kwargs, self.kind)
        return entry(*args, **kwargs)  # type: ignore[operator]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _fits(default: Any, value: Any) -> str | None:
    """None when `value` has the kind of `default` (bool, int >= 1 where the default is, finite number),
    else the expectation in words."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return "an integer"
        return "an integer >= 1" if default >= 1 and value < 1 else None
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


def _admitted(entry: Any) -> dict[str, frozenset[Any]]:
    """Per annotated parameter of a builder, the types its annotation admits (`float | str` -> {float, str};
    `Any` -> {object}), evaluated, not read as text; {} when the annotations cannot be evaluated."""
    try:
        hints = typing.get_type_hints(entry.__init__ if inspect.isclass(entry) else entry)
    except Exception:  # noqa: BLE001 - a name only imported for type checking: judge by defaults alone
        return {}
    out = {}
    for name, hint in hints.items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        out[name] = frozenset(object if a is Any else a for a in args)
    return out


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def accepted_keys(entry: Any) -> set[str] | None:
    """The keyword names a builder takes, following its `forwards_to` (the callable, or 'module:name' of it, that
    its **kwargs are passed on to); None when they cannot be known (a **kwargs forwarded to nobody named)."""
    try:
        params = inspect.signature(entry.__init__ if inspect.isclass(entry) else entry).parameters
    except (TypeError, ValueError):
        return None
    names = {n for n, p in params.items() if p.kind in _NAMED and n != "self"}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        target = getattr(entry, "forwards_to", None)
        if isinstance(target, str):  # named lazily: e.g. speechbrain's class, imported only when asked
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
        more = None if target is None else accepted_keys(target)
        if more is None:
            return None
        names |= more - set(getattr(entry, "forwards_except", ()))  # those the entry sets itself
    return names


def check_kwargs(entry: Any, kwargs: dict[str, Any], section: str) -> None:
    """A config key the builder does not take (a typo: `model.embed_dims`), or a value of the wrong kind for one of
    its parameters (judged by its default: `embed_dim=abc`, `scale=true`, `channels=0`), is a UsageError naming
    `section.key`, before torch meets it."""
    names = accepted_keys(entry)
    unknown = sorted(set(kwargs) - names) if names is not None else []
    if unknown:
        raise UsageError(f"unknown config key {section}.{unknown[0]}; expected one of {', '.join(sorted(names))}")
    try:
        params = inspect.signature(entry.__init__ if inspect.isclass(entry) else entry).parameters
    except (TypeError, ValueError):
        return
    admitted = _admitted(entry)
    for key, value in kwargs.items():
        param = params.get(key)
        if param is None or param.default is inspect.Parameter.empty or param.default is None:
            continue
        kinds = admitted.get(key, frozenset())
        if isinstance(value, str) and kinds & {str, object}:  # e.g. momentum: float | str ('auto'); Any
            continue
        if value is None and kinds & {type(None), object}:  # e.g. oltr's stage1_epochs: float | int | None
            continue
        want = _fits(param.default, value)
        if want is not None:
            raise UsageError(f"config key {section}.{key}: expected {want}, got {value!r}")
