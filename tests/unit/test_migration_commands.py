"""Migration commands: accepted only signed with the shared key, for this LEI, and fresh."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dragon.messages import codec
from dragon.messages.schemas import MigrationCommand
from dragon.migrator.commands import CommandRefused, sign, verify

pytestmark = pytest.mark.unit

KEY = b"k" * 32
NOW = 1_800_000_000.0


def command(**changes) -> MigrationCommand:
    fields = dict(id="c1", lei="lei1", task="3f2a9c1b7d0e", target_lei="lei2", target_host="h4", ts=NOW, issuer="p1")
    return MigrationCommand(**{**fields, **changes})


def test_a_signed_fresh_command_for_this_lei_is_accepted_and_survives_the_wire():
    signed = sign(command(), KEY)
    received = codec.decode(MigrationCommand, codec.encode(signed), 65536)
    verify(received, KEY, "lei1", NOW + 5, max_age_s=60)


@pytest.mark.parametrize(
    ("cmd", "key", "now", "reason"),
    [
        (command(), KEY, NOW, "unsigned"),
        (sign(command(), b"x" * 32), KEY, NOW, "bad_signature"),
        (replace(sign(command(), KEY), target_host="h9"), KEY, NOW, "bad_signature"),  # tampered after signing
        (sign(command(lei="lei2"), KEY), KEY, NOW, "wrong_lei"),
        (sign(command(), KEY), KEY, NOW + 61, "stale"),
        (sign(command(ts=NOW + 3600), KEY), KEY, NOW, "future"),
    ],
)
def test_commands_are_refused_with_the_reason(cmd, key, now, reason):
    with pytest.raises(CommandRefused) as refused:
        verify(cmd, key, "lei1", now, max_age_s=60)
    assert refused.value.reason == reason
