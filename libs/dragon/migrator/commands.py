"""Who may move a task: migration commands signed with a shared key, and fresh.

The broker's ACL decides who may publish on the command topic; the migrator does not rely on it
alone. A command carries an HMAC-SHA256 over its canonical form (every field but the signature,
msgpack with sorted keys) under a key that only the planner and the migrator hold. The migrator
refuses, with a reason, a command that is unsigned, wrongly signed, for another LEI, older than
the allowed age, or dated in the future beyond the clock skew allowed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import asdict, replace

import msgpack

from dragon.messages.schemas import MigrationCommand

CLOCK_SKEW_S = 10.0


class CommandRefused(ValueError):
    """A command the migrator will not carry out; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical(command: MigrationCommand) -> bytes:
    """The bytes a signature covers: every field but the signature, in a fixed order."""
    fields = asdict(command)
    fields.pop("signature")
    return msgpack.packb(dict(sorted(fields.items())), use_bin_type=True)


def sign(command: MigrationCommand, key: bytes) -> MigrationCommand:
    """The command with its signature under ``key``."""
    return replace(command, signature=hmac.new(key, canonical(command), hashlib.sha256).hexdigest())


def verify(command: MigrationCommand, key: bytes, lei: str, now: float, max_age_s: float) -> None:
    """Raise CommandRefused unless ``command`` is signed with ``key``, for ``lei``, and fresh."""
    verify_authentic(command, key, lei)
    verify_fresh(command, now, max_age_s)


def verify_authentic(command: MigrationCommand, key: bytes, lei: str) -> None:
    """Raise CommandRefused unless ``command`` is signed with ``key`` and for ``lei``."""
    if not command.signature:
        raise CommandRefused("unsigned", f"command {command.id} carries no signature")
    expected = hmac.new(key, canonical(command), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), command.signature.encode()):  # str compare: ASCII only
        raise CommandRefused("bad_signature", f"command {command.id} is not signed with the migration key")
    if command.lei != lei:
        raise CommandRefused("wrong_lei", f"command {command.id} is for LEI {command.lei!r}, not {lei!r}")


def verify_fresh(command: MigrationCommand, now: float, max_age_s: float) -> None:
    """Raise CommandRefused if ``command`` is dated in the future or older than ``max_age_s``."""
    if command.ts > now + CLOCK_SKEW_S:
        raise CommandRefused("future", f"command {command.id} is dated {command.ts - now:.0f} s in the future")
    if now - command.ts > max_age_s:
        raise CommandRefused("stale", f"command {command.id} is {now - command.ts:.0f} s old (at most {max_age_s:.0f})")
