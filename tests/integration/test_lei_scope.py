"""A detector judging the whole LEI at once (DRAGON_DETECTOR_SCOPE=lei) in a real emulated LEI.

It learns D(G, W, S) from the hosts' normal operation with their tasks and schedule, then a real
CPU hog in one host must become a fault event for that host and no other, observed and, with a
simulator forecasting, predicted; and a replica whose confidence gate is forced open fine-tunes
the model on whole LEI steps.
"""

from __future__ import annotations

import json
import time

import pytest

from dragon.detector.modelstore import ModelStore
from dragon.messages import topics

from .conftest import DETECTOR_ENV, fresh_health, health_of, running_lei
from .test_faults import EVENT_BOUND_S, finished, inject_into_quiet_host, watch
from .test_online_finetune import FINE_TUNE_TIMEOUT_S, FORCED_ENV
from .test_predicted import FORECAST_TIMEOUT_S

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


# A healthy host may raise an alarm of its own now and then: on the emulated LEI the joint model
# raised 10 false starts in 42 minutes against 6 for per-host judging (docs/detector-quality.md),
# one of them during this test once. What must not happen is the fault spilling over: the
# healthy hosts' verdicts while h2 is faulty stay normal but for a few.
MAX_HEALTHY_ALARM_SHARE = 0.2


def test_a_cpu_hog_is_a_fault_of_that_host_and_the_healthy_hosts_stay_normal(lei_scope):
    for host in HOSTS:
        fresh_health(lei_scope, host)  # every host is judged, as part of the LEI
    with watch(lei_scope) as listener:
        injected = inject_into_quiet_host(lei_scope, listener, "h2", "cpu", duration_s=20)
        time.sleep(5)  # the fault goes on: the healthy hosts are judged beside it
        event = injected.starts["observed"]
        assert event.label == 1 and event.score >= event.threshold
        assert "cpu" in [c.metric for c in event.top_metrics], event.top_metrics
        verdicts = [health_of(m) for m in listener.matching(lambda m: m.topic.endswith("/health") and not m.retain)]
        during = [v for v in verdicts if v.host != "h2" and v.ts >= event.window_ts]
        assert len(during) >= 2 * 5, "the healthy hosts were not judged while h2 was faulty"
        assert sum(v.label for v in during) <= MAX_HEALTHY_ALARM_SHARE * len(during), during


def test_forecasts_are_judged_in_the_whole_lei_and_a_cpu_hog_is_flagged_in_predicted_mode(lei_scope):
    """Predicted mode with a joint model: each forecast is judged in the LEI at the step it starts
    from (lei.forecast_steps), with verdicts, a threshold and events of its own."""
    lei = lei_scope.lei
    lei_scope.start_simulator("simulator-lei")
    try:
        with watch(lei_scope, also=(topics.host_health(lei, "+", "predicted"),)) as listener:
            for host in HOSTS:
                listener.wait_for(
                    lambda m, h=host: m.topic == topics.host_health(lei, h, "predicted") and not m.retain,
                    FORECAST_TIMEOUT_S,
                )
            injected = inject_into_quiet_host(lei_scope, listener, "h1", "cpu", 15, modes=("predicted",))
            event = injected.starts["predicted"]
            assert event.score >= event.threshold and event.window_ts > event.ts - EVENT_BOUND_S
            assert "cpu" in [c.metric for c in event.top_metrics], event.top_metrics
            listener.wait_for(lambda m: finished(m, injected.command.id), 15 + EVENT_BOUND_S)  # h1 is quiet again
    finally:
        lei_scope.stop_service("simulator-lei")
    client = lei_scope.redis_client()
    assert sorted(h.decode() for h in client.hkeys(f"dragon:{lei}:predicted:pot")) == HOSTS


def test_an_lei_model_trains_offline_from_what_the_lei_recorded(lei_scope):
    command = ["dragon-detector", "train", "--from-redis", "--scope", "lei", "--out", "/tmp/lei.pt", "--epochs", "2"]
    result = lei_scope.containers["detector"].exec([*command, "--quiet"])
    assert result.exit_code == 0, result.output.decode()
    summary = json.loads(result.output.decode().strip().splitlines()[-1])
    assert summary["scope"] == "lei" and len(summary["model_id"]) == 12


def test_a_lei_model_is_fine_tuned_on_line_by_the_replica_that_judges_the_lei(lei_scope):
    models = ModelStore(lei_scope.redis_client(), lei_scope.lei, "")
    original = models.fetch()
    # The only replica must judge every host for a step to be learnt from: replace it by one
    # whose gate is forced open. SIGTERM, so it leaves the membership at once.
    lei_scope.containers["detector"].get_wrapped_container().stop(timeout=10)
    lei_scope.start_detector("tuner", FORCED_ENV)
    deadline = time.monotonic() + FINE_TUNE_TIMEOUT_S
    while models.current_id() == original.model_id and time.monotonic() < deadline:
        time.sleep(0.5)
    tuned = models.fetch()
    assert tuned.model_id != original.model_id, "no fine-tuned model within the timeout"
    assert tuned.config.scope == "lei" and tuned.meta["fine_tuned_from"] == original.model_id
    # Whole LEI steps: each holds the window of every fresh host (a host that was late for a
    # step by more than 3 intervals is not in it), so more host windows than steps.
    report = tuned.meta["fine_tune"]
    assert report["samples"] >= 2 and report["windows"] > report["samples"], report
    assert '"model_fine_tuned"' in lei_scope.logs("tuner")
    # The steps it learnt from were written through to Redis, for a replica that restarts.
    assert lei_scope.redis_client().zcard(f"dragon:{lei_scope.lei}:finetune:steps") >= 2
    for host in HOSTS:
        fresh_health(lei_scope, host)  # judging goes on with the tuned model
