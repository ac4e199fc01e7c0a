"""The detector's optimisers, without ``torch.optim``: Adam and the base AdaHessian shares.

Why not ``torch.optim``: building its first optimiser imports TorchDynamo and, through it,
sympy, about 70 MB of Python modules that the detector never uses (measured with the bench:
docs/benchmarks.md, "Detector memory"). On a 4 GB edge device that is a third of the
detector's own memory. An update rule is a few lines; :class:`Adam` repeats the operations of
``torch.optim.Adam`` on the CPU (its single-tensor path) one for one, so training gives the same
numbers bit for bit (tests/unit/test_optim.py checks it).

Both optimisers keep torch's conventions where the detector relies on them: a parameter whose
gradient is ``None`` is skipped and keeps no state, each parameter counts its own steps (bias
correction starts at its first gradient), and ``lr`` may be changed between steps (the
ascent's cosine schedule does).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class Optimizer:
    """Parameters, a step size the caller may change between steps, and state per parameter."""

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("an optimiser needs at least one parameter")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr = lr
        self.state: dict[Tensor, dict[str, Tensor | int]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _state(self, p: Tensor, second_moment: str) -> dict[str, Tensor | int]:
        """``p``'s step count and moments, zeros before its first step."""
        if p not in self.state:
            self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p), second_moment: torch.zeros_like(p)}
        return self.state[p]


class Adam(Optimizer):
    """Adam (Kingma & Ba, ICLR 2015) with L2 weight decay added to the gradient, as ``torch.optim.Adam``."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        if eps <= 0 or weight_decay < 0 or not all(0 <= beta < 1 for beta in betas):
            raise ValueError("Adam needs eps > 0, weight_decay >= 0 and betas in [0, 1)")
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            state = self._state(p, "exp_avg_sq")
            state["step"] += 1
            grad = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            # The operations and their order are torch.optim.Adam's, so rounding matches too.
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1 ** state["step"])
            denominator = (state["exp_avg_sq"].sqrt() / (1 - beta2 ** state["step"]) ** 0.5).add_(self.eps)
            p.addcdiv_(state["exp_avg"], denominator, value=-step_size)
