"""A bridge between brokers speaks TLS and checks who answers (`dragon bridge --peer-ca-file`).

The bridges that work are exercised by every federation test (test_planner, test_federation_live);
here the peer is reached by a name its certificate does not hold, as an impostor on the path
would be, and the bridge must not log in.
"""

from __future__ import annotations

import time

import pytest

from .conftest import bridged_brokers

pytestmark = pytest.mark.integration

REFUSAL_TIMEOUT_S = 60  # Mosquitto retries a bridge with backoff (restart_timeout 1 30)


def test_a_bridge_does_not_log_in_to_a_peer_whose_certificate_lacks_the_address_it_dialled(tmp_path_factory, repo):
    with bridged_brokers(tmp_path_factory, repo, "t", uncertified="uncertified-peer") as (a, b, _):
        deadline = time.monotonic() + REFUSAL_TIMEOUT_S
        while "certificate verify failed" not in a.logs("relay"):
            assert time.monotonic() < deadline, a.logs("relay")[-3000:]
            time.sleep(1)
        assert f"as bridge-{a.lei}-to-{b.lei}" not in b.logs("mosquitto")
