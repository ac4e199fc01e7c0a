"""AdaHessian (Yao et al., AAAI 2021): Adam with the Hessian diagonal in place of g².

DRAGON (sec. IV-C, eq. 5) generates windows with a second-order step: the inverse Hessian
is too costly, so the diagonal is estimated with Hutchinson's method, E[v ⊙ Hv] for
Rademacher v, and smoothed by a moving average as Adam smooths squared gradients.

A parameter that is a batch of independent samples (the windows a GON generates) can share one
probe across its leading ``shared_dims`` axes: each sample then gets the same Rademacher
entries whatever its position in the batch, so its step, and the fault score it leads to, does
not depend on which other samples were batched with it. With independent samples the Hessian
has no cross-sample blocks, and the estimate stays unbiased for each one.

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
        shared_dims: int = 0,
    ) -> None:
        if lr <= 0 or eps <= 0 or not 0 < hessian_power <= 1 or shared_dims < 0:
            raise ValueError("AdaHessian needs lr > 0, eps > 0, 0 < hessian_power <= 1 and shared_dims >= 0")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "hessian_power": hessian_power}
        super().__init__(params, defaults)
        self._generator = generator
        self._shared_dims = shared_dims

    def _probe(self, p: Tensor) -> Tensor:
        """Rademacher ±1 of p's shape, the same along p's first ``shared_dims`` axes."""
        own = p.shape[self._shared_dims :]
        signs = torch.randint(0, 2, own, generator=self._generator, dtype=p.dtype, device=p.device) * 2 - 1
        return signs.expand(p.shape)

    def _hessian_diagonals(self, params: list[Tensor], grads: tuple[Tensor, ...]) -> list[Tensor]:
        """Hutchinson's estimate |v ⊙ Hv| for each parameter, one Rademacher draw."""
        probes = [self._probe(p) for p in params]
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
