"""Migration commands: issued by the planner one per task at a time; accepted only signed with the
shared key, for this LEI, and fresh."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dragon.messages import codec
from dragon.messages.schemas import MigrationCommand, MigrationEvent, PlanDecision, PlannedMove
from dragon.migrator.commands import CommandRefused, sign, verify
from dragon.planner.commanding import CommandIssuer

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
        (replace(command(), signature="é" * 64), KEY, NOW, "bad_signature"),  # not even ASCII
    ],
)
def test_commands_are_refused_with_the_reason(cmd, key, now, reason):
    with pytest.raises(CommandRefused) as refused:
        verify(cmd, key, "lei1", now, max_age_s=60)
    assert refused.value.reason == reason


def decision(*moves: PlannedMove, decision_id: str = "d" * 32) -> PlanDecision:
    return PlanDecision(
        id=decision_id,
        lei="lei1",
        ts=NOW,
        mode="dragon",
        look_ahead=1,
        moves=moves,
        faulty_hosts=("lei1/h1",),
        fitness=0.1,
        fitness_unmoved=0.3,
        qos=0.1,
        art=0.1,
        aec=0.1,
        predicted_anomalous=0,
        decision_ms=5.0,
        isolated=False,
        leis=("lei1", "lei2"),
    )


OURS = PlannedMove("web", "lei1", "h1", "lei2", "h4", 0.3)
THEIRS = PlannedMove("db", "lei2", "h3", "lei1", "h2", 0.3)


def issuer() -> CommandIssuer:
    return CommandIssuer("lei1", "planner-1", KEY, pending_timeout_s=120, cooldown_s=60)


def answer(command: MigrationCommand, outcome: str, ts: float) -> MigrationEvent:
    return MigrationEvent(id=command.id, lei="lei1", task=command.task, outcome=outcome, ts=ts)


def test_only_this_leis_moves_become_commands_signed_with_the_key():
    (sent,) = issuer().commands_for(decision(OURS, THEIRS), NOW)
    assert (sent.task, sent.target_lei, sent.target_host, sent.issuer) == ("web", "lei2", "h4", "planner-1")
    verify(sent, KEY, "lei1", NOW, max_age_s=30)


def test_a_task_is_not_commanded_again_while_its_command_is_pending():
    planner = issuer()
    (first,) = planner.commands_for(decision(OURS), NOW)
    assert planner.commands_for(decision(OURS, decision_id="e" * 32), NOW + 10) == []  # the same plan, next interval
    assert planner.pending() == {"web": first.id}
    (again,) = planner.commands_for(decision(OURS, decision_id="f" * 32), NOW + 121)  # unanswered: timed out
    assert again.id != first.id


@pytest.mark.parametrize("outcome", ["done", "rolled_back", "failed"])
def test_after_any_answer_the_task_rests_for_the_cooldown(outcome):
    planner = issuer()
    (first,) = planner.commands_for(decision(OURS), NOW)
    assert planner.settle(answer(first, outcome, NOW + 1), NOW + 1)
    assert planner.commands_for(decision(OURS, decision_id="e" * 32), NOW + 30) == []
    assert len(planner.commands_for(decision(OURS, decision_id="f" * 32), NOW + 62)) == 1


def test_a_late_done_for_a_command_given_up_on_still_rests_the_task():
    planner = issuer()
    (first,) = planner.commands_for(decision(OURS), NOW)
    (second,) = planner.commands_for(decision(OURS, decision_id="e" * 32), NOW + 121)  # the first timed out
    assert not planner.settle(answer(first, "done", NOW + 122), NOW + 122)  # not the pending one...
    assert planner.pending() == {"web": second.id}
    assert planner.settle(answer(second, "refused", NOW + 123), NOW + 123)
    assert planner.commands_for(decision(OURS, decision_id="f" * 32), NOW + 130) == []  # ...but it moved


def test_an_answer_to_someone_elses_command_settles_nothing():
    planner = issuer()
    (sent,) = planner.commands_for(decision(OURS), NOW)
    stranger = MigrationEvent(id="other", lei="lei1", task="web", outcome="refused", ts=NOW)
    assert not planner.settle(stranger, NOW)
    assert planner.pending() == {"web": sent.id}


@pytest.mark.parametrize("target_host", ["..", "h1/../../x", "h 1", ""])
def test_a_command_naming_a_host_that_is_not_a_plain_id_is_malformed(target_host):
    with pytest.raises(codec.DecodeError, match="target_host"):
        codec.decode(MigrationCommand, codec.encode(command(target_host=target_host)), 65536)
