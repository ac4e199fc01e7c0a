import dataclasses
import json

import msgpack
import pytest

from dragon.messages import codec, topics
from dragon.messages.codec import DecodeError
from dragon.messages.schema import MAX_STR, clip
from dragon.messages.schemas import (
    FaultEvent,
    FaultInjection,
    ForecastSample,
    HostHealth,
    HostMetrics,
    HostSample,
    MetricContribution,
    TaskUsage,
)

pytestmark = pytest.mark.unit
LIMIT = 65536


def sample(**overrides) -> HostSample:
    fields = dict(
        lei="lei1",
        host="h1",
        ts=1.8e9,
        seq=3,
        interval_s=2.0,
        metrics=HostMetrics(0.1, 0.2, 0.0, 10.0, 20.0, 30.0, 40.0),
        tasks=(TaskUsage("abc", "task-0", 0.05, 1e6),),
    )
    fields.update(overrides)
    return HostSample(**fields)


def test_msgpack_round_trip_is_exact():
    original = sample()
    assert codec.decode(HostSample, codec.encode(original), LIMIT) == original


def test_json_round_trip_and_sniffing_without_content_type():
    event = FaultEvent(
        event_id="e",
        type="start",
        lei="lei1",
        host="h1",
        ts=1.0,
        window_ts=1.0,
        score=2.0,
        threshold=1.0,
        label=1,
        mode="observed",
        top_metrics=(MetricContribution("cpu", 0.9),),
        model_id="m",
        detector="d",
    )
    data = codec.encode_json(event)
    assert json.loads(data)["v"] == 1
    assert codec.decode(FaultEvent, data, LIMIT, codec.JSON) == event
    assert codec.decode(FaultEvent, data, LIMIT) == event  # leading "{" means JSON


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\xc1\x00garbage", "malformed"),
        (b"{not json", "malformed"),
        # JSON nested past the parser's stack, in under 64 KiB.
        pytest.param(b'{"a":' + b"[" * 25_000 + b"]" * 25_000 + b"}", "malformed", id="nested"),
        (msgpack.packb([1, 2, 3]), "malformed"),
        (b"\x00" * (LIMIT + 1), "oversized"),
        (msgpack.packb({"v": 2}), "version"),
        (msgpack.packb(sample().to_dict() | {"v": True}), "version"),  # True == 1 in Python
        (msgpack.packb(sample().to_dict() | {"v": 1.0}), "version"),
        (msgpack.packb({"v": 1, "lei": "lei1"}), "schema"),
    ],
)
def test_bad_payloads_are_refused_with_a_reason(payload, reason):
    with pytest.raises(DecodeError) as info:
        codec.decode(HostSample, payload, LIMIT)
    assert info.value.reason == reason


def _with(path: list[str], value) -> bytes:
    data = sample().to_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return msgpack.packb(data)


@pytest.mark.parametrize(
    "path, value",
    [
        (["metrics", "cpu"], "high"),
        (["metrics", "cpu"], float("nan")),
        (["metrics", "cpu"], -0.5),
        (["metrics", "ram"], 12.0),
        (["seq"], True),
        (["seq"], 1.5),
        (["host"], "x" * 300),
        (["tasks"], [{"id": "a"}]),
        (["tasks"], [{"id": "a", "name": "b", "cpu": 0.1, "ram_bytes": 1.0}] * 2000),
        (["tasks"], [{"id": "a", "name": "b", "cpu": 1e30, "ram_bytes": 1.0}]),
        (["tasks"], [{"id": "a", "name": "b", "cpu": -0.1, "ram_bytes": 1.0}]),
        (["tasks"], [{"id": "a", "name": "b", "cpu": 0.1, "ram_bytes": -1.0}]),
        (["tasks"], [{"id": "", "name": "b", "cpu": 0.1, "ram_bytes": 1.0}]),
        (["interval_s"], 0),
        (["interval_s"], 1e-300),  # would ask the store for 1e300 samples per host
        (["interval_s"], 1e9),
        (["seq"], -1),
        (["seq"], 2**63),  # msgpack cannot store it again
        (["metrics", "disk_read"], 1e300),  # inf in float32
        (["metrics", "net_tx"], 2e12),
        (["tasks"], [{"id": "a", "name": "b", "cpu": 0.1, "ram_bytes": 1e300}]),
    ],
)
def test_wrong_shapes_are_schema_errors(path, value):
    with pytest.raises(DecodeError) as info:
        codec.decode(HostSample, _with(path, value), 10**7)
    assert info.value.reason in {"schema", "malformed"}


def _json_with(path: list[str], value) -> bytes:
    data = json.loads(codec.encode_json(sample()))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "path, value",
    [
        (["ts"], 10**400),  # JSON's integers have no bound; no float holds it
        (["seq"], 10**30),  # nor does msgpack, to store it
        (["host"], "\ud800"),  # a lone surrogate: read from JSON, no encoder takes it back
        (["tasks"], [{"id": "\udfff", "name": "b", "cpu": 0.1, "ram_bytes": 1.0}]),
    ],
)
def test_json_that_no_encoder_could_write_again_is_refused(path, value):
    """Accepted, it would fail where it is stored or forwarded, taking its batch with it."""
    with pytest.raises(DecodeError) as info:
        codec.decode(HostSample, _json_with(path, value), LIMIT)
    assert info.value.reason == "schema"


def test_unknown_keys_are_ignored_for_forward_compatibility():
    data = sample().to_dict()
    data["added_in_1_1"] = "ok"
    assert codec.decode(HostSample, msgpack.packb(data), LIMIT) == sample()


def test_integers_are_accepted_for_floats():
    data = sample().to_dict()
    data["metrics"]["disk_read"] = 7
    decoded = codec.decode(HostSample, msgpack.packb(data), LIMIT)
    assert decoded.metrics.disk_read == 7.0 and isinstance(decoded.metrics.disk_read, float)


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "meteor"},
        {"duration_s": 0},
        {"duration_s": 7200},
        {"intensity": 1.5},
        {"id": ""},
        {"ts": -5.0},  # the collector's age check would pass it as "not stamped" or as any age
        {"ts": float("nan")},
    ],
)
def test_fault_injection_limits(fields):
    data = {"v": 1, "id": "x", "kind": "cpu", "duration_s": 10.0, **fields}
    with pytest.raises(DecodeError):
        codec.decode(FaultInjection, json.dumps(data).encode(), LIMIT)


def test_topics_are_built_and_parsed_in_one_place():
    assert topics.host_sample("lei1", "h1") == "dragon/lei1/hosts/h1/sample"
    assert topics.host_of("dragon/lei1/hosts/h7/sample") == "h7"
    assert topics.host_of(topics.inject("lei1", "h2")) == "h2"
    with pytest.raises(ValueError):
        topics.host_of("dragon/faults/lei1/h1")


def test_clip_cuts_free_text_to_what_a_message_string_may_hold_and_says_so():
    assert clip("short") == "short"
    long = clip("x" * 1000)
    assert len(long) == MAX_STR and long.endswith("…")


def test_a_sample_stamped_further_ahead_than_clock_skew_is_told_apart():
    now = 1.8e9
    assert not sample(ts=now + 9.0, interval_s=2.0).ahead_of(now)  # within 10 s
    assert sample(ts=now + 11.0, interval_s=2.0).ahead_of(now)
    assert not sample(ts=now + 29.0, interval_s=10.0).ahead_of(now)  # within 3 intervals
    assert sample(ts=now + 31.0, interval_s=10.0).ahead_of(now)
    # The interval is the sender's word: a day's must not let a sample from days ahead in.
    assert not sample(ts=now + 59.0, interval_s=86_400.0).ahead_of(now)
    assert sample(ts=now + 61.0, interval_s=86_400.0).ahead_of(now)


def test_a_forecast_more_than_a_day_ahead_of_its_sample_is_refused():
    metrics = HostMetrics(0.5, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0)
    ok = ForecastSample("lei1", "h1", 1.8e9, 1.8e9, 1.8e9 + 86_400.0, metrics, (), "sim")
    assert codec.decode(ForecastSample, codec.encode(ok), 65536, codec.MSGPACK) == ok
    far = dataclasses.replace(ok, for_ts=1e300)  # would let it be stamped any time ahead
    with pytest.raises(DecodeError, match="at most a day"):
        codec.decode(ForecastSample, codec.encode(far), 65536, codec.MSGPACK)


def test_a_health_verdict_labels_0_or_1():
    """The planner reads label == 1 as an alarm: a 5 with faulty_since would pass for normal."""
    health = HostHealth("lei1", "h1", 1.0, 2.0, 1.0, 1, "observed", faulty_since=1.0)
    assert codec.decode(HostHealth, codec.encode(health), LIMIT) == health
    with pytest.raises(DecodeError) as info:
        codec.decode(HostHealth, msgpack.packb(health.to_dict() | {"label": 5}), LIMIT)
    assert info.value.reason == "schema"


def test_a_payload_is_json_by_its_content_type_and_by_its_first_byte_only_without_one():
    """The simulator answers in the format a request was read in: a msgpack request that opens
    with "{" was dropped as malformed msgpack, and its refusal must not come back as JSON."""
    assert codec.is_json(b'{"v": 1}') and codec.is_json(b"\x81", codec.JSON)
    assert not codec.is_json(b'{"v": 1}', codec.MSGPACK) and not codec.is_json(b"\x81")
