"""The simulator service in a container, against the deployment's Mosquitto (password file, ACL).

Samples go in as the collector would publish them; requests go in as the operator, with an MQTT v5
response topic and correlation data; every request, valid or not, must get its answer there.
"""

from __future__ import annotations

import secrets as tokens
import time

import pytest

from dragon.messages import codec, topics
from dragon.messages.schemas import HostMetrics, HostSample, SimRequest, SimResponse, TaskMove, TaskUsage
from dragon.testing.lei import LeiStack
from dragon.testing.listener import Listener, publish

pytestmark = pytest.mark.integration

HOSTS = ["h1", "h2"]
ANSWER_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory, repo):
    stack = LeiStack(
        lei=f"sim{tokens.token_hex(3)}",
        hosts=HOSTS,
        workdir=tmp_path_factory.mktemp("sim"),
        mosquitto_conf=repo / "compose" / "mosquitto" / "broker.conf",
    )
    try:
        stack.start_brokers()
        stack.start_simulator("simulator")
        yield stack
    finally:
        stack.stop()


def publish_samples(stack: LeiStack) -> None:
    """h1 overloaded by two tasks, h2 idle: what a collector of this LEI would send now."""
    collector = stack.mqtt_settings("collector")
    loads = {"h1": (0.95, [("t1", 0.5), ("t2", 0.4)]), "h2": (0.05, [])}
    for host, (cpu, tasks) in loads.items():
        metrics = HostMetrics(cpu=cpu, ram=0.4, swap=0.0, disk_read=0.0, disk_write=0.0, net_rx=0.0, net_tx=0.0)
        usage = tuple(TaskUsage(id=t, name=t, cpu=c, ram_bytes=50e6) for t, c in tasks)
        sample = HostSample(stack.lei, host, time.time(), 1, 1.0, metrics, usage)
        publish(collector, topics.host_sample(stack.lei, host), codec.encode(sample), codec.MSGPACK)


def ask(stack: LeiStack, payload: bytes, content_type: str = codec.MSGPACK) -> tuple[SimResponse, bytes, str]:
    """Send one request and wait for the answer on our own response topic."""
    response_topic = f"{topics.sim_responses(stack.lei)}/test-{tokens.token_hex(4)}"
    correlation = tokens.token_bytes(8)
    operator = stack.mqtt_settings("operator")
    with Listener(operator, [response_topic]) as listener:
        publish(operator, topics.sim_request(stack.lei), payload, content_type, response_topic, correlation)
        (message,) = listener.wait_for(lambda m: True, ANSWER_TIMEOUT_S)
    response = codec.decode(SimResponse, message.payload, 1 << 20, message.content_type)
    return response, message.correlation_data, message.content_type


def request(kind: str, *decisions) -> bytes:
    return codec.encode(SimRequest(id=f"r-{tokens.token_hex(3)}", kind=kind, decisions=tuple(decisions)))


def answer_once_both_hosts_are_seen(stack: LeiStack) -> SimResponse:
    """Send samples and ask until the simulator has both hosts (it subscribes once connected)."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while True:
        publish_samples(stack)
        response, _, _ = ask(stack, request("next_window"))
        if response.ok and response.hosts == 2 or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def test_the_simulator_answers_with_the_state_it_keeps_from_the_samples(stack):
    response = answer_once_both_hosts_are_seen(stack)
    assert response.ok, response.error
    assert (response.hosts, response.tasks) == (2, 2)
    assert {(f.host, round(f.metrics.cpu, 2)) for f in response.forecast} == {("h1", 0.95), ("h2", 0.05)}


def test_an_evaluate_request_is_answered_on_its_response_topic_with_its_correlation_data(stack):
    publish_samples(stack)
    payload = request("evaluate", (), (TaskMove("t1", stack.lei, "h2"),))
    response, correlation, content_type = ask(stack, payload)
    assert response.ok, response.error
    assert len(correlation) == 8 and content_type == codec.MSGPACK
    stay, move = response.verdicts
    assert stay.anomalous_hosts == (f"{stack.lei}/h1",) and move.anomalous_hosts == ()
    assert move.fitness < stay.fitness
    assert response.simulator == "simulator"


def test_a_json_request_gets_a_json_answer(stack):
    publish_samples(stack)
    payload = codec.encode_json(SimRequest(id="json-1", kind="next_window"))
    response, _, content_type = ask(stack, payload, codec.JSON)
    assert response.ok and response.id == "json-1" and content_type == codec.JSON


@pytest.mark.parametrize(
    ("payload", "content_type", "reason"),
    [
        (b"\xc1 not msgpack", codec.MSGPACK, "malformed"),
        (codec.encode_json(SimRequest(id="x", kind="next_window")).replace(b'"v":1', b'"v":7'), codec.JSON, "version"),
        (b"\x81\xa1v\x01", codec.MSGPACK, "schema"),  # {"v": 1}: no id, no kind
        (b"\x00" * 70_000, codec.MSGPACK, "oversized"),
    ],
)
def test_a_malformed_request_gets_an_error_response_and_the_simulator_keeps_serving(
    stack, payload, content_type, reason
):
    response, correlation, _ = ask(stack, payload, content_type)
    assert not response.ok and response.reason == reason and response.error
    assert len(correlation) == 8
    publish_samples(stack)
    assert ask(stack, request("next_window"))[0].ok


def test_a_request_about_an_unknown_task_is_refused_with_the_reason(stack):
    publish_samples(stack)
    response, _, _ = ask(stack, request("evaluate", (TaskMove("ghost", stack.lei, "h2"),)))
    assert not response.ok and response.reason == "unknown" and "ghost" in response.error


def test_a_restarted_simulator_answers_again_from_the_next_samples(stack):
    stack.restart("simulator", wait_for="simulator_started")
    response = answer_once_both_hosts_are_seen(stack)
    assert response.ok and (response.hosts, response.tasks) == (2, 2), response.error


def test_scaled_each_request_is_answered_once_by_one_of_the_replicas(stack):
    """A shared subscription gives each request to one replica; until 2026-12-07 every replica
    answered every request. The deployment's ACL must let the replicas subscribe that way."""
    stack.start_simulator("simulator2")
    try:
        operator = stack.mqtt_settings("operator")
        response_topic = f"{topics.sim_responses(stack.lei)}/scaled-{tokens.token_hex(4)}"
        with Listener(operator, [response_topic]) as listener:
            deadline = time.monotonic() + ANSWER_TIMEOUT_S  # the new replica subscribes once connected
            while time.monotonic() < deadline and len(answered_by(listener)) < 2:
                publish_samples(stack)
                publish(operator, topics.sim_request(stack.lei), request("next_window"), codec.MSGPACK, response_topic)
                time.sleep(0.5)
            time.sleep(2)  # room for duplicates to arrive
            answers = answers_on(listener)
        assert len(answers) == len({a.id for a in answers}), "a request was answered twice"
        assert answered_by(listener) == {"simulator", "simulator2"}
    finally:
        stack.stop_service("simulator2")


def answers_on(listener: Listener) -> list[SimResponse]:
    return [codec.decode(SimResponse, m.payload, 1 << 20, m.content_type) for m in listener.matching(lambda m: True)]


def answered_by(listener: Listener) -> set[str]:
    return {answer.simulator for answer in answers_on(listener)}
