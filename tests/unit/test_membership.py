import collections

import pytest

from dragon.detector.membership import owner

pytestmark = pytest.mark.unit

HOSTS = [f"h{i}" for i in range(200)]


def test_every_host_has_exactly_one_owner_and_load_is_spread():
    members = ["a", "b", "c"]
    counts = collections.Counter(owner(h, members) for h in HOSTS)
    assert set(counts) == set(members)
    assert min(counts.values()) > 40  # roughly a third each


def test_only_the_hosts_of_a_leaving_member_move():
    before = {h: owner(h, ["a", "b", "c"]) for h in HOSTS}
    after = {h: owner(h, ["a", "c"]) for h in HOSTS}
    moved = [h for h in HOSTS if before[h] != after[h]]
    assert moved and all(before[h] == "b" for h in moved)


def test_ownership_does_not_depend_on_member_order():
    assert all(owner(h, ["a", "b"]) == owner(h, ["b", "a"]) for h in HOSTS)
