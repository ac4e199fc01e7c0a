"""Frozen, versioned message schemas validated from their type hints.

A schema is a frozen dataclass deriving from :class:`Message` with a class-level
``VERSION``. On the wire it is a map of its fields plus ``"v": VERSION``.
:meth:`Message.from_dict` checks every field against its annotation (numbers
finite, strings and sequences bounded), rejects a different major version and
ignores unknown keys, so a newer minor version of a producer stays readable.
Semantic limits beyond types go in ``check()``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, ClassVar

MAX_STR = 256
MAX_ITEMS = 1024
# What msgpack can carry: a message must encode again (stored, forwarded) as it was read.
MSGPACK_INT_MIN, MSGPACK_INT_MAX = -(2**63), 2**64 - 1


class SchemaError(ValueError):
    """A map does not fit its schema. ``reason`` is ``schema`` or ``version``."""

    def __init__(self, message: str, reason: str = "schema") -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Message:
    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.VERSION}
        for field in dataclasses.fields(self):
            out[field.name] = _to_wire(getattr(self, field.name))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        version = data.get("v")
        if type(version) is not int or version != cls.VERSION:  # true and 1.0 equal 1 in Python
            raise SchemaError(
                f"{cls.__name__} version {version!r} is not supported (expected {cls.VERSION})", "version"
            )
        obj = _build(cls, data, cls.__name__)
        obj.check()
        return obj

    def check(self) -> None:
        """Semantic checks beyond types; raise SchemaError."""


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_wire(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_wire(item) for key, item in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations of a schema class.

    Cached: resolving them took ~16 % of the detector's time per message under load
    (py-spy, docs/benchmarks.md), and a class's annotations never change.
    """
    return typing.get_type_hints(cls)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a map, got {type(data).__name__}")
    hints = _hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        path = f"{where}.{field.name}"
        if field.name in data:
            values[field.name] = _coerce(hints[field.name], data[field.name], path)
        elif field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
        else:
            raise SchemaError(f"{path}: missing")
    return cls(**values)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [opt for opt in options if opt is not type(None)]
        return _coerce(inner, value, path)
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"{path}: expected a list")
        if len(value) > MAX_ITEMS:
            raise SchemaError(f"{path}: more than {MAX_ITEMS} items")
        return tuple(_coerce(item_hint, item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise SchemaError(f"{path}: expected a map of at most {MAX_ITEMS} entries")
        return {_coerce(key_hint, k, f"{path} key"): _coerce(value_hint, v, f"{path}[{k}]") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    return _scalar(hint, value, path)


def _scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not MSGPACK_INT_MIN <= value <= MSGPACK_INT_MAX:  # JSON's integers have no bound
                raise SchemaError(f"{path}: out of range")
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(value, path)
    elif hint is str:
        if isinstance(value, str):
            if len(value) > MAX_STR:
                raise SchemaError(f"{path}: longer than {MAX_STR} characters")
            try:
                value.encode()  # JSON's "\ud800" decodes to a string no encoder takes back
            except UnicodeEncodeError:
                raise SchemaError(f"{path}: not valid UTF-8 text") from None
            return value
    else:
        raise TypeError(f"unsupported schema type {hint!r} at {path}")
    raise SchemaError(f"{path}: expected {hint.__name__}, got {type(value).__name__}")


def _finite(value: int | float, path: str) -> float:
    try:
        number = float(value)  # a JSON integer of hundreds of digits overflows a float
    except OverflowError:
        raise SchemaError(f"{path}: not a finite number") from None
    if not math.isfinite(number):
        raise SchemaError(f"{path}: not a finite number")
    return number


def clip(text: str) -> str:
    """Free text (an error, a reason) cut to what a message string may hold, marked as cut."""
    return text if len(text) <= MAX_STR else text[: MAX_STR - 1] + "…"


def require(condition: bool, message: str) -> None:
    """Raise SchemaError(message) unless ``condition``; for ``check()`` bodies."""
    if not condition:
        raise SchemaError(message)
