import pytest
import torch

from dragon.detector.adahessian import AdaHessian

pytestmark = pytest.mark.unit


def test_converges_to_the_optimum_of_an_ill_conditioned_quadratic():
    # f(x) = 0.5 * sum(a_i (x_i - c_i)^2): Hessian diag(a), condition number 1e4.
    a = torch.tensor([1e-2, 1.0, 10.0, 100.0])
    c = torch.tensor([3.0, -2.0, 0.5, 1.0])
    x = torch.zeros(4, requires_grad=True)
    opt = AdaHessian([x], lr=0.3, generator=torch.Generator().manual_seed(0))
    for _ in range(200):
        opt.step(lambda: 0.5 * (a * (x - c) ** 2).sum())
    assert torch.allclose(x.detach(), c, atol=1e-2), x


def test_second_order_steps_beat_adam_on_a_badly_scaled_problem():
    a = torch.tensor([1e-3, 1e3])
    c = torch.tensor([1.0, 1.0])

    def run(make):
        x = torch.zeros(2, requires_grad=True)
        opt = make([x])

        def closure():
            opt.zero_grad()
            loss = 0.5 * (a * (x - c) ** 2).sum()
            if not isinstance(opt, AdaHessian):
                loss.backward()
            return loss

        for _ in range(50):
            opt.step(closure)
        return (x.detach() - c).abs().max().item()

    adahessian = run(lambda p: AdaHessian(p, lr=0.5, generator=torch.Generator().manual_seed(0)))
    adam = run(lambda p: torch.optim.Adam(p, lr=0.05))
    assert adahessian < adam


def test_is_deterministic_for_a_seeded_generator():
    def run():
        x = torch.ones(3, requires_grad=True)
        opt = AdaHessian([x], lr=0.1, generator=torch.Generator().manual_seed(7))
        for _ in range(5):
            opt.step(lambda: (x**4).sum() + (x[0] * x[1]) ** 2)
        return x.detach()

    assert torch.equal(run(), run())


def test_gon_generation_with_adahessian_raises_log_d():
    from dragon.detector.generation import generate
    from dragon.detector.gon import Discriminator, GonConfig

    torch.manual_seed(0)
    cfg = GonConfig(n_features=3, window=4, gen_optimizer="adahessian")
    model = Discriminator(cfg).eval()
    z0 = torch.rand(8, 4, 3)
    z = generate(model, z0, steps=10, lr=0.05, optimizer=cfg.gen_optimizer)
    assert z.shape == z0.shape and torch.isfinite(z).all()
    assert model(z).log().sum() > model(z0).log().sum()
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_generation_optimizer_is_refused():
    from dragon.detector.gon import GonConfig

    with pytest.raises(ValueError, match="gen_optimizer"):
        GonConfig(n_features=3, gen_optimizer="sgd")


def test_a_shared_probe_makes_each_sample_independent_of_its_batch():
    """With shared_dims=1 a sample takes the same steps alone as in any batch, at any position."""
    targets = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0], [2.0, 2.0, 2.0]])
    curvature = torch.tensor([0.1, 1.0, 10.0])

    def run(rows: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(len(rows), 3, requires_grad=True)
        opt = AdaHessian([x], lr=0.2, generator=torch.Generator().manual_seed(3), shared_dims=1)
        for _ in range(4):
            # The coupling gives each sample's Hessian off-diagonal terms, so Hutchinson's estimate
            # of its diagonal depends on the probe (for a diagonal Hessian it would be exact).
            opt.step(lambda: (curvature * (x - rows) ** 2).sum() + ((x[:, 0] - 1) * (x[:, 1] + 2)).square().sum())
        return x.detach()

    together = run(targets)
    for i in range(len(targets)):
        torch.testing.assert_close(run(targets[i : i + 1])[0], together[i])
    torch.testing.assert_close(run(targets.flip(0)), together.flip(0))


def test_shared_dims_must_not_be_negative():
    with pytest.raises(ValueError, match="shared_dims"):
        AdaHessian([torch.zeros(2, requires_grad=True)], shared_dims=-1)


def test_a_delayed_hessian_update_estimates_every_k_steps_and_reuses_the_estimate_between():
    def run(every: int) -> tuple[torch.Tensor, int]:
        x = torch.ones(3, requires_grad=True)
        opt = AdaHessian([x], lr=0.1, generator=torch.Generator().manual_seed(7), hessian_every=every)
        estimate = opt._hessian_diagonals
        estimates = []
        opt._hessian_diagonals = lambda *args: estimates.append(1) or estimate(*args)
        for _ in range(7):
            opt.step(lambda: (x**4).sum() + (x[0] * x[1]) ** 2)
        return x.detach(), len(estimates)

    (every_step, seven), (delayed, three) = run(1), run(3)
    assert (seven, three) == (7, 3)  # steps 0, 3 and 6
    assert not torch.equal(every_step, delayed)  # this Hessian changes as x moves, so reuse shows


def test_with_a_constant_hessian_a_delayed_update_takes_the_same_steps():
    # For a separable quadratic Hutchinson's estimate is exact and never changes: reusing it is free.
    a = torch.tensor([1e-2, 1.0, 10.0, 100.0])
    c = torch.tensor([3.0, -2.0, 0.5, 1.0])

    def run(every: int) -> torch.Tensor:
        x = torch.zeros(4, requires_grad=True)
        opt = AdaHessian([x], lr=0.3, generator=torch.Generator().manual_seed(0), hessian_every=every)
        for _ in range(20):
            opt.step(lambda: 0.5 * (a * (x - c) ** 2).sum())
        return x.detach()

    assert torch.equal(run(5), run(1))


def test_hessian_every_must_be_positive():
    with pytest.raises(ValueError, match="hessian_every"):
        AdaHessian([torch.zeros(2, requires_grad=True)], hessian_every=0)
    from dragon.detector.gon import GonConfig

    with pytest.raises(ValueError, match="gen_hessian_every"):
        GonConfig(n_features=3, gen_hessian_every=0)
