"""The topology- and schedule-aware discriminator D(G, W, S), its graph and host generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dragon.detector.federation_model import (
    EDGE_TYPES,
    FederationConfig,
    FederationDiscriminator,
    FederationGraph,
    HostsInContext,
    MetaPaths,
    generate_hosts,
)
from dragon.detector.generation import generate

pytestmark = pytest.mark.unit

# Two LEIs with brokers that are not the first hosts, so the broker mapping is exercised:
# LEI a = hosts 0, 1, 3 (broker 1); LEI b = hosts 2, 4, 5 (broker 5).
LEIS = ["a", "a", "b", "a", "b", "b"]
BROKERS = [1, 5]
WORKER_A, WORKER_B = 0, 2


def graph_of_leis() -> FederationGraph:
    return FederationGraph.build(LEIS, BROKERS)


def small_config(**overrides) -> FederationConfig:
    return FederationConfig(**({"n_features": 3, "window": 4, "hidden": 16} | overrides))


def chain_graph(m: int) -> FederationGraph:
    """LEIs of three hosts each, the first host of each being its broker."""
    return FederationGraph.build([f"lei{i // 3}" for i in range(m)], list(range(0, m, 3)))


def inputs(cfg: FederationConfig, m: int, p: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random host windows (B, m, k, n), task windows (B, p, k, n) and a one-hot schedule (B, p, m)."""
    gen = torch.Generator().manual_seed(seed)
    w_hosts = torch.rand(batch, m, cfg.window, cfg.n_features, generator=gen)
    w_tasks = torch.rand(batch, p, cfg.window, cfg.n_features, generator=gen)
    placement = torch.randint(0, m, (batch, p), generator=gen)
    return w_hosts, w_tasks, F.one_hot(placement, m).float()


def outputs(model: FederationDiscriminator, *args) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(*args)


@pytest.mark.parametrize("topology", [True, False])
@pytest.mark.parametrize(
    ("m", "p", "n", "k"), [(1, 0, 25, 5), (1, 3, 4, 2), (6, 0, 3, 5), (6, 9, 7, 10), (16, 16, 7, 10)]
)
def test_one_probability_per_host(topology: bool, m: int, p: int, n: int, k: int) -> None:
    cfg = small_config(n_features=n, window=k, topology=topology)
    model = FederationDiscriminator(cfg).eval()
    with torch.no_grad():
        out = model(*inputs(cfg, m, p, batch=3), chain_graph(m))
    assert out.shape == (3, m)
    assert torch.isfinite(out).all() and ((out > 0) & (out < 1)).all()


def test_the_same_weights_serve_any_number_of_hosts_and_tasks() -> None:
    cfg = small_config()
    model = FederationDiscriminator(cfg).eval()
    small = outputs(model, *inputs(cfg, 3, 2), chain_graph(3))
    large = outputs(model, *inputs(cfg, 16, 40), chain_graph(16))
    assert small.shape == (2, 3) and large.shape == (2, 16)
    assert torch.isfinite(small).all() and torch.isfinite(large).all()


def test_wrong_shapes_are_refused() -> None:
    cfg = small_config()
    model = FederationDiscriminator(cfg)
    w_hosts, w_tasks, schedule = inputs(cfg, 6, 2)
    graph = chain_graph(6)
    with pytest.raises(ValueError, match="host windows"):
        model(w_hosts[..., :-1], w_tasks, schedule, graph)
    with pytest.raises(ValueError, match="task windows"):
        model(w_hosts, w_tasks[:1], schedule, graph)
    with pytest.raises(ValueError, match="schedule"):
        model(w_hosts, w_tasks, schedule[:, :, :-1], graph)
    with pytest.raises(ValueError, match="graph has 3 hosts"):
        model(w_hosts, w_tasks, schedule, chain_graph(3))


@pytest.mark.parametrize(("m", "p"), [(1, 0), (6, 5)])
@pytest.mark.parametrize("topology", [True, False])
def test_outputs_and_input_gradients_are_finite(m: int, p: int, topology: bool) -> None:
    cfg = small_config(topology=topology)
    model = FederationDiscriminator(cfg)
    w_hosts, w_tasks, schedule = inputs(cfg, m, p)
    w_hosts.requires_grad_(True)
    w_tasks.requires_grad_(True)
    logits = model.logits(w_hosts, w_tasks, schedule, chain_graph(m))
    F.logsigmoid(logits).sum().backward()
    assert torch.isfinite(logits).all()
    assert torch.isfinite(w_hosts.grad).all() and w_hosts.grad.abs().sum() > 0
    assert torch.isfinite(w_tasks.grad).all()
    if p:
        assert w_tasks.grad.abs().sum() > 0


def test_weights_are_deterministic_in_the_seed_and_leave_the_global_rng_alone() -> None:
    args = (*inputs(small_config(), 6, 4), chain_graph(6))
    state = torch.get_rng_state()
    first, again = FederationDiscriminator(small_config(seed=3)), FederationDiscriminator(small_config(seed=3))
    assert torch.equal(torch.get_rng_state(), state)
    other = FederationDiscriminator(small_config(seed=4))
    assert torch.equal(outputs(first, *args), outputs(again, *args))
    assert not torch.allclose(outputs(first, *args), outputs(other, *args))


@pytest.mark.parametrize("topology", [True, False])
def test_permuting_hosts_permutes_the_output_and_task_order_does_not_matter(topology: bool) -> None:
    cfg = small_config(topology=topology)
    model = FederationDiscriminator(cfg).eval()
    w_hosts, w_tasks, schedule = inputs(cfg, 6, 7)
    out = outputs(model, w_hosts, w_tasks, schedule, graph_of_leis())

    order = torch.tensor([3, 0, 5, 1, 4, 2])  # new host i is old host order[i]
    new_index = {int(old): new for new, old in enumerate(order)}
    graph = FederationGraph.build([LEIS[i] for i in order], [new_index[b] for b in BROKERS])
    permuted = outputs(model, w_hosts[:, order], w_tasks, schedule[:, :, order], graph)
    torch.testing.assert_close(permuted, out[:, order])

    tasks = torch.tensor([6, 2, 0, 5, 1, 3, 4])
    torch.testing.assert_close(outputs(model, w_hosts, w_tasks[:, tasks], schedule[:, tasks], graph_of_leis()), out)


def test_workers_link_to_their_broker_and_brokers_to_each_other() -> None:
    graph = graph_of_leis()
    intra = {(i, j) for i, j in graph.intra.nonzero().tolist()}
    inter = {(i, j) for i, j in graph.inter.nonzero().tolist()}
    assert intra == {(0, 1), (1, 0), (3, 1), (1, 3), (2, 5), (5, 2), (4, 5), (5, 4)}
    assert inter == {(1, 5), (5, 1)}
    edges = graph.edge_types()
    assert edges.shape == (len(EDGE_TYPES), 6, 6)
    assert torch.equal(edges[0], torch.eye(6))

    lone = FederationGraph.build(["lei"], [0])
    assert lone.hosts == 1 and not lone.intra.any() and not lone.inter.any()


@pytest.mark.parametrize(
    ("leis", "brokers", "match"),
    [
        ([], [], "at least one host"),
        (["a", "b"], [0], "without a broker"),
        (["a", "a"], [0, 1], "more than one broker"),
        (["a", "b"], [0, 2], "distinct host indices"),
        (["a", "b"], [0, 0], "distinct host indices"),
    ],
)
def test_inconsistent_host_metadata_is_refused(leis: list[str], brokers: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FederationGraph.build(leis, brokers)


def test_adjacencies_must_be_symmetric_without_self_loops() -> None:
    zero = torch.zeros(3, 3)
    one_way = zero.clone()
    one_way[0, 1] = 1.0
    with pytest.raises(ValueError, match="symmetric"):
        FederationGraph(intra=one_way, inter=zero)
    with pytest.raises(ValueError, match="symmetric"):
        FederationGraph(intra=zero, inter=torch.eye(3))
    with pytest.raises(ValueError, match="differ in size"):
        FederationGraph(intra=zero, inter=torch.zeros(2, 2))


def test_a_meta_path_can_be_worker_broker_broker_worker() -> None:
    paths = MetaPaths(channels=1, length=3)
    with torch.no_grad():
        paths.select.zero_()
        for step, edge in enumerate(["intra_lei", "inter_lei", "intra_lei"]):
            paths.select[step, 0, EDGE_TYPES.index(edge)] = 30.0
        adjacency = paths(graph_of_leis().edge_types())[0]  # (m, m)
    expected = torch.zeros(6)
    expected[[2, 4]] = 0.5  # worker 0 of LEI a reaches LEI b's workers through brokers 1 and 5
    torch.testing.assert_close(adjacency[WORKER_A], expected)
    torch.testing.assert_close(adjacency.sum(dim=1), torch.ones(6))


@pytest.mark.parametrize(("path_length", "reaches"), [(1, False), (2, False), (3, True)])
def test_graph_embedding_crosses_leis_only_along_a_path_of_three_edges(path_length: int, reaches: bool) -> None:
    # One convolution: whether worker A sees worker B depends on the meta-paths alone.
    cfg = small_config(path_length=path_length, convolutions=1)
    model = FederationDiscriminator(cfg).eval()
    w_hosts, w_tasks, schedule = inputs(cfg, 6, 0)
    changed = w_hosts.clone()
    changed[:, WORKER_B] += 1.0
    with torch.no_grad():
        around = model.surroundings(w_tasks, schedule, graph_of_leis())
        before = model.host_topology(model.encode(w_hosts, around)[0], around).view(len(w_hosts), 6, -1)
        after = model.host_topology(model.encode(changed, around)[0], around).view(len(w_hosts), 6, -1)
    assert (not torch.allclose(before[:, WORKER_A], after[:, WORKER_A])) == reaches


@pytest.mark.parametrize("topology", [True, False])
def test_a_worker_hears_another_leis_worker_only_with_topology(topology: bool) -> None:
    cfg = small_config(topology=topology)
    model = FederationDiscriminator(cfg).eval()
    w_hosts, w_tasks, schedule = inputs(cfg, 6, 4)
    changed = w_hosts.clone()
    changed[:, WORKER_B] += 1.0
    before = outputs(model, w_hosts, w_tasks, schedule, graph_of_leis())
    after = outputs(model, changed, w_tasks, schedule, graph_of_leis())
    assert not torch.allclose(before[:, WORKER_B], after[:, WORKER_B])
    assert (not torch.allclose(before[:, WORKER_A], after[:, WORKER_A])) == topology


@pytest.mark.parametrize("topology", [True, False])
def test_moving_a_task_changes_the_scores_of_both_hosts(topology: bool) -> None:
    cfg = small_config(topology=topology)
    model = FederationDiscriminator(cfg).eval()
    w_hosts, w_tasks, _ = inputs(cfg, 6, 3)
    on_first = F.one_hot(torch.tensor([[0, 3, 4]] * 2), 6).float()
    on_second = F.one_hot(torch.tensor([[1, 3, 4]] * 2), 6).float()
    before = outputs(model, w_hosts, w_tasks, on_first, graph_of_leis())
    after = outputs(model, w_hosts, w_tasks, on_second, graph_of_leis())
    for host in (0, 1):
        assert not torch.allclose(before[:, host], after[:, host])


@pytest.mark.parametrize(("topology", "optimizer"), [(True, "adam"), (False, "adam"), (True, "adahessian")])
def test_generation_climbs_log_d_of_the_host_windows(topology: bool, optimizer: str) -> None:
    cfg = small_config(topology=topology)
    model = FederationDiscriminator(cfg)
    model.head[0].weight.requires_grad_(False)  # a mixed set of flags must come back as it was
    flags = [p.requires_grad for p in model.parameters()]
    w_hosts, w_tasks, schedule = inputs(cfg, 6, 4)
    tasks_before = w_tasks.clone()
    graph = graph_of_leis()

    z = generate_hosts(model, w_hosts, w_tasks, schedule, graph, steps=10, lr=0.02, optimizer=optimizer)

    assert z.shape == w_hosts.shape and not z.requires_grad
    assert not torch.equal(z, w_hosts)
    start = F.logsigmoid(outputs(model, w_hosts, w_tasks, schedule, graph)).sum()
    end = F.logsigmoid(outputs(model, z, w_tasks, schedule, graph)).sum()
    assert end > start
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(w_tasks, tasks_before)


def test_generation_works_under_no_grad_and_zero_steps_return_the_windows() -> None:
    cfg = small_config()
    model = FederationDiscriminator(cfg)
    args = (*inputs(cfg, 1, 0), FederationGraph.build(["lei"], [0]))
    with torch.no_grad():
        z = generate_hosts(model, *args, steps=3, lr=0.05)
    assert not torch.equal(z, args[0])
    assert torch.equal(generate_hosts(model, *args, steps=0, lr=0.05), args[0])


def test_config_round_trip_and_validation() -> None:
    cfg = small_config(topology=False, convolutions=3, seed=7)
    assert FederationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        FederationConfig.from_dict(cfg.to_dict() | {"topolgy": True})
    for bad in ({"window": 0}, {"hidden": 0}, {"convolutions": 0}, {"path_length": 0}, {"n_features": 2.5}):
        with pytest.raises(ValueError):
            small_config(**bad)
    with pytest.raises(ValueError, match="topology"):
        small_config(topology="yes")


class _Unfrozen:
    """A federation's D without ``frozen()``: the ascent then recomputes the surroundings every step."""

    def __init__(self, view: HostsInContext) -> None:
        self.view = view

    def parameters(self):
        return self.view.parameters()

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.view.logits(z)


@pytest.mark.parametrize(("topology", "m", "p"), [(True, 6, 4), (False, 6, 4), (True, 6, 0), (True, 1, 0)])
def test_surroundings_encoded_once_give_the_same_logits_and_the_same_generated_windows(
    topology: bool, m: int, p: int
) -> None:
    cfg = small_config(topology=topology)
    model = FederationDiscriminator(cfg)
    w_hosts, w_tasks, schedule = inputs(cfg, m, p, batch=3)
    graph = graph_of_leis() if m == 6 else FederationGraph.build(["lei"], [0])
    view = HostsInContext(model, w_tasks, schedule, graph)
    for param in model.parameters():
        param.requires_grad_(False)
    frozen = view.frozen()
    assert not any(t.requires_grad for t in (frozen.around.task_windows, frozen.around.host_schedules))
    assert torch.equal(frozen.logits(w_hosts), view.logits(w_hosts))
    for param in model.parameters():
        param.requires_grad_(True)

    once = generate(view, w_hosts, steps=4, lr=0.05, optimizer="adahessian")
    every_step = generate(_Unfrozen(view), w_hosts, steps=4, lr=0.05, optimizer="adahessian")
    assert torch.equal(once, every_step)
    assert not torch.equal(once, w_hosts)
