"""Replicas on their LEI's model in a real Redis: one nobody can use, a newer DRAGON's, one lost."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable

import pytest
import torch

from dragon.detector import following
from dragon.detector.checkpoint import GENERATION, Checkpoint
from dragon.detector.config import DetectorConfig
from dragon.detector.finetune import host_groups
from dragon.detector.learning import FineTuner
from dragon.detector.membership import Membership
from dragon.detector.modelstore import ModelStore
from dragon.detector.service import Detector
from dragon.messages.schemas import HOST_METRICS
from dragon.testing.models import recalibrated

from .conftest import LEARN_QUICKLY, detector_on, settled_long_ago

pytestmark = pytest.mark.integration

LEARN_TIMEOUT_S = 90.0


def record(detector: Detector, hosts: str = "ab") -> None:
    """A minute of every host's samples, enough to learn from with LEARN_QUICKLY."""
    now = time.time()
    vectors = [[0.1 + 0.01 * (i % 3)] * len(HOST_METRICS) for i in range(60)]
    detector.windows.append_many([(h, now - 60 + i, i, vectors[i]) for i in range(60) for h in hosts])


def newer_dragons(checkpoint: Checkpoint) -> bytes:
    """``checkpoint`` as a later DRAGON would write it: a setting this code does not know."""
    buffer = io.BytesIO()
    payload = checkpoint._payload()
    torch.save(payload | {"generation": GENERATION + 1, "gon": payload["gon"] | {"a_later_setting": 1}}, buffer)
    return buffer.getvalue()


def put_model(client, lei: str, data: bytes, model_id: str, generation: int = GENERATION) -> None:
    """A model as ModelStore.publish writes it, whatever its bytes."""
    client.set(f"dragon:{lei}:model", data)
    client.set(f"dragon:{lei}:model:id", model_id)
    client.set(f"dragon:{lei}:model:generation", f"{model_id}:{generation}")


def put_newer(client, lei: str, checkpoint: Checkpoint) -> None:
    put_model(client, lei, newer_dragons(checkpoint), "newer-model", GENERATION + 1)


def current_id(client, lei: str) -> str | None:
    return ModelStore(client, lei, "").current_id()


def outdated(client, lei: str, checkpoint: Checkpoint) -> tuple[Detector, Membership]:
    """A replica serving ``checkpoint`` when a newer DRAGON's replica (not beating yet) publishes its model."""
    old = detector_on(client, lei, "old")
    old.models.publish(checkpoint)
    old.init_model()
    put_newer(client, lei, checkpoint)
    return old, Membership(client, lei, "new")


def refreshed(detector: Detector) -> Detector:
    detector._last_model_check = float("-inf")
    detector._refresh_model()
    return detector


def until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


def test_a_replica_over_a_newer_dragons_model_leaves_its_hosts_to_the_replicas_that_read_it(redis_client, host_scorer):
    """In a rolling upgrade the LEI's model may be one only newer replicas read: an older one that
    kept beating would own a share of the hosts and judge none of them, and must not replace it."""
    scorer, _ = host_scorer
    put_newer(redis_client, "upgrade", scorer.checkpoint)
    old = detector_on(redis_client, "upgrade", "old")
    old.init_model()
    old.start_learner()
    refreshed(old)
    new = Membership(redis_client, "upgrade", "new")
    new.beat()
    assert old.scorer is None and old.learner is None and old._heartbeat() is False
    assert new.members() == ["new"] and current_id(redis_client, "upgrade") == "newer-model"
    old.models.publish(scorer.checkpoint)  # a model it can read after all
    refreshed(old)
    assert old.judging and old._heartbeat() is True
    time.sleep(1.1)  # members are read at most once a second
    assert new.members() == ["new", "old"]


def test_a_newer_dragons_model_is_replaced_once_no_replica_has_judged_for_a_while(
    redis_client, host_scorer, monkeypatch
):
    """DRAGON rolled back: no replica left reads the model, and the LEI went dark for good."""
    monkeypatch.setattr(following, "WAIT_FOR_OTHERS_S", 1.0)
    scorer, _ = host_scorer
    old, new = outdated(redis_client, "rollback", scorer.checkpoint)
    new.beat()
    settled_long_ago(redis_client, "rollback")  # not a Redis that just lost its data
    for _ in range(3):  # a newer replica judges throughout: the model is its
        new.beat()
        refreshed(old)
        assert not old.judging and old._heartbeat() is False
        time.sleep(0.6)
    assert current_id(redis_client, "rollback") == "newer-model"
    new.leave()
    time.sleep(1.1)  # members are read at most once a second
    refreshed(old)  # nobody judges since now
    time.sleep(1.1)
    assert refreshed(old).judging
    assert current_id(redis_client, "rollback") == scorer.model_id


@pytest.mark.parametrize(
    "unusable",
    [b"bytes that are no checkpoint", "older"],
    ids=["corrupt", "older"],
)
def test_a_model_nobody_can_use_is_learnt_over_and_every_replica_serves_the_new_one(
    redis_client, host_scorer, unusable
):
    """Before, the learner took any model in Redis for one it need not learn: every replica left
    its hosts and none learnt, the LEI dark until an operator deleted the model's id."""
    scorer, _ = host_scorer
    lei = f"unusable-{'corrupt' if isinstance(unusable, bytes) else 'older'}"
    if not isinstance(unusable, bytes):  # a model of other metrics, which an older DRAGON wrote
        buffer = io.BytesIO()
        payload = scorer.checkpoint._payload()
        torch.save(payload | {"generation": 0, "feature_names": ["a_former_metric", *HOST_METRICS[1:]]}, buffer)
        unusable = buffer.getvalue()
    put_model(redis_client, lei, unusable, "unusable", generation=0)
    replicas = [detector_on(redis_client, lei, name, **LEARN_QUICKLY) for name in ("r0", "r1")]
    record(replicas[0])
    try:
        for replica in replicas:
            replica.init_model()
            replica.start_learner()
            assert not refreshed(replica).judging and replica._heartbeat() is False

        def all_serve_a_new_model() -> bool:
            served = [refreshed(replica).scorer for replica in replicas]
            return {scorer.model_id if scorer else None for scorer in served} == {current_id(redis_client, lei)}

        assert until(all_serve_a_new_model, LEARN_TIMEOUT_S), "no model learnt over the unusable one"
        assert current_id(redis_client, lei) != "unusable"
        assert all(replica.judging and replica._heartbeat() for replica in replicas)
    finally:
        for replica in replicas:
            replica.lifecycle.stop.set()


def test_a_replica_puts_its_model_back_when_redis_lost_it_or_holds_one_nobody_can_use(redis_client, host_scorer):
    """A Redis restarted without its data (no volume): the served model was not put back, so every
    fine-tune was discarded (it replaces only the model it was tuned from) until a replica restarted."""
    scorer, _ = host_scorer
    detector = detector_on(redis_client, "lost", "a")
    detector.models.publish(scorer.checkpoint)
    detector.init_model()
    redis_client.flushall()
    assert refreshed(detector).judging
    assert current_id(redis_client, "lost") == scorer.model_id
    put_model(redis_client, "lost", b"bytes that are no checkpoint", "corrupt")
    assert refreshed(detector).judging
    assert current_id(redis_client, "lost") == scorer.model_id
    models = ModelStore(redis_client, "lost", "")
    stored = models.current()
    assert stored.generation == GENERATION and models.checkpoint_of(stored).model_id == scorer.model_id


def test_a_rolled_back_replica_with_no_model_learns_one_once_no_replica_has_judged_for_a_while(
    redis_client, monkeypatch
):
    """Bytes this code cannot even load, which a newer DRAGON published: the generation Redis keeps
    beside them says so (inside them it could not be read), so the replica waits for that DRAGON's
    replicas instead of learning over their model at once, and learns once there are none."""
    monkeypatch.setattr(following, "WAIT_FOR_OTHERS_S", 1.0)
    put_model(redis_client, "back", b"a newer torch's bytes", "newer-model", GENERATION + 1)
    old = detector_on(redis_client, "back", "old", **LEARN_QUICKLY)
    record(old)
    new = Membership(redis_client, "back", "new")
    try:
        old.init_model()
        old.start_learner()
        for _ in range(3):
            new.beat()
            refreshed(old)
            time.sleep(0.6)
        assert old.learner is None and not old.judging
        new.leave()
        assert until(lambda: refreshed(old).judging, LEARN_TIMEOUT_S), "no model learnt after the rollback"
        assert current_id(redis_client, "back") not in (None, "newer-model")
    finally:
        old.lifecycle.stop.set()


def test_redis_losing_a_newer_dragons_model_leaves_it_to_that_dragons_replicas(redis_client, host_scorer):
    """A replica benched on a newer DRAGON's model checks on every batch: when Redis lost its data,
    it put its own older model back before the newer replicas could, and they served that one."""
    scorer, _ = host_scorer
    old, new = outdated(redis_client, "lost-newer", scorer.checkpoint)
    new.beat()
    assert not refreshed(old).judging
    redis_client.flushall()
    new.beat()
    for _ in range(3):
        assert not refreshed(old).judging
        assert current_id(redis_client, "lost-newer") is None
        time.sleep(0.4)


@pytest.mark.parametrize("source", ["volume", "configured"])
def test_a_replicas_own_model_replaces_one_nobody_can_use_at_start_never_a_newer_dragons(
    redis_client, host_scorer, tmp_path, source
):
    """A replica that starts without a usable model in Redis serves its model volume's copy, or
    DRAGON_DETECTOR_CHECKPOINT, and publishes it: over a model nobody can use, yes; over a newer
    DRAGON's (a replica of the old version restarted in a rolling upgrade) it overwrote the model
    every newer replica served."""
    scorer, _ = host_scorer
    if source == "volume":
        ModelStore(redis_client, source, str(tmp_path)).publish(scorer.checkpoint)
        settings = {"DRAGON_DETECTOR_MODEL_DIR": str(tmp_path)}
    else:
        scorer.checkpoint.save(tmp_path / "configured.pt")
        settings = {"DRAGON_DETECTOR_CHECKPOINT": str(tmp_path / "configured.pt")}
    put_newer(redis_client, source, scorer.checkpoint)
    old = detector_on(redis_client, source, "old", **settings)
    old.init_model()
    assert not refreshed(old).judging and current_id(redis_client, source) == "newer-model"
    put_model(redis_client, source, b"bytes that are no checkpoint", "corrupt")
    restarted = detector_on(redis_client, source, "old", **settings)
    restarted.init_model()
    assert restarted.judging and current_id(redis_client, source) == scorer.model_id


def test_a_generation_that_names_another_model_counts_as_none(redis_client, host_scorer):
    """The code before the generation key publishes without writing it: the key left by a newer
    DRAGON would make the older code's corrupt model look newer, and be waited on."""
    scorer, _ = host_scorer
    models = ModelStore(redis_client, "stale-generation", "")
    models.publish(scorer.checkpoint)
    redis_client.set("dragon:stale-generation:model:id", "published-by-older-code")
    assert models.current().generation == 0
    redis_client.set("dragon:stale-generation:model:generation", b"published-by-older-code:\xb2")
    assert models.current().generation == 0


def test_a_replica_too_short_of_memory_to_load_the_leis_model_leaves_it_to_those_that_can(
    redis_client, host_scorer, monkeypatch
):
    """A Pi at its memory's limit failed to load a fresh model, took it for one nobody can use,
    and put its own older model back for every replica."""
    monkeypatch.setattr(following, "WAIT_FOR_OTHERS_S", 1.0)
    scorer, _ = host_scorer
    old = detector_on(redis_client, "short", "old")
    old.models.publish(scorer.checkpoint)
    old.init_model()
    fresh = dataclasses.replace(scorer.checkpoint, **{"meta": {"fine_tune": "newer weights"}})
    fresh.state_dict = {key: value + 0.01 for key, value in fresh.state_dict.items()}
    ModelStore(redis_client, "short", "").publish(fresh)
    serve = old._serve

    def short_of_memory(checkpoint: Checkpoint) -> None:
        if checkpoint.model_id == fresh.model_id:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8388608 bytes")
        serve(checkpoint)

    old.follower.serve = short_of_memory
    others = Membership(redis_client, "short", "others")
    others.beat()
    settled_long_ago(redis_client, "short")
    for _ in range(3):  # replicas that can load it judge meanwhile
        others.beat()
        assert not refreshed(old).judging and old._heartbeat() is False
        assert current_id(redis_client, "short") == fresh.model_id
        time.sleep(0.6)
    others.leave()
    time.sleep(1.1)
    refreshed(old)
    time.sleep(1.1)
    assert refreshed(old).judging and current_id(redis_client, "short") == scorer.model_id  # none is left


def test_a_model_recalibrated_with_the_same_weights_reaches_every_replica(redis_client, host_scorer):
    """Retrained with the same seed and data but another --pot-q, a model keeps its id: replicas
    compared ids only and kept judging with the old thresholds for good."""
    scorer, _ = host_scorer
    first, second = detector_on(redis_client, "recal", "a"), detector_on(redis_client, "recal", "b")
    first.models.publish(scorer.checkpoint)
    first.init_model()
    second.init_model()
    riskier = recalibrated(scorer.checkpoint, q=scorer.checkpoint.pot_state().q * 10)
    first.models.publish(riskier)
    for detector in (first, second):
        assert refreshed(detector).scorer.checkpoint.revision == riskier.revision
        assert detector.scorer.model_id == scorer.model_id
    serving = second.scorer
    assert refreshed(second).scorer is serving  # served once, not on every check


def test_a_revision_that_names_another_model_counts_as_unknown(redis_client, host_scorer):
    """An older DRAGON publishes without writing the revision: the key left over names another
    model, and its replicas' same-id model must not be taken for a new one on every check."""
    scorer, _ = host_scorer
    detector = detector_on(redis_client, "stale-revision", "a")
    detector.models.publish(scorer.checkpoint)
    detector.init_model()
    put_model(redis_client, "stale-revision", scorer.checkpoint.to_bytes(), scorer.model_id)
    redis_client.set("dragon:stale-revision:model:revision", "published-by-older-code:0123456789ab")
    assert detector.models.current().revision is None
    serving = detector.scorer
    assert refreshed(detector).scorer is serving


def test_a_configured_recalibration_wins_over_the_fine_tuned_descendant_of_the_old_one(
    redis_client, host_scorer, tmp_path
):
    """A replica restarted with its configured checkpoint serves the LEI's fine-tune of it, so a
    restart does not undo the adaptation; a checkpoint of the same weights with another risk is
    another checkpoint, and a replica restarted with it must serve and publish it."""
    scorer, _ = host_scorer
    original = scorer.checkpoint
    weights = {key: value + 1e-3 for key, value in original.state_dict.items()}
    descendant = dataclasses.replace(
        original,
        state_dict=weights,
        meta=original.meta | {"base_model_id": original.model_id, "base_revision": original.revision},
    )
    riskier = recalibrated(original, q=original.pot_state().q * 10)
    settings = {"DRAGON_DETECTOR_CHECKPOINT": str(tmp_path / "configured.pt")}
    for configured, served in ((original, descendant), (riskier, riskier)):
        ModelStore(redis_client, "descends", "").publish(descendant)
        configured.save(tmp_path / "configured.pt")
        restarted = detector_on(redis_client, "descends", "a", **settings)
        restarted.init_model()
        assert restarted.scorer.checkpoint.revision == served.revision
        assert ModelStore(redis_client, "descends", "").current().names(served)


def test_a_fine_tune_of_the_old_calibration_does_not_overwrite_a_recalibration_published_meanwhile(
    redis_client, host_scorer
):
    """The fine-tune replaces only the model it was tuned from: compared by id alone, a
    recalibration published while it ran (same weights, same id) was overwritten by a tune whose
    thresholds were fitted with the old risk, and the operator's new risk was lost."""
    scorer, windows = host_scorer
    original = scorer.checkpoint
    models = ModelStore(redis_client, "tuned-over", "")
    models.publish(original)
    riskier = recalibrated(original, q=original.pot_state().q * 10)
    models.publish(riskier)  # a replica restarted with the recalibrated file, while the tune ran
    tuner = FineTuner(DetectorConfig(window=scorer.window), models, "a", "tuned-over")
    tuner._fine_tune(original, host_groups(original, windows[:-1], windows[1:]))
    assert models.current().names(riskier)
    tuner._fine_tune(riskier, host_groups(riskier, windows[:-1], windows[1:]))
    assert models.current().model_id != riskier.model_id  # a tune of the model in force is served


def test_a_revision_key_an_older_dragon_left_behind_is_not_reloaded_at_every_check(redis_client, host_scorer):
    """An older DRAGON republishing the model's id with other bytes (its configured file, at every
    start) leaves the revision key of the calibration before: a replica that loaded those bytes must
    not take the key for a new model and load them again every 5 s."""
    scorer, _ = host_scorer
    riskier = recalibrated(scorer.checkpoint, q=scorer.checkpoint.pot_state().q * 10)
    detector = detector_on(redis_client, "left-behind", "a")
    detector.models.publish(riskier)
    put_model(redis_client, "left-behind", scorer.checkpoint.to_bytes(), scorer.model_id)  # revision key untouched
    detector.init_model()
    assert detector.scorer.checkpoint.revision == scorer.checkpoint.revision  # the bytes Redis holds
    serving = detector.scorer
    for _ in range(3):
        assert refreshed(detector).scorer is serving
    detector.models.publish(riskier)  # a new publish names its revision again: turned to
    assert refreshed(detector).scorer.checkpoint.revision == riskier.revision
