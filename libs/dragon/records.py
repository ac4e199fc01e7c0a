"""Plain-data records: rebuilding a dataclass from a dict without silent defaults; printing rows of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


class UnknownKeys(ValueError):
    """A record with keys its class does not have: a typo, or a record a newer version wrote."""


def check_known_keys(cls: type, data: Mapping[str, Any]) -> None:
    """Refuse keys ``cls`` does not have, so a typo never falls back to a default."""
    unknown = set(data) - {field.name for field in dataclasses.fields(cls)}
    if unknown:
        raise UnknownKeys(f"unknown {cls.__name__} keys: {sorted(unknown)}")


def markdown_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` as a Markdown table of ``columns``, in that order (other keys are left out)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(str(row[key]) for key in columns) + " |" for row in rows]
    return "\n".join(lines)
