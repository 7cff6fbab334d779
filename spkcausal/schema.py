"""One annotation-driven check for every value a config holds: the keys of the fixed sections (frozen dataclasses,
`spkcausal.nn.config`) and the keyword arguments of the builders a config names (`spkcausal.registry`).

`coerce(value, hint, key)` returns the value typed by its annotation (numeric strings such as YAML's '1e-4' become
numbers, integral floats become integers where an int is asked for) or raises a one-line UsageError
`config key section.key: expected ..., got ...`. It understands `int`, `float`, `bool`, `str`, `Path`,
`Literal[...]`, unions (`X | None`), `list[X]` / `tuple[X, ...]`, `dict[...]`, dataclasses (a mapping of their
fields) and `Annotated[X, Range(...), Length(n), Says('...')]`; a type it does not know (a tensor, a module) is
not judged, as before annotations were read.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from .utils import UsageError

__all__ = ["Range", "Length", "Says", "coerce", "describe", "field_hints", "mapping_of", "AtLeast1", "Positive",
           "NonNegative", "Probs"]


@dataclass(frozen=True)
class Range:
    """Bounds of a number (or of each number of a list): `minimum` (strict when `gt`) and `maximum`."""

    minimum: float | None = None
    maximum: float | None = None
    gt: bool = False

    def admits(self, x: Any) -> bool:
        """Whether the number `x` lies inside."""
        if self.minimum is not None and not (x > self.minimum if self.gt else x >= self.minimum):
            return False
        return self.maximum is None or x <= self.maximum

    def describe(self) -> str:
        """The bounds in words, appended to the type's (' >= 1', ' > 0', ' >= 0 <= 1')."""
        out = "" if self.minimum is None else f" {'>' if self.gt else '>='} {self.minimum:g}"
        return out + ("" if self.maximum is None else f" <= {self.maximum:g}")


@dataclass(frozen=True)
class Length:
    """The number of items a list must have."""

    n: int


@dataclass(frozen=True)
class Says:
    """The expectation in words, where the type's own description would say less (e.g. what a list's items mean)."""

    text: str


AtLeast1 = Annotated[int, Range(1)]  # a count of at least one (epochs, heads, sub-centres)
Positive = Annotated[float, Range(0, gt=True)]
NonNegative = Annotated[float, Range(0)]
# Tail-aware augmentation's three probabilities [Many, Medium, Few].
Probs = Annotated[list[float], Range(0, 1), Length(3), Says("[many, medium, few] probabilities in [0, 1]")]

_FAIL = object()  # a value the hint does not admit
_UNION = (typing.Union, types.UnionType)


def field_hints(obj: Any) -> dict[str, Any]:
    """The evaluated annotations (with their Annotated metadata) of a dataclass, class's __init__ or function;
    {} when they cannot be evaluated (a name imported only for type checking)."""
    # a class's own annotations are its fields' (a dataclass) or its __init__'s parameters'
    target = obj.__init__ if isinstance(obj, type) and not dataclasses.is_dataclass(obj) else obj  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - NameError / TypeError of an annotation that cannot be evaluated here
        return {}
    hints.pop("return", None)
    if dataclasses.is_dataclass(obj):  # its fields only, not its ClassVars
        return {f.name: hints[f.name] for f in dataclasses.fields(obj)}
    return hints


def known(hint: Any) -> bool:
    """Whether `coerce` judges values of `hint` (False: a type it lets through unchecked, e.g. a tensor)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return known(typing.get_args(hint)[0])
    if origin in _UNION:
        return all(known(a) for a in typing.get_args(hint))
    if origin in (list, tuple, dict, Literal):
        return True
    return hint in (int, float, bool, str, Path, type(None), Any, object) or dataclasses.is_dataclass(hint)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` typed by `hint`, or a UsageError naming `key` (`section.key`) and the expectation."""
    out = _convert(value, hint, key)
    if out is _FAIL:
        raise UsageError(f"config key {key}: expected {describe(hint)}, got {value!r}")
    return out


def describe(hint: Any) -> str:
    """What `hint` admits, in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        said = [m.text for m in args[1:] if isinstance(m, Says)]
        if said:
            return said[0]
        return describe(args[0]) + "".join(m.describe() for m in args[1:] if isinstance(m, Range))
    if origin in _UNION:
        members = [a for a in args if a is not type(None)]
        if float in members and int in members:  # an int is a number already
            members.remove(int)
        return " or ".join(describe(a) for a in members) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return _yaml_word(args[0]) if len(args) == 1 else "one of " + ", ".join(_yaml_word(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_plural(args[0]) if args else 'values'}"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return _WORDS.get(hint, getattr(hint, "__name__", str(hint)))


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path",
          type(None): "null"}


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", bool: "true / false", str: "strings"}.get(hint, describe(hint) + "s")


def _yaml_word(v: Any) -> str:
    """A Literal choice as YAML writes it (null, true, false)."""
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    return str(v)


def _convert(value: Any, hint: Any, key: str) -> Any:
    """`value` typed by `hint`, or _FAIL; a nested mapping's own mistakes raise naming their `key.sub`."""
    if hint is Any or hint is object:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _bounded(_convert(value, args[0], key), args[1:])
    if origin in _UNION:
        return _union(value, args, key)
    if origin is Literal:
        # by kind and value: True == 1 and 0 == False in Python, not in a config
        return value if any(type(value) is type(c) and value == c for c in args) else _FAIL
    if origin in (list, tuple):
        return _sequence(value, origin, args, key)
    if origin is dict:
        return dict(value) if isinstance(value, Mapping) else _FAIL
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):  # given by code, already built
            return value
        return mapping_of(hint, value, key, defaults=False) if isinstance(value, Mapping) else _FAIL
    if hint is type(None):
        return None if value is None else _FAIL
    convert = _SCALARS.get(hint)
    if convert is None:
        return value  # a type not judged here (a tensor, a module): unchecked, as before
    out = convert(value)
    return _FAIL if out is None else out


def _bounded(out: Any, meta: tuple[Any, ...]) -> Any:
    if out is _FAIL:
        return _FAIL
    items = out if isinstance(out, (list, tuple)) else [out]
    for m in meta:
        if isinstance(m, Range) and not all(m.admits(x) for x in items if x is not None):
            return _FAIL
        if isinstance(m, Length) and len(items) != m.n:
            return _FAIL
    return out


def _union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """The first member that admits `value` as it is (an int stays an int in `float | int`), else the first that
    converts it; a union with a member not judged here lets an unconverted value through."""
    if value is None:
        return None if type(None) in args else _FAIL
    ordered = sorted(args, key=lambda a: not _is_kind(value, a))
    for a in ordered:
        if a is type(None):
            continue
        out = _convert(value, a, key)
        if out is not _FAIL:
            return out
    return _FAIL if all(known(a) for a in args) else value


def _is_kind(value: Any, hint: Any) -> bool:
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    base = typing.get_origin(base) or base
    if base is Literal:
        return isinstance(value, str)
    if isinstance(value, bool) or base is bool:
        return base is bool and isinstance(value, bool)
    return isinstance(base, type) and isinstance(value, base)


def _sequence(value: Any, origin: type, args: tuple[Any, ...], key: str) -> Any:
    if not isinstance(value, (list, tuple)):
        return _FAIL
    if origin is tuple and not (len(args) == 2 and args[1] is ...):
        return tuple(value)  # a fixed-length tuple: not judged item by item
    item = args[0] if args else Any
    out = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return _FAIL if any(v is _FAIL for v in out) else origin(out)


def mapping_of(cls: type, value: Mapping[str, Any], key: str, defaults: bool = True) -> dict[str, Any]:
    """A mapping of dataclass `cls`'s fields, each coerced (naming `key.field`); an unknown key is a UsageError;
    with `defaults`, the fields not given take their defaults."""
    hints = field_hints(cls)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise UsageError(f"unknown config key {key}.{unknown[0]}; expected one of {', '.join(sorted(hints))}")
    given = {k: coerce(v, hints[k], f"{key}.{k}") for k, v in value.items()}
    if not defaults:
        return given
    return {**{f.name: dataclass_default(f) for f in dataclasses.fields(cls)}, **given}


def dataclass_default(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one from its default_factory)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, numbers.Integral):  # numpy's integers too
        return int(v)
    if isinstance(v, str):
        try:  # exactly, where a float would round a long integer
            return int(v.strip())
        except ValueError:
            pass
    f = _as_float(v)
    return int(f) if f is not None and f.is_integer() else None


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v) if isinstance(v, (numbers.Real, str)) else None
    except (ValueError, OverflowError):
        return None
    return f if f is not None and math.isfinite(f) else None


def _as_bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _as_str(v: Any) -> str | None:
    return str(v) if isinstance(v, (str, os.PathLike)) else None


def _as_path(v: Any) -> Path | None:
    return Path(v) if isinstance(v, (str, os.PathLike)) else None


_SCALARS: dict[Any, Callable[[Any], Any]] = {int: _as_int, float: _as_float, bool: _as_bool, str: _as_str,
                                              Path: _as_path}
