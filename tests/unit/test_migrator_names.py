"""What the migrator names in Docker for a CRIU move: its checkpoint and commit image, one per move."""

from __future__ import annotations

import re

import pytest

from dragon.migrator.moves import checkpoint_name, commit_image

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
