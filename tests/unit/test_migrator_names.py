"""What the migrator names: a CRIU move's checkpoint and commit image, one per move, and the tasks of its schedule."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from dragon.messages import codec
from dragon.messages.schemas import Schedule
from dragon.migrator.moves import checkpoint_name, commit_image
from dragon.migrator.schedule import current_schedule

pytestmark = pytest.mark.unit

# Docker's rule for a tag, stricter than the one for a checkpoint's name.
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def test_the_moves_of_one_decision_have_images_of_their_own():
    decision = "6e15b6ccb2b3418fa6729a2bf947472e"  # the planner's move ids are "<decision>-<index>"
    assert commit_image(f"{decision}-0") != commit_image(f"{decision}-1")


@pytest.mark.parametrize("move_id", ["6e15b6ccb2b3418fa6729a2bf947472e-0", "x" * 64, "a/b c:d", "é" * 64, "m" * 200])
def test_a_checkpoint_name_is_a_docker_tag_whatever_the_move_id(move_id):
    assert DOCKER_TAG.fullmatch(checkpoint_name(move_id))


def test_ids_that_differ_only_where_docker_allows_no_character_keep_names_of_their_own():
    assert checkpoint_name("a/b") != checkpoint_name("a_b")
    assert checkpoint_name("m" * 64 + "0") != checkpoint_name("m" * 64 + "1")  # cut at 64 characters


def test_a_task_whose_id_no_message_may_carry_is_left_out_of_the_schedule_not_the_schedule_lost():
    """Every reader refuses a schedule holding a task id over 256 characters, whole: the planner
    then held every task of the LEI where no schedule placed it. The collector leaves such a task
    out of its host's samples; the schedule leaves it out too."""

    class Container:
        def __init__(self, name: str, labels: dict[str, str]) -> None:
            self.id, self.name = name * 2, name
            self.labels = {"dragon.task": "true", "dragon.lei": "a", "dragon.host": "h1", **labels}
            self.attrs = {"State": {"StartedAt": "2026-12-07T10:00:00Z"}}

    class Client:
        containers = SimpleNamespace(
            list=lambda **_: [Container("web", {}), Container("long", {"dragon.task.id": "x" * 300})]
        )

    schedule = current_schedule([Client()], "a", 1_800_000_000.0)
    assert [placement.task for placement in schedule.tasks] == ["web"]
    assert codec.decode(Schedule, codec.encode(schedule), 65536) == schedule
