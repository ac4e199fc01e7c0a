"""Wire codec: msgpack maps (MQTT v5 content type ``application/msgpack``) and a
JSON rendering of the same maps for tools that cannot decode msgpack.

Decoding validates at the edge: :func:`decode` either returns a valid, frozen
schema object or raises :class:`DecodeError` with a short machine-readable
``reason`` that callers count and log; it never raises anything else on input.
"""

from __future__ import annotations

import json
from typing import TypeVar

import msgpack

from dragon.messages.schema import Message, SchemaError

MSGPACK = "application/msgpack"
JSON = "application/json"

M = TypeVar("M", bound=Message)


class DecodeError(ValueError):
    """A payload was refused. ``reason`` is one of: oversized, malformed, schema, version, future
    (stamped further ahead than clock skew explains)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(message: Message) -> bytes:
    return msgpack.packb(message.to_dict(), use_bin_type=True)


def encode_json(message: Message) -> bytes:
    return json.dumps(message.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def is_json(payload: bytes, content_type: str = "") -> bool:
    """Whether a payload is read as JSON: by its content type, or without one by its first byte."""
    return content_type == JSON or (not content_type and payload[:1] == b"{")


def decode(cls: type[M], payload: bytes, max_bytes: int, content_type: str = "") -> M:
    if len(payload) > max_bytes:
        raise DecodeError("oversized", f"{len(payload)} bytes > limit {max_bytes}")
    try:
        # Without a content type, a payload that opens with "{" is JSON: a msgpack map
        # never starts with that byte, so tools like mosquitto_pub can send plain JSON.
        if is_json(payload, content_type):
            data = json.loads(payload)
        else:
            # Bounds on container sizes stop a small payload from expanding into a huge object.
            data = msgpack.unpackb(
                payload, raw=False, strict_map_key=True, max_array_len=4096, max_map_len=256, max_str_len=4096
            )
    # RecursionError: JSON nested a few thousand deep fits in 64 KiB and overflows the parser's stack.
    except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError("malformed", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError("malformed", f"expected a map, got {type(data).__name__}")
    try:
        return cls.from_dict(data)
    except SchemaError as exc:
        raise DecodeError(exc.reason, str(exc)) from None
    except (ArithmeticError, ValueError, TypeError) as exc:
        # A check() meeting a value no test thought of must cost this message only, not its batch.
        raise DecodeError("schema", f"{type(exc).__name__}: {exc}") from None
