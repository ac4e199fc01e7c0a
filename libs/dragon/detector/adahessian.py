"""AdaHessian (Yao et al., AAAI 2021): Adam with the Hessian diagonal in place of g².

DRAGON (sec. IV-C, eq. 5) generates windows with a second-order step: the inverse Hessian
is too costly, so the diagonal is estimated with Hutchinson's method, E[v ⊙ Hv] for
Rademacher v, and smoothed by a moving average as Adam smooths squared gradients.

A parameter that is a batch of independent samples (the windows a GON generates) can share one
probe across its leading ``shared_dims`` axes: each sample then gets the same Rademacher
entries whatever its position in the batch, so its step, and the fault score it leads to, does
not depend on which other samples were batched with it. With independent samples the Hessian
has no cross-sample blocks, and the estimate stays unbiased for each one.

Like :class:`dragon.detector.optim.Adam` it does not build on ``torch.optim`` (that module says why).

Use: ``optimizer.step(closure)`` where ``closure()`` returns the loss *without* calling
``backward``: the optimizer takes the gradient itself with ``autograd.grad(create_graph=True)``
(the Hessian-vector product needs its graph), which avoids the parameter↔gradient reference
cycle that ``backward(create_graph=True)`` creates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from dragon.detector.optim import Optimizer


class AdaHessian(Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        hessian_power: float = 1.0,
        generator: torch.Generator | None = None,
        shared_dims: int = 0,
        hessian_every: int = 1,
    ) -> None:
        if lr <= 0 or eps <= 0 or not 0 < hessian_power <= 1 or shared_dims < 0 or hessian_every < 1:
            raise ValueError(
                "AdaHessian needs lr > 0, eps > 0, 0 < hessian_power <= 1, shared_dims >= 0 and hessian_every >= 1"
            )
        super().__init__(params, lr)
        self.betas = betas
        self.eps = eps
        self.hessian_power = hessian_power
        self.hessian_every = hessian_every
        self._generator = generator
        self._shared_dims = shared_dims
        self._steps = 0
        self._diagonals: dict[Tensor, Tensor] = {}  # each parameter's newest estimate, reused between estimates

    def _probe(self, p: Tensor) -> Tensor:
        """Rademacher ±1 of p's shape, the same along p's first ``shared_dims`` axes."""
        own = p.shape[self._shared_dims :]
        signs = torch.randint(0, 2, own, generator=self._generator, dtype=p.dtype, device=p.device) * 2 - 1
        return signs.expand(p.shape)

    def _hessian_diagonals(self, params: list[Tensor], grads: tuple[Tensor, ...]) -> list[Tensor]:
        """Hutchinson's estimate |v ⊙ Hv| for each parameter, one Rademacher draw."""
        probes = [self._probe(p) for p in params]
        # Hv as the gradient of g . v, not grad(g, grad_outputs=v): the same numbers, but torch
        # imports sympy (33 MiB of modules, measured) the first time grad_outputs is a tensor.
        probed = sum((g * v).sum() for g, v in zip(grads, probes, strict=True))
        products = torch.autograd.grad(probed, params)
        return [(hv * v).abs() for hv, v in zip(products, probes, strict=True)]

    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        """One step on the loss ``closure()`` returns; the parameters that need no gradient stay put.

        The Hessian diagonal is estimated at the first step and then every ``hessian_every``
        steps; in between the newest estimate enters the moving average again (AdaHessian's
        "delayed Hessian update", Yao et al. sec. 3.3), and a step costs one gradient.
        """
        params = [p for p in self.params if p.requires_grad]
        estimate = self._steps % self.hessian_every == 0 or any(p not in self._diagonals for p in params)
        with torch.enable_grad():
            loss = closure()
            grads = torch.autograd.grad(loss, params, create_graph=estimate)
            if estimate:
                self._diagonals = dict(zip(params, self._hessian_diagonals(params, grads), strict=True))
        self._steps += 1
        with torch.no_grad():
            for p, grad in zip(params, grads, strict=True):
                self._update(p, grad.detach(), self._diagonals[p])
        return loss.detach()

    def _update(self, p: Tensor, grad: Tensor, diagonal: Tensor) -> None:
        beta1, beta2 = self.betas
        state = self._state(p, "exp_hessian_diag_sq")
        state["step"] += 1
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_hessian_diag_sq"].mul_(beta2).addcmul_(diagonal, diagonal, value=1 - beta2)
        first = state["exp_avg"] / (1 - beta1 ** state["step"])
        second = state["exp_hessian_diag_sq"] / (1 - beta2 ** state["step"])
        denominator = second.sqrt().pow(self.hessian_power).add_(self.eps)
        p.sub_(self.lr * first / denominator)
