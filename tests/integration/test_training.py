"""The detector trains from the windows the LEI recorded in Redis, and serves what it learned."""

from __future__ import annotations

import json

import pytest

from dragon.detector.modelstore import ModelStore

pytestmark = pytest.mark.integration


def test_train_from_redis_inside_the_detector_container(lei):
    result = lei.containers["detector"].exec(
        ["dragon-detector", "train", "--from-redis", "--out", "/tmp/recorded.pt", "--epochs", "2", "--quiet"]
    )
    assert result.exit_code == 0, result.output.decode()
    summary = json.loads(result.output.decode().strip().splitlines()[-1])
    assert summary["out"] == "/tmp/recorded.pt" and len(summary["model_id"]) == 12


def test_the_model_learned_on_line_is_shared_through_redis(lei):
    store = ModelStore(lei.redis_client(), lei.lei, model_dir="")
    checkpoint = store.fetch()
    assert checkpoint is not None and store.current_id() == checkpoint.model_id
    assert checkpoint.meta["source"] == f"redis:{lei.lei}"
    assert checkpoint.pot_state().z_q > 0
