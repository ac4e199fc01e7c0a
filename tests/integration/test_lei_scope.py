"""A detector judging the whole LEI at once (DRAGON_DETECTOR_SCOPE=lei) in a real emulated LEI.

It learns D(G, W, S) from the hosts' normal operation with their tasks and schedule, then a real
CPU hog in one host must become a fault event for that host and no other.
"""

from __future__ import annotations

import time

import pytest

from dragon.detector.modelstore import ModelStore
from dragon.messages import topics

from .conftest import DETECTOR_ENV, running_lei
from .test_faults import EVENT_BOUND_S, events, inject, watch
from .test_robustness import fresh_health

pytestmark = pytest.mark.integration

HOSTS = ["h1", "h2", "h3"]


@pytest.fixture(scope="module")
def lei_scope(tmp_path_factory, repo):
    with running_lei(tmp_path_factory, repo, "ls", HOSTS, {**DETECTOR_ENV, "DRAGON_DETECTOR_SCOPE": "lei"}) as stack:
        yield stack


def test_the_model_learnt_is_one_of_the_whole_lei_with_its_tasks(lei_scope):
    checkpoint = ModelStore(lei_scope.redis_client(), lei_scope.lei, "").fetch()
    assert checkpoint is not None and checkpoint.config.scope == "lei"
    # Every emulated host runs one demo task: three hosts and three tasks in the learnt federation.
    assert (checkpoint.meta["hosts"], checkpoint.meta["tasks"]) == (3, 3)
    logs = lei_scope.logs("detector")
    assert '"lei_detector_trained"' in logs and '"scope": "lei"' in logs
    assert '"fine_tuning_off_for_scope"' in logs  # said once, not silently skipped


def test_a_cpu_hog_is_a_fault_of_that_host_only_when_the_lei_is_judged_jointly(lei_scope):
    for host in HOSTS:
        fresh_health(lei_scope, host)  # every host is judged, as part of the LEI
    with watch(lei_scope) as listener:
        inject(lei_scope, "h2", "cpu", duration_s=20)
        listener.wait_for(
            lambda m: m.topic == topics.fault_event(lei_scope.lei, "h2") and b"start" in m.payload, EVENT_BOUND_S
        )
        time.sleep(3)  # a late false alarm on a healthy host would show up now
        (event,) = events(listener, "h2")[:1]
        assert event.label == 1 and event.score >= event.threshold
        assert "cpu" in [c.metric for c in event.top_metrics], event.top_metrics
        assert events(listener, "h1") == [] and events(listener, "h3") == []
