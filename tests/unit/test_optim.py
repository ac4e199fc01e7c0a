import subprocess
import sys

import pytest
import torch
from torch import nn

from dragon.detector.optim import Adam

pytestmark = pytest.mark.unit


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))


def _set_lr(opt: Adam | torch.optim.Optimizer, lr: float) -> None:
    if isinstance(opt, Adam):
        opt.lr = lr
    else:
        for group in opt.param_groups:
            group["lr"] = lr


def _train(make_optimizer, steps: int = 25) -> list[torch.Tensor]:
    """Minibatch steps on a regression; the last layer's bias gets no gradient for the first 5."""
    model = _model()
    opt = make_optimizer(model.parameters())
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(16, 5, generator=data), torch.randn(16, 1, generator=data)
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        if step < 5:
            model[2].bias.grad = None  # a parameter without a gradient is skipped and keeps no state
        if step == 12:
            _set_lr(opt, 0.01)  # the ascent's schedule changes lr between steps
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_adam_gives_torch_adam_s_numbers_bit_for_bit():
    ours = _train(lambda params: Adam(params, lr=0.05, weight_decay=1e-3))
    theirs = _train(lambda params: torch.optim.Adam(params, lr=0.05, weight_decay=1e-3))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not torch.equal(ours[0], _model()[0].weight.detach())  # it did train


def test_adam_refuses_bad_settings():
    param = [torch.zeros(2, requires_grad=True)]
    for kwargs in ({"lr": 0.0}, {"eps": 0.0}, {"weight_decay": -1.0}, {"betas": (0.9, 1.0)}):
        with pytest.raises(ValueError):
            Adam(param, **kwargs)
    with pytest.raises(ValueError, match="at least one parameter"):
        Adam([])


def test_training_and_scoring_import_neither_torch_dynamo_nor_sympy():
    """torch.optim and autograd's grad_outputs import them: about 70 MB the detector never uses."""
    program = """
import sys
import numpy as np
from dragon.detector.gon import GonConfig, make_windows, score_series, train_gon
series = np.random.default_rng(0).random((60, 3)).astype(np.float32)
for optimizer in ("adahessian", "adam"):
    cfg = GonConfig(n_features=3, window=4, hidden=8, epochs=2, gen_optimizer=optimizer)
    model, _ = train_gon(make_windows(series, cfg.window), cfg)
    score_series(model, cfg, series)
print(sorted(name for name in ("torch._dynamo", "sympy") if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
