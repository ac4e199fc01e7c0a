"""AdaHessian (Yao et al., AAAI 2021): Adam with the Hessian diagonal in place of g².

DRAGON (sec. IV-C, eq. 5) generates windows with a second-order step: the inverse Hessian
is too costly, so the diagonal is estimated with Hutchinson's method, E[v ⊙ Hv] for
Rademacher v, and smoothed by a moving average as Adam smooths squared gradients.

Use: ``optimizer.step(closure)`` where ``closure()`` returns the loss *without* calling
``backward``: the optimizer takes the gradient itself with ``autograd.grad(create_graph=True)``
(the Hessian-vector product needs its graph), which avoids the parameter↔gradient reference
cycle that ``backward(create_graph=True)`` creates.
"""

from __future__ import annotations

import torch
from torch import Tensor


class AdaHessian(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        hessian_power: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        if lr <= 0 or eps <= 0 or not 0 < hessian_power <= 1:
            raise ValueError("AdaHessian needs lr > 0, eps > 0 and 0 < hessian_power <= 1")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "hessian_power": hessian_power}
        super().__init__(params, defaults)
        self._generator = generator

    def _hessian_diagonals(self, params: list[Tensor], grads: tuple[Tensor, ...]) -> list[Tensor]:
        """Hutchinson's estimate |v ⊙ Hv| for each parameter, one Rademacher draw."""
        probes = [
            torch.randint(0, 2, p.shape, generator=self._generator, dtype=p.dtype, device=p.device) * 2 - 1
            for p in params
        ]
        products = torch.autograd.grad(grads, params, grad_outputs=probes)
        return [(hv * v).abs() for hv, v in zip(products, probes, strict=True)]

    def step(self, closure):  # noqa: D102 - torch.optim.Optimizer's contract, closure required
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        with torch.enable_grad():
            loss = closure()
            grads = torch.autograd.grad(loss, params, create_graph=True)
            diagonals = self._hessian_diagonals(params, grads)
        with torch.no_grad():
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    if p.requires_grad:
                        i = next(j for j, q in enumerate(params) if q is p)
                        self._update(p, grads[i].detach(), diagonals[i], group, beta1, beta2)
        return loss.detach()

    def _update(self, p: Tensor, grad: Tensor, diagonal: Tensor, group: dict, beta1: float, beta2: float) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_hessian_diag_sq"] = torch.zeros_like(p)
        state["step"] += 1
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_hessian_diag_sq"].mul_(beta2).addcmul_(diagonal, diagonal, value=1 - beta2)
        first = state["exp_avg"] / (1 - beta1 ** state["step"])
        second = state["exp_hessian_diag_sq"] / (1 - beta2 ** state["step"])
        denominator = second.sqrt().pow(group["hessian_power"]).add_(group["eps"])
        p.sub_(group["lr"] * first / denominator)
