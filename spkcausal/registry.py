"""One registry style for everything a config names: models, heads, losses and samplers.

Each kind has one `Registry`; entries are added with the `register(name)` decorator, and an unknown name is a
`UsageError` that lists the valid ones, so `spkcausal` reports a config typo in one line.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Generic, TypeVar

from .schema import Range, coerce, field_hints
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
        """Call the entry registered under `name` with the given arguments (keyword values coerced by its
        annotations: `check_kwargs`)."""
        entry = self.get(name)
        return entry(*args, **check_kwargs(entry, kwargs, self.kind))  # type: ignore[operator]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _target(entry: Any) -> Any:
    """The callable a builder's **kwargs are passed on to (its `forwards_to`, imported if named as 'module:name'),
    None if it has none."""
    target = getattr(entry, "forwards_to", None)
    if isinstance(target, str):  # named lazily: e.g. speechbrain's class, imported only when asked
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    return target


def _params(entry: Any) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(entry.__init__ if inspect.isclass(entry) else entry).parameters)
    except (TypeError, ValueError):
        return None


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def accepted_keys(entry: Any) -> set[str] | None:
    """The keyword names a builder takes, following its `forwards_to` (the callable, or 'module:name' of it, that
    its **kwargs are passed on to); None when they cannot be known (a **kwargs forwarded to nobody named)."""
    params = _params(entry)
    if params is None:
        return None
    names = {n for n, p in params.items() if p.kind in _NAMED and n != "self"}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        target = _target(entry)
        more = None if target is None else accepted_keys(target)
        if more is None:
            return None
        names |= more - set(getattr(entry, "forwards_except", ()))  # those the entry sets itself
    return names


def _kind_of_default(default: Any) -> Any:
    """The annotation an unannotated parameter is judged by, from its default (as before annotations were read):
    true/false, an integer (>= 1 where the default is), a number, a string; None (not judged) otherwise."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return Annotated[int, Range(1)] if default >= 1 else int
    return {float: float, str: str}.get(type(default))


def builder_hints(entry: Any) -> dict[str, Any]:
    """Per keyword a builder takes, the annotation its value is coerced by (following `forwards_to` for what its
    **kwargs reach); an unannotated parameter is judged by its default's kind, or not at all."""
    params = _params(entry) or {}
    hints = field_hints(entry)
    out = {}
    for name, p in params.items():
        if p.kind not in _NAMED or name == "self":
            continue
        hint = hints.get(name)
        if hint is None and p.default is not inspect.Parameter.empty and p.default is not None:
            hint = _kind_of_default(p.default)
        if hint is not None:
            out[name] = hint
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        target = _target(entry)
        if target is not None:
            skip = set(out) | set(getattr(entry, "forwards_except", ()))
            out.update({k: v for k, v in builder_hints(target).items() if k not in skip})
    return out


def check_kwargs(entry: Any, kwargs: dict[str, Any], section: str, fixed: tuple[str, ...] = ()) -> dict[str, Any]:
    """`kwargs` coerced by the builder's annotations (spkcausal.schema.coerce); a config key the builder does not
    take (a typo: `model.embed_dims`; the `fixed` ones its caller sets itself) or a value of the wrong kind
    (`embed_dim=abc`, `scale=true`, `channels=0`) is a UsageError naming `section.key`, before torch meets it."""
    names = accepted_keys(entry)
    if names is not None:
        names -= set(fixed)
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UsageError(f"unknown config key {section}.{unknown[0]}; expected one of {', '.join(sorted(names))}")
    hints = builder_hints(entry)
    return {k: (coerce(v, hints[k], f"{section}.{k}") if k in hints else v) for k, v in kwargs.items()}
