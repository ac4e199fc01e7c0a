"""Helpers the container benchmarks share (dragon.testing.lei)."""

import pytest

from dragon.testing.lei import environment_items

pytestmark = pytest.mark.unit


def test_environment_items_split_at_the_first_equals_sign():
    items = ["DRAGON_DETECTOR_FAULT_SCORE=excess+unreal", "OMP_NUM_THREADS=1", "A=b=c", "EMPTY="]
    assert environment_items(items) == {
        "DRAGON_DETECTOR_FAULT_SCORE": "excess+unreal",
        "OMP_NUM_THREADS": "1",
        "A": "b=c",
        "EMPTY": "",
    }


@pytest.mark.parametrize("item", ["NOVALUE", "=nokey"])
def test_environment_items_name_what_is_malformed(item):
    with pytest.raises(ValueError, match=item):
        environment_items(["OK=1", item])
