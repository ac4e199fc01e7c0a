"""The topology- and schedule-aware GON discriminator D(G, W, S) of DRAGON (TNSM 2022, Fig. 4).

One discriminator scores every host of a federation at once: given the host windows, the
windows of the tasks they run, the schedule placing tasks on hosts and the federation graph,
it returns one logit per host, the log-odds that the host's window is real (sec. IV-B). Host
windows are *generated* as in :mod:`dragon.detector.gon`, by gradient ascent on
``sum_i log D_i`` from the windows themselves (:func:`generate_hosts`); tasks and schedule
are context and stay fixed.

Forward pass (eqs. 6-10):

1. Encoders. ``E_W = LeakyReLU(FeedForward(W))`` over each flattened (k*n) host and task
   window; the schedule encoding ``E_S`` is built by message passing over the schedule ``S``
   (below), so each host and each task ends up with a 2h vector ``[E_W, E_S]``.
2. Graph transformer (eq. 7; Yun et al., NeurIPS 2019). The graph has three edge types:
   identity, intra-LEI (worker <-> its broker) and inter-LEI (broker <-> broker). Each
   meta-path channel multiplies ``path_length`` soft selections ``sum_e softmax(w)_e A_e``,
   so with the default length 3 a channel can become worker -> broker -> broker -> worker, a
   cross-LEI path; the identity lets it stand for shorter paths too.
3. Graph convolution (eq. 6) over each meta-path graph: ``e0 = tanh(W e + b)`` of the host's
   ``[E_W, E_S]``, then ``r`` convolutions; the channels are merged into ``E_H`` (B, m, h).
4. Attention (eqs. 9-10): ``E_H`` queries the ``[E_W, E_S]`` of every host and task
   (dot-product attention); a feed-forward head turns each host's context into its logit.

With ``topology=False`` steps 2-4 are gone and the head reads ``[E_W, E_S]`` of the host
alone: the "without topology attention" ablation of the paper's Fig. 10.

Where the paper is vague or ties weights to the federation's size, we chose:

- **Schedule by message passing, not FeedForward(S).** The paper feeds each task's m-dim
  one-hot row to a feed-forward layer, which fixes m in the weights. Here a host's ``E_S``
  encodes the mean ``E_W`` of the tasks placed on it plus ``log(1 + number of tasks)`` (the
  mean alone would not see load), and a task's ``E_S`` encodes the ``E_W`` of its host. The
  same weights then run on 1, 16 or 256 hosts and any number of tasks, and the result is
  equivariant to the order of hosts and invariant to the order of tasks.
- **Separate window encoders for hosts and tasks.** They share the n metrics but not their
  meaning (a host's usage is its tasks' plus its own overhead), and the head must tell a
  host's own window from its tasks'. It costs k*n*h weights.
- **Row-normalised meta-paths.** Every product is divided by its row sums, so convolutions
  average over neighbours (eq. 6 sums): a broker with 200 workers gets the same scale as one
  with 2. The identity's softmax weight is positive, so no row is ever empty and a lone host
  (FTSAD data: one host, no edges) keeps its own embedding.
- **Nonlinearity between convolutions.** Eq. 6 is linear, and stacked linear convolutions
  collapse into one; LeakyReLU between them makes ``r`` mean depth.
- **Eq. 9's softmax is the attention softmax over hosts and tasks.** A FeedForward with an
  (m+p)-way softmax would again fix m and p; scores ``q_i . k_j / sqrt(h)`` with
  ``q = FeedForward(E_H)``, ``k = FeedForward([E_W, E_S])`` are its size-free form, and the
  values are ``[E_W, E_S]`` as in eq. 10. The head also reads the host's own ``[E_W, E_S]``
  (a residual path): a fault score is about *this* host's window, which must not depend on
  where its attention happens to look.
- **LeakyReLU(0.2) where the paper says ReLU.** Generation climbs log D in input space, so
  the input gradient must not vanish; dead ReLUs zero it, and smooth SiLU made D flat in
  :mod:`dragon.detector.gon`.
- **One graph per call, shared by the batch**: a batch holds windows of one federation.

Shapes: ``B`` batch, ``m`` hosts, ``p`` tasks, ``k`` window length, ``n`` features,
``h`` hidden width, ``C`` meta-path channels, ``E`` edge types (3).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dragon.detector.generation import generate
from dragon.records import check_known_keys

# Order of the edge-type adjacencies the graph transformer selects from.
EDGE_TYPES = ("identity", "intra_lei", "inter_lei")
# Slope of LeakyReLU for negative inputs; the same as the topology-free GON.
NEGATIVE_SLOPE = 0.2


@dataclass(frozen=True)
class FederationConfig:
    """Everything that builds a :class:`FederationDiscriminator`; saved next to its weights.

    Nothing in it depends on the number of hosts or tasks: one model serves any federation.
    """

    n_features: int  # n, metrics per time step of a host or task window
    window: int = 10  # k, time steps per window (eq. 1)
    hidden: int = 64  # h, width of every encoding
    convolutions: int = 2  # r, graph convolutions over each meta-path graph (eq. 6)
    meta_paths: int = 2  # C, meta-path channels of the graph transformer (eq. 7)
    path_length: int = 3  # edge-type selections multiplied per meta-path; 3 reaches another LEI's workers
    topology: bool = True  # False: no graph transformer, convolution or attention (Fig. 10 ablation)
    seed: int = 0  # weight initialisation

    def __post_init__(self) -> None:
        positive = ("n_features", "window", "hidden", "convolutions", "meta_paths", "path_length")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FederationConfig.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.topology, bool):
            raise ValueError(f"FederationConfig.topology must be a bool, got {self.topology!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"FederationConfig.seed must be an int, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederationConfig:
        """Rebuild a config; unknown keys are an error so a typo never falls back to a default."""
        check_known_keys(cls, data)
        return cls(**data)


@dataclass(frozen=True, eq=False)
class FederationGraph:
    """Topology G of a federation over hosts 0..m-1, as one 0/1 adjacency per edge type.

    ``intra`` links every worker to the broker of its LEI, ``inter`` links all brokers to each
    other; both are symmetric (m, m) float tensors with a zero diagonal. Build one from host
    metadata with :meth:`build`; a single host with no edges is ``build(["lei"], [0])``.
    """

    intra: Tensor  # (m, m)
    inter: Tensor  # (m, m)

    def __post_init__(self) -> None:
        for name in ("intra", "inter"):
            adj = getattr(self, name)
            if adj.dim() != 2 or adj.shape[0] != adj.shape[1] or adj.shape[0] < 1:
                raise ValueError(f"FederationGraph.{name} must be a non-empty (m, m) matrix, got {tuple(adj.shape)}")
            if not torch.equal(adj, adj.T) or adj.diagonal().any():
                raise ValueError(f"FederationGraph.{name} must be symmetric with a zero diagonal")
        if self.intra.shape != self.inter.shape:
            raise ValueError(f"intra {tuple(self.intra.shape)} and inter {tuple(self.inter.shape)} differ in size")

    @classmethod
    def build(cls, lei_of_host: Sequence[str], brokers: Sequence[int]) -> FederationGraph:
        """Graph of hosts whose LEI is ``lei_of_host[i]``; ``brokers`` are the broker hosts' indices.

        Every LEI must have exactly one broker among ``brokers``; every other host is a worker
        of its LEI and is linked to that broker.
        """
        m = len(lei_of_host)
        if m < 1:
            raise ValueError("a federation needs at least one host")
        if len(set(brokers)) != len(brokers) or not all(0 <= b < m for b in brokers):
            raise ValueError(f"brokers must be distinct host indices in [0, {m}), got {list(brokers)}")
        broker_of_lei: dict[str, int] = {}
        for b in brokers:
            if lei_of_host[b] in broker_of_lei:
                raise ValueError(f"LEI {lei_of_host[b]!r} has more than one broker")
            broker_of_lei[lei_of_host[b]] = b
        missing = sorted(set(lei_of_host) - set(broker_of_lei))
        if missing:
            raise ValueError(f"LEIs without a broker: {missing}")
        intra = torch.zeros(m, m)
        for host, lei in enumerate(lei_of_host):
            broker = broker_of_lei[lei]
            if host != broker:
                intra[host, broker] = intra[broker, host] = 1.0
        inter = torch.zeros(m, m)
        index = torch.tensor(list(brokers), dtype=torch.long)
        inter[index.unsqueeze(1), index.unsqueeze(0)] = 1.0
        inter.fill_diagonal_(0.0)
        return cls(intra=intra, inter=inter)

    @property
    def hosts(self) -> int:
        return self.intra.shape[0]

    def edge_types(self) -> Tensor:
        """Adjacencies in :data:`EDGE_TYPES` order, (E, m, m)."""
        identity = torch.eye(self.hosts, dtype=self.intra.dtype, device=self.intra.device)
        return torch.stack([identity, self.intra, self.inter])  # (E, m, m)


def _feed_forward(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.LeakyReLU(NEGATIVE_SLOPE))


def _head(d_in: int, hidden: int) -> nn.Sequential:
    """FeedForward of eq. 10 up to the sigmoid: one logit per host."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(NEGATIVE_SLOPE), nn.Linear(hidden, 1))


def _row_normalised(adj: Tensor) -> Tensor:
    return adj / adj.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(adj.dtype).tiny)


class MetaPaths(nn.Module):
    """Graph transformer layer (eq. 7): ``C`` soft meta-path adjacencies from the edge types.

    Selection weights start near zero (a near-uniform softmax over edge types, as in GTN) with
    a little seeded noise so that the channels do not begin identical.
    """

    def __init__(self, channels: int, length: int) -> None:
        super().__init__()
        self.select = nn.Parameter(0.1 * torch.randn(length, channels, len(EDGE_TYPES)))  # (L, C, E)

    def forward(self, edges: Tensor) -> Tensor:
        """(E, m, m) edge-type adjacencies -> (C, m, m) row-normalised meta-path adjacencies."""
        soft = torch.einsum("lce,eij->lcij", self.select.softmax(dim=-1), edges)  # (L, C, m, m)
        path = _row_normalised(soft[0])  # (C, m, m)
        for step in soft[1:]:
            path = _row_normalised(path @ step)  # (C, m, m)
        return path


class GraphConvolution(nn.Module):
    """Eq. 6 on every meta-path graph, then the channels merged into ``E_H``.

    ``e0 = tanh(W e + b)``; ``e^q = LeakyReLU(A_c e^{q-1} W^q)`` for each channel c, with
    ``W^q`` shared by the channels as in GTN.
    """

    def __init__(self, d_in: int, hidden: int, convolutions: int, channels: int) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, hidden)
        self.steps = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(convolutions))
        self.merge = _feed_forward(channels * hidden, hidden)

    def forward(self, nodes: Tensor, paths: Tensor, batch: int) -> Tensor:
        """Host rows (B*m, d_in) over meta-paths (C, m, m) -> ``E_H`` rows (B*m, h).

        Rows are 2-D and every product an explicit ``mm``/``bmm``: a generation step runs this
        forward, backward and backward again (AdaHessian), and each reshape a 3-D ``Linear``
        or a broadcasting ``matmul`` adds is a node in all three passes.
        """
        channels, m = paths.shape[:2]
        h = self.embed.out_features
        e = torch.tanh(self.embed(nodes))  # (B*m, h)
        # The first step's W^q is the same for every channel: apply it once, then propagate
        # over the channels' adjacencies stacked one above the other.
        stacked = paths.reshape(channels * m, m).expand(batch, -1, -1)  # (B, C*m, m)
        e = F.leaky_relu(torch.bmm(stacked, self.steps[0](e).view(batch, m, h)), NEGATIVE_SLOPE)  # (B, C*m, h)
        per_channel = paths.expand(batch, -1, -1, -1).reshape(batch * channels, m, m)  # (B*C, m, m)
        for step in self.steps[1:]:
            e = step(e.view(-1, h)).view(batch * channels, m, h)
            e = F.leaky_relu(torch.bmm(per_channel, e), NEGATIVE_SLOPE)  # (B*C, m, h)
        merged = e.view(batch, channels, m, h).transpose(1, 2).reshape(batch * m, channels * h)
        return self.merge(merged)  # (B*m, h)


class HostAttention(nn.Module):
    """Eqs. 9-10: each host's ``E_H`` attends over the ``[E_W, E_S]`` of every host and task.

    Written out rather than with ``scaled_dot_product_attention`` so that AdaHessian's
    Hessian-vector products (double backward) work on every backend.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(2 * hidden, hidden)
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, topology: Tensor, nodes: Tensor) -> Tensor:
        """``E_H`` rows (B*m, h) and node encodings (B, m+p, 2h) -> each host's context rows (B*m, 2h)."""
        batch, count, width = nodes.shape
        queries = self.query(topology).view(batch, -1, self.query.out_features)  # (B, m, h)
        keys = self.key(nodes.view(-1, width)).view(batch, count, -1)  # (B, m+p, h)
        scores = torch.bmm(queries, keys.transpose(1, 2)) * self.scale  # (B, m, m+p)
        return torch.bmm(scores.softmax(dim=-1), nodes).view(-1, width)  # (B*m, 2h)


@dataclass(frozen=True, eq=False)
class Surroundings:
    """What D reads besides the host windows, encoded once: the same for every Z an ascent tries.

    A generation step evaluates D ten times on the same tasks, schedule and graph; the task
    encodings, the hosts' schedule encodings and the meta-path graphs depend on those and
    on the weights only, so :meth:`FederationDiscriminator.surroundings` computes them once
    while the weights are frozen. Rows are ``(B*m, ·)`` for hosts, ``(B*p, ·)`` for tasks.
    """

    batch: int
    hosts: int
    schedule: Tensor  # (B, p, m) S
    task_windows: Tensor  # (B*p, h) E_W of every task
    host_schedules: Tensor  # (B*m, h) E_S of every host
    paths: Tensor | None  # (C, m, m) meta-path adjacencies; None without the graph part

    @property
    def tasks(self) -> int:
        return int(self.schedule.shape[1])


class FederationDiscriminator(nn.Module):
    """D(G, W, S): per-host probability that each host window is real rather than generated.

    Weights are initialised from ``cfg.seed`` without touching the global torch RNG.
    """

    def __init__(self, cfg: FederationConfig) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self._build(cfg)

    def _build(self, cfg: FederationConfig) -> None:
        h, flat = cfg.hidden, cfg.window * cfg.n_features
        # Flatten(start_dim=1) leaves the (rows, k*n) windows the encoders get as they are;
        # it stays so that saved weights keep their names (host_window.1.0.weight, ...).
        self.host_window = nn.Sequential(nn.Flatten(start_dim=1), _feed_forward(flat, h))
        self.task_window = nn.Sequential(nn.Flatten(start_dim=1), _feed_forward(flat, h))
        self.host_schedule = _feed_forward(h + 1, h)  # mean task encoding and log(1 + tasks)
        self.task_schedule = _feed_forward(h, h)  # encoding of the task's host
        if cfg.topology:
            self.meta_paths = MetaPaths(cfg.meta_paths, cfg.path_length)
            self.convolution = GraphConvolution(2 * h, h, cfg.convolutions, cfg.meta_paths)
            self.attention = HostAttention(h)
            self.head = _head(4 * h, h)  # host's context and its own [E_W, E_S]
        else:
            self.head = _head(2 * h, h)

    def surroundings(self, w_tasks: Tensor, schedule: Tensor, graph: FederationGraph) -> Surroundings:
        """Encode the tasks ``w_tasks`` (B, p, k, n), the schedule (B, p, m) one-hot rows and ``graph``."""
        self._check_surroundings(w_tasks, schedule, graph)
        (batch, tasks, hosts), h, flat = schedule.shape, self.cfg.hidden, self.cfg.window * self.cfg.n_features
        task_windows = self.task_window(w_tasks.reshape(batch * tasks, flat))  # (B*p, h); p may be 0
        placed = schedule.transpose(1, 2)  # (B, m, p)
        load = placed.sum(dim=-1, keepdim=True)  # (B, m, 1) tasks on each host
        mean_task = placed @ task_windows.view(batch, tasks, h) / load.clamp_min(1.0)  # (B, m, h); 0 when idle
        host_schedules = self.host_schedule(torch.cat([mean_task, torch.log1p(load)], dim=-1).view(batch * hosts, -1))
        # One host and no task: the attention's softmax over one node is 1 whatever the query,
        # so the context is the host itself and the graph part need not run.
        graph_part = self.cfg.topology and hosts + tasks > 1
        paths = self.meta_paths(graph.edge_types().to(schedule)) if graph_part else None  # (C, m, m)
        return Surroundings(batch, hosts, schedule, task_windows, host_schedules, paths)

    def encode(self, w_hosts: Tensor, around: Surroundings) -> tuple[Tensor, Tensor]:
        """``[E_W, E_S]`` rows of every host (B*m, 2h) and every task (B*p, 2h)."""
        host_windows = self._host_windows(w_hosts, around)
        return self._host_rows(host_windows, around), self._task_rows(host_windows, around)

    def _host_windows(self, w_hosts: Tensor, around: Surroundings) -> Tensor:
        """``E_W`` rows (B*m, h) of the host windows (B, m, k, n)."""
        k, n = self.cfg.window, self.cfg.n_features
        b, m = around.batch, around.hosts
        if w_hosts.shape != (b, m, k, n):
            raise ValueError(f"expected host windows {(b, m, k, n)}, got {tuple(w_hosts.shape)}")
        return self.host_window(w_hosts.reshape(b * m, k * n))

    def _host_rows(self, host_windows: Tensor, around: Surroundings) -> Tensor:
        return torch.cat([host_windows, around.host_schedules], dim=-1)  # (B*m, 2h)

    def _task_rows(self, host_windows: Tensor, around: Surroundings) -> Tensor:
        """Each task's ``[E_W, E_S]`` (B*p, 2h); its ``E_S`` encodes its host's ``E_W``."""
        b, m, p, h = around.batch, around.hosts, around.tasks, self.cfg.hidden
        task_schedules = self.task_schedule((around.schedule @ host_windows.view(b, m, h)).view(b * p, h))
        return torch.cat([around.task_windows, task_schedules], dim=-1)

    def host_topology(self, hosts: Tensor, around: Surroundings) -> Tensor:
        """``E_H`` rows (B*m, h): host rows (B*m, 2h) convolved over the meta-path graphs."""
        if around.paths is None:
            raise ValueError("no graph part: the model has no topology, or the federation is one host without tasks")
        return self.convolution(hosts, around.paths, around.batch)

    def logits_within(self, w_hosts: Tensor, around: Surroundings) -> Tensor:
        """Pre-sigmoid score (B, m) of each host window of ``w_hosts`` (B, m, k, n) in ``around``."""
        b, m, p, h = around.batch, around.hosts, around.tasks, self.cfg.hidden
        host_windows = self._host_windows(w_hosts, around)
        hosts = self._host_rows(host_windows, around)  # (B*m, 2h)
        if not self.cfg.topology:
            # The head reads the host's own [E_W, E_S] alone: the tasks' rows would go unused
            # (skipping them saves 6-8 % of a 16-host generation).
            return self.head(hosts).view(b, m)
        if around.paths is None:
            context = hosts  # one node: see surroundings()
        else:
            tasks = self._task_rows(host_windows, around)  # (B*p, 2h)
            nodes = torch.cat([hosts.view(b, m, 2 * h), tasks.view(b, p, 2 * h)], dim=1)  # (B, m+p, 2h)
            context = self.attention(self.host_topology(hosts, around), nodes)  # (B*m, 2h)
        return self.head(torch.cat([context, hosts], dim=-1)).view(b, m)

    def logits(self, w_hosts: Tensor, w_tasks: Tensor, schedule: Tensor, graph: FederationGraph) -> Tensor:
        """Pre-sigmoid score of each host, (B, m); training and ascent use it for stable logs.

        ``w_hosts`` (B, m, k, n), ``w_tasks`` (B, p, k, n) with p >= 0, ``schedule`` (B, p, m)
        one-hot rows (task -> host), ``graph`` over the same m hosts.
        """
        return self.logits_within(w_hosts, self.surroundings(w_tasks, schedule, graph))

    def forward(self, w_hosts: Tensor, w_tasks: Tensor, schedule: Tensor, graph: FederationGraph) -> Tensor:
        return torch.sigmoid(self.logits(w_hosts, w_tasks, schedule, graph))  # (B, m)

    def _check_surroundings(self, w_tasks: Tensor, schedule: Tensor, graph: FederationGraph) -> None:
        k, n = self.cfg.window, self.cfg.n_features
        if schedule.dim() != 3:
            raise ValueError(f"expected a schedule (B, p, m), got {tuple(schedule.shape)}")
        b, p, m = schedule.shape
        if w_tasks.shape != (b, p, k, n):
            raise ValueError(f"expected task windows {(b, p, k, n)} for the schedule, got {tuple(w_tasks.shape)}")
        if graph.hosts != m:
            raise ValueError(f"graph has {graph.hosts} hosts, the schedule has {m}")


class HostsInContext:
    """D seen as a function of the host windows alone, their tasks, schedule and graph held fixed.

    This is what generation climbs (``generate`` needs ``parameters()`` to freeze them and
    ``logits(z)`` to climb) and what training and scoring judge host windows with.
    """

    def __init__(
        self, model: FederationDiscriminator, w_tasks: Tensor, schedule: Tensor, graph: FederationGraph
    ) -> None:
        self.model = model
        self.w_tasks = w_tasks.detach()  # (B, p, k, n)
        self.schedule = schedule.detach()  # (B, p, m)
        self.graph = graph

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def logits(self, z: Tensor) -> Tensor:
        return self.model.logits(z, self.w_tasks, self.schedule, self.graph)  # (B, m)

    def frozen(self) -> FrozenHostsInContext:
        """The same function with the tasks, schedule and graph encoded once (see :class:`Surroundings`).

        Valid only while the weights do not change: ``generate`` asks for it after freezing them.
        """
        with torch.no_grad():
            return FrozenHostsInContext(self.model, self.model.surroundings(self.w_tasks, self.schedule, self.graph))


class FrozenHostsInContext:
    """:class:`HostsInContext` whose surroundings were encoded once, under frozen weights."""

    def __init__(self, model: FederationDiscriminator, around: Surroundings) -> None:
        self.model = model
        self.around = around

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def logits(self, z: Tensor) -> Tensor:
        return self.model.logits_within(z, self.around)  # (B, m)


def generate_hosts(
    model: FederationDiscriminator,
    w_hosts: Tensor,
    w_tasks: Tensor,
    schedule: Tensor,
    graph: FederationGraph,
    steps: int,
    lr: float,
    optimizer: str = "adahessian",
    restart_every: int = 0,
) -> Tensor:
    """Host windows Z* (B, m, k, n) from Z = ``w_hosts`` by ``steps`` steps maximising sum_i log D_i.

    Window initialisation and eq. 3/5 as in :func:`dragon.detector.generation.generate`, whose ascent
    loop (``ASCENTS[optimizer]``) and weight freezing this reuses: the weights get no
    gradient and their ``requires_grad`` flags are restored afterwards. Task windows and the
    schedule are context and are not changed. Works under ``torch.no_grad()`` too.
    """
    return generate(HostsInContext(model, w_tasks, schedule, graph), w_hosts, steps, lr, optimizer, restart_every)


class SingleHostDiscriminator(nn.Module):
    """:class:`FederationDiscriminator` over one host with no tasks: windows (B, k, n) -> (B,).

    A single time series (an FTSAD data set, or one host scored on its own) is a federation of
    one host, its own broker, running no task: the graph is that host alone and the attention
    has only the host to look at. This gives the window-model interface of
    :mod:`dragon.detector.gon` (``logits`` of (B, k, n) windows), so training (Algorithm 1),
    generation and scoring are shared with the first GON.
    """

    def __init__(self, cfg: FederationConfig) -> None:
        super().__init__()
        self.federation = FederationDiscriminator(cfg)
        self.graph = FederationGraph.build(["lei"], [0])

    def logits(self, w: Tensor) -> Tensor:
        """(B, k, n) windows -> (B,) logits."""
        hosts = w.unsqueeze(1)  # (B, 1, k, n)
        tasks = w.new_zeros((w.shape[0], 0, *w.shape[1:]))  # (B, 0, k, n)
        schedule = w.new_zeros((w.shape[0], 0, 1))  # (B, 0, 1)
        return self.federation.logits(hosts, tasks, schedule, self.graph).squeeze(1)  # (B,)

    def forward(self, w: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(w))  # (B,)


class DimensionsAsHosts(nn.Module):
    """:class:`FederationDiscriminator` with each feature as a host: windows (B, k, n) -> (B, n).

    For a multivariate series whose dimensions are separate machines or resources (FTSAD-25
    and -55 come from a 10-node cluster), each dimension becomes a host with one feature, in
    an LEI of its own whose broker it is, so the brokers' all-to-all links join every pair of
    dimensions. The graph convolutions and the attention can then learn which dimensions move
    together, which a single-host view cannot. The logits are per dimension; generation climbs
    their summed log D and training takes the mean cross-entropy over them.
    """

    def __init__(self, cfg: FederationConfig, dimensions: int) -> None:
        super().__init__()
        self.dimensions = dimensions
        self.federation = FederationDiscriminator(cfg)
        self.graph = FederationGraph.build([str(d) for d in range(dimensions)], list(range(dimensions)))

    def logits(self, w: Tensor) -> Tensor:
        """(B, k, n) windows -> (B, n) logits, one per dimension."""
        if w.dim() != 3 or w.shape[2] != self.dimensions:
            raise ValueError(f"expected windows (B, k, {self.dimensions}), got {tuple(w.shape)}")
        hosts = w.transpose(1, 2).unsqueeze(-1)  # (B, n, k, 1)
        tasks = w.new_zeros((w.shape[0], 0, w.shape[1], 1))  # (B, 0, k, 1)
        schedule = w.new_zeros((w.shape[0], 0, self.dimensions))  # (B, 0, n)
        return self.federation.logits(hosts, tasks, schedule, self.graph)  # (B, n)

    def forward(self, w: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(w))  # (B, n)
