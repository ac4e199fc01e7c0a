"""Plain-data records: rebuilding a dataclass from a dict without silent defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def check_known_keys(cls: type, data: Mapping[str, Any]) -> None:
    """Refuse keys ``cls`` does not have, so a typo never falls back to a default."""
    unknown = set(data) - {field.name for field in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
