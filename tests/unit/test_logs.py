"""dragon.logs: a repeating line let through at most once per interval."""

from __future__ import annotations

import pytest

from dragon.logs import EveryInterval

pytestmark = pytest.mark.unit


def test_a_repeating_line_passes_once_per_interval_and_says_how_many_were_held_back():
    now = [0.0]
    every = EveryInterval(60.0, clock=lambda: now[0])
    seen = []
    for t in (0, 1, 2, 59.9, 60, 61, 200):
        now[0] = t
        seen.append(every.due())
    # 0 passes; 1, 2 and 59.9 are held back; 60 passes and says 3; 61 held; 200 passes and says 1.
    assert seen == [0, None, None, None, 3, None, 1]


def test_once_the_trouble_is_over_the_next_occurrence_passes_at_once():
    now = [0.0]
    every = EveryInterval(60.0, clock=lambda: now[0])
    assert every.due() == 0
    now[0] = 10
    assert every.due() is None  # held back
    every.reset()  # it went away
    now[0] = 20
    assert every.due() == 0  # a new outage: its first line, and nothing of the old one counted
