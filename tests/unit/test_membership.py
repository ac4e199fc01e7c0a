import collections

import pytest
import redis

from dragon.detector.membership import Membership, owner

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


class TimingOutRedis:
    """A Redis client whose every read times out (each after the client's socket timeout)."""

    def __init__(self) -> None:
        self.reads = 0

    def register_script(self, script: str):
        def run(*args, **kwargs):
            self.reads += 1
            raise redis.TimeoutError("Timeout reading from socket")

        return run


def test_a_redis_that_times_out_is_asked_once_a_second_not_once_per_sample() -> None:
    """A batch asks who owns each of its samples' hosts: up to 256 reads of 2 s each, minutes in
    which the worker judged nothing and the broker dropped the connection."""
    client = TimingOutRedis()
    membership = Membership(client, "lei1", "lei1-0")
    assert all(membership.owns(f"h{i}") for i in range(256))  # alone, as last known
    assert client.reads == 1
