"""Generation by ascent on log D: the cosine schedule with warm restarts and both optimisers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from dragon.detector.generation import ASCENTS, cosine_restarts, generate

pytestmark = pytest.mark.unit


class Linear(nn.Module):
    """logits(z) = sum(z): far below 0 its -log sigmoid has the constant gradient -1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def logits(self, z: Tensor) -> Tensor:
        return self.scale * z.sum(dim=-1)


def test_cosine_restarts_fall_within_a_cycle_and_jump_back() -> None:
    factors = [cosine_restarts(step, 4) for step in range(9)]
    assert factors[0] == factors[4] == factors[8] == 1.0
    assert factors[0] > factors[1] > factors[2] > factors[3] > 0.0
    assert factors[2] == pytest.approx(0.5)
    assert all(cosine_restarts(step, 0) == 1.0 for step in range(5))


def test_adam_steps_follow_the_schedule() -> None:
    # With a constant gradient every Adam step moves each coordinate by the step size itself,
    # so the distance covered is lr times the sum of the schedule's factors.
    z0 = torch.full((2, 3), -100.0)
    lr, steps = 0.1, 6
    constant = generate(Linear(), z0, steps, lr, optimizer="adam", restart_every=0)
    annealed = generate(Linear(), z0, steps, lr, optimizer="adam", restart_every=3)
    factors = sum(cosine_restarts(step, 3) for step in range(steps))
    assert torch.allclose(constant - z0, torch.full_like(z0, lr * steps), rtol=1e-3)
    assert torch.allclose(annealed - z0, torch.full_like(z0, lr * factors), rtol=1e-3)
    assert factors < steps


@pytest.mark.parametrize("optimizer", sorted(ASCENTS))
@pytest.mark.parametrize("restart_every", [0, 3])
def test_every_ascent_climbs_and_leaves_the_weights_alone(optimizer: str, restart_every: int) -> None:
    model = Linear()
    model.scale.requires_grad_(True)
    z0 = torch.zeros(4, 5)
    with torch.no_grad():
        z = generate(model, z0, 5, 0.05, optimizer=optimizer, restart_every=restart_every)
    assert (model.logits(z) > model.logits(z0)).all()
    assert model.scale.grad is None and model.scale.requires_grad
    assert math.isfinite(float(z.sum()))
