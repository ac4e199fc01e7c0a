"""The federation benchmark: does judging all hosts together, with their schedule, find faults better?

The rpi16 traces (16 hosts, 202 intervals of 300 s, the schedule of every interval) carry no
fault labels, so faults are injected, with the fault model of the DRAGON paper (sec. V-B: a
CPU, memory or disk hog makes a host's utilisation rise suddenly) and the one
``scripts/select_on_train.py`` uses on FTSAD:

1. the trace from its first busy interval is split in time: the first ``train_fraction``
   trains, the rest is the test part;
2. ``faults`` segments are injected into a copy of the test part, each on one random host, for
   ``fault_lengths`` intervals, raising a random non-empty subset of its metrics by a random
   ``fault_rise`` fraction of that metric's training span (seeded by ``fault_seed``);
3. each model fits on the training part, scores it, and POT is fitted on those scores (all
   hosts pooled); it then scores the faulty test part with the training part as history;
4. every (interval, host) cell is one sample: labelled when a fault was injected there. The
   metrics are those of the FTSAD bench (``bench.quality``) over the cells, host after host,
   so a segment is one host's fault; HitRate/NDCG rank the metrics behind each faulty cell.

The test part is otherwise real: tasks arrive and move every interval, and a host's CPU follows
its placement (correlation 0.5 on the testbed, 0.75 in the simulated trace). A model that sees
the schedule may tell a rise caused by new tasks from a fault; ``false_alarm_rate_placement_changed``
and ``..._unchanged`` say how often healthy cells whose host's tasks changed (or not) were
flagged at the POT threshold.

Models (:data:`FEDERATION_MODELS`): ``gon``, the DRAGON discriminator over all hosts, their
tasks, the schedule and the graph (``federation_data``); ``gon-host``, the same network trained
on and judging one host at a time, which is what the detector service does today; and the
per-host ``zscore``, ``pca`` and ``random`` of the FTSAD bench over the hosts' metrics side by
side. No setting is chosen by the injected labels: the gon defaults are those chosen on FTSAD
training data (docs/detector-quality.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
import torch

from dragon.detector.baselines import GonModel, create_model
from dragon.detector.bench import BenchResult, costs, quality, run_environment
from dragon.detector.federation_data import (
    FederationTrace,
    FederationWindows,
    batch_size_for,
    federation_fault_scores,
    host_series,
    load_federation_dir,
    schedule_changed,
)
from dragon.detector.gon import GonConfig, train_gon
from dragon.detector.pot import DEFAULT_LEVEL, DEFAULT_Q, PotState, fit_pot
from dragon.detector.scaling import DATASET_MIN_SPAN, MinMaxScaler
from dragon.detector.svgplot import write_host_heatmap_svg

log = structlog.get_logger(__name__)

LATENCY_WARMUP = 3


class FederationModel(Protocol):
    """Learns a federation's normal operation and scores each host of each interval."""

    def fit(self, train: FederationTrace) -> None: ...

    def score(self, trace: FederationTrace, history: FederationTrace) -> tuple[np.ndarray, np.ndarray]:
        """Scores (T, m) and per-metric contributions (T, m, n) of ``trace``; ``history`` came just before."""

    def describe(self) -> dict[str, Any]: ...


class JointGon:
    """The DRAGON discriminator judging every host at once with its tasks, schedule and graph."""

    def __init__(self, params: Mapping[str, Any], seed: int) -> None:
        params = dict(params)
        self.min_span = float(params.pop("min_span", DATASET_MIN_SPAN))
        self.overrides = params | {"seed": seed}
        self.context = GonConfig.from_dict({"n_features": 1, **self.overrides}).window  # fails fast on a bad key
        self.cfg: GonConfig | None = None
        self.model: torch.nn.Module | None = None
        self.scaler: MinMaxScaler | None = None
        self.training_log: dict[str, Any] = {}

    def fit(self, train: FederationTrace) -> None:
        m, n = train.hosts.shape[1:]
        batch = {"batch_size": batch_size_for(m)}  # a sample is a whole federation of m host windows
        self.cfg = GonConfig.from_dict({"n_features": n, "scope": "lei", **batch, **self.overrides})
        self.scaler = MinMaxScaler.fit(train.hosts.reshape(-1, n), self.min_span)  # one scaler for all hosts
        self.model, history = train_gon(self._windows(train), self.cfg)
        self.training_log = {key: history[key] for key in ("epochs_run", "best_epoch")}

    def score(self, trace: FederationTrace, history: FederationTrace) -> tuple[np.ndarray, np.ndarray]:
        if self.cfg is None or self.model is None:
            raise RuntimeError("JointGon.score before fit")
        prefix = history.part(max(history.steps - self.context, 0))
        windows = self._windows(prefix.then(trace))
        return federation_fault_scores(self.model, self.cfg, windows, start=prefix.steps)

    def _windows(self, trace: FederationTrace) -> FederationWindows:
        scaled = self.scaler.transform(trace.hosts).astype(np.float32)  # (T, m, n)
        return FederationWindows.from_scaled(scaled, trace.schedule, trace.graph, self.cfg.window)

    def describe(self) -> dict[str, Any]:
        cfg = self.cfg.to_dict() if self.cfg is not None else dict(self.overrides)
        cfg.pop("n_features", None)
        return cfg | {"min_span": self.min_span} | self.training_log


class PerHostGon:
    """The same network seeing one host at a time, as the detector service scores today."""

    def __init__(self, params: Mapping[str, Any], seed: int) -> None:
        self.gon = GonModel(params, seed)

    def fit(self, train: FederationTrace) -> None:
        self.gon.fit(host_series(train))

    def score(self, trace: FederationTrace, history: FederationTrace) -> tuple[np.ndarray, np.ndarray]:
        scores, contributions = self.gon.score_many(host_series(trace), host_series(history))  # all hosts, one batch
        return np.stack(scores, axis=1), np.stack(contributions, axis=1)

    def describe(self) -> dict[str, Any]:
        return self.gon.describe()


class OverHosts:
    """A baseline of the FTSAD bench over all hosts' metrics side by side, (T, m*n).

    A host's score aggregates its own metrics' contributions: the largest |z| for ``zscore``
    (its own "max" over dimensions), the summed squared residual for ``pca``.
    """

    def __init__(self, name: str, per_host: Callable[[np.ndarray], np.ndarray], params: Mapping[str, Any], seed: int):
        self.model = create_model(name, seed=seed, **params)
        self.per_host = per_host

    def fit(self, train: FederationTrace) -> None:
        self.model.fit(_flat(train))

    def score(self, trace: FederationTrace, history: FederationTrace) -> tuple[np.ndarray, np.ndarray]:
        _, contributions = self.model.score(_flat(trace), history=_flat(history))
        cells = contributions.reshape(trace.hosts.shape)  # (T, m, n)
        return self.per_host(cells), cells

    def describe(self) -> dict[str, Any]:
        return self.model.describe()


def _flat(trace: FederationTrace) -> np.ndarray:
    return trace.hosts.reshape(trace.steps, trace.hosts.shape[1] * trace.hosts.shape[2])  # (T, m*n)


def _over_hosts(name: str, per_host: Callable[[np.ndarray], np.ndarray]) -> Callable[..., OverHosts]:
    return lambda params, seed: OverHosts(name, per_host, params, seed)


FEDERATION_MODELS: dict[str, Callable[[Mapping[str, Any], int], FederationModel]] = {
    "gon": JointGon,
    "gon-host": PerHostGon,
    "zscore": _over_hosts("zscore", lambda cells: cells.max(axis=2)),
    "pca": _over_hosts("pca", lambda cells: cells.sum(axis=2)),
    "random": _over_hosts("random", lambda cells: cells.max(axis=2)),
}


@dataclass(frozen=True)
class FederationBenchConfig:
    """One run of the federation benchmark; every field is recorded in the result."""

    data: str  # folder with time_series.npy [T, n*m] and schedule_series.npy [T, p, m]
    model: str = "gon"  # a key of FEDERATION_MODELS
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # the model's seed
    fault_seed: int = 0  # where, when and how strong the injected faults are
    leis: int = 4  # LEIs of consecutive hosts, each led by its first (the paper's configuration 2)
    train_fraction: float = 0.7
    faults: int = 6  # injected fault segments in the test part
    fault_lengths: tuple[int, int] = (1, 5)  # intervals per fault, inclusive
    fault_rise: tuple[float, float] = (0.2, 0.8)  # rise as a fraction of the metric's training span
    pot_q: float = DEFAULT_Q
    pot_level: float = DEFAULT_LEVEL
    latency_samples: int = 50  # single-interval scoring calls timed (all hosts of the federation at once)

    def __post_init__(self) -> None:
        if self.model not in FEDERATION_MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(sorted(FEDERATION_MODELS))}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.faults < 1 or not 1 <= self.fault_lengths[0] <= self.fault_lengths[1]:
            raise ValueError("need faults >= 1 and 1 <= shortest <= longest fault length")
        if not 0.0 < self.fault_rise[0] <= self.fault_rise[1]:
            raise ValueError(f"fault_rise must be 0 < low <= high, got {self.fault_rise}")
        if self.latency_samples < 1:
            raise ValueError(f"latency_samples must be >= 1, got {self.latency_samples}")


@dataclass(frozen=True, eq=False)
class InjectedFaults:
    trace: FederationTrace  # the test part with the faults
    labels: np.ndarray  # (T, m, n) 1 where a metric of a host was raised


def inject_host_faults(test: FederationTrace, train: FederationTrace, cfg: FederationBenchConfig) -> InjectedFaults:
    """Sudden rises on single hosts (module docstring, step 2); segments never overlap on a host."""
    rng = np.random.default_rng(cfg.fault_seed)
    steps, m, n = test.hosts.shape
    longest = cfg.fault_lengths[1]
    if steps < 2 * longest + cfg.faults:
        raise ValueError(f"a test part of {steps} intervals is too short for {cfg.faults} faults of up to {longest}")
    flat = train.hosts.reshape(-1, n)
    span = np.maximum(flat.max(axis=0) - flat.min(axis=0), np.finfo(float).tiny)  # (n,)
    hosts, labels = test.hosts.copy(), np.zeros((steps, m, n), dtype=np.int8)
    placed = tries = 0
    while placed < cfg.faults:
        tries += 1
        if tries > 1000 * cfg.faults:
            raise ValueError(f"could not place {cfg.faults} separate faults in {steps} intervals of {m} hosts")
        host = int(rng.integers(m))
        start = int(rng.integers(longest, steps - longest))
        length = int(rng.integers(cfg.fault_lengths[0], longest + 1))
        if labels[max(start - 1, 0) : start + length + 1, host].any():
            continue  # keep segments apart so each one is one fault
        metrics = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)
        rise = rng.uniform(*cfg.fault_rise, size=len(metrics)) * span[metrics]
        hosts[start : start + length, host, metrics] += rise
        labels[start : start + length, host, metrics] = 1
        placed += 1
    return InjectedFaults(test.with_hosts(hosts), labels)


def run_federation_bench(cfg: FederationBenchConfig) -> BenchResult:
    """Run the protocol of the module docstring; the result's scores are (T', m)."""
    trace = load_federation_dir(cfg.data, cfg.leis).started()
    cut = int(round(trace.steps * cfg.train_fraction))
    train, test = trace.part(0, cut), trace.part(cut)
    injected = inject_host_faults(test, train, cfg)
    model = FEDERATION_MODELS[cfg.model](cfg.params, cfg.seed)

    started = time.perf_counter()
    model.fit(train)
    train_scores, _ = model.score(train, history=train.part(0, 0))
    pot = fit_pot(train_scores.ravel(), q=cfg.pot_q, level=cfg.pot_level)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    scores, contributions = model.score(injected.trace, history=train)  # (T', m), (T', m, n)
    test_s = time.perf_counter() - started
    latencies = _step_latencies_ms(model, injected.trace, train, cfg.latency_samples)

    # Cells host after host, so that a segment of the flattened series is one host's fault.
    cell_scores = scores.T.ravel()
    cell_contributions = contributions.transpose(1, 0, 2).reshape(-1, contributions.shape[2])
    cell_labels = injected.labels.transpose(1, 0, 2).reshape(-1, contributions.shape[2])
    report = {
        **quality(cell_scores, cell_contributions, cell_labels, pot.z_q),
        **_placement_false_alarms(scores >= pot.z_q, injected.labels.any(axis=2), test, train),
        "threshold": pot.z_q,
        **costs(train_s, test_s, latencies),
        "params": _params(cfg, model, pot, trace, train, test, len(latencies)),
    }
    log.info("federation_bench_done", model=cfg.model, roc_auc=report["roc_auc"], pr_auc=report["pr_auc"])
    thresholds = np.full(len(scores), pot.z_q)  # one static threshold for every host
    return BenchResult(report=report, scores=scores, truth=injected.labels.any(axis=2), thresholds=thresholds)


def _placement_false_alarms(
    alarms: np.ndarray, faulty: np.ndarray, test: FederationTrace, train: FederationTrace
) -> dict[str, float | None]:
    """Share of healthy (interval, host) cells flagged, where the host's tasks changed and where not."""
    changed = schedule_changed(test.schedule, previous=train.schedule)  # (T', m)
    healthy = ~faulty

    def rate(where: np.ndarray) -> float | None:
        cells = healthy & where
        return round(float(alarms[cells].mean()), 6) if cells.any() else None

    return {
        "false_alarm_rate_placement_changed": rate(changed),
        "false_alarm_rate_placement_unchanged": rate(~changed),
        "healthy_cells_placement_changed": int((healthy & changed).sum()),
    }


def _step_latencies_ms(
    model: FederationModel, test: FederationTrace, train: FederationTrace, samples: int
) -> np.ndarray:
    """Milliseconds to score one interval of every host, with its history, as a broker would each interval."""
    full = train.then(test)
    steps = np.unique(np.linspace(train.steps, full.steps - 1, samples).round().astype(int))
    calls = [(full.part(t, t + 1), full.part(0, t)) for t in steps]
    for trace, history in calls[:LATENCY_WARMUP]:
        model.score(trace, history)
    latencies = []
    for trace, history in calls:
        started = time.perf_counter()
        model.score(trace, history)
        latencies.append((time.perf_counter() - started) * 1000.0)
    return np.asarray(latencies)


def _params(
    cfg: FederationBenchConfig,
    model: FederationModel,
    pot: PotState,
    trace: FederationTrace,
    train: FederationTrace,
    test: FederationTrace,
    latency_calls: int,
) -> dict[str, Any]:
    return {
        "model": cfg.model,
        "model_config": model.describe(),
        "seed": cfg.seed,
        "fault_seed": cfg.fault_seed,
        "faults": {"count": cfg.faults, "lengths": list(cfg.fault_lengths), "rise": list(cfg.fault_rise)},
        "pot": {"q": pot.q, "level": pot.level, "t": pot.t, "method": pot.method, "n_peaks": pot.n_peaks},
        "data": str(Path(cfg.data).resolve()),
        "hosts": int(trace.hosts.shape[1]),
        "task_slots": int(trace.schedule.shape[1]),
        "leis": cfg.leis,
        "features": list(trace.feature_names),
        "train_steps": train.steps,
        "test_steps": test.steps,
        "latency_calls": latency_calls,
        **run_environment(),
    }


def write_heatmap(result: BenchResult, path: str | Path, label: str) -> str:
    """The hosts' test scores as a heatmap (``svgplot.write_host_heatmap_svg``); returns the path."""
    params = result.report["params"]
    title = f"{label} on {Path(params['data']).name}, seed {params['seed']}"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_host_heatmap_svg(path, result.scores, result.report["threshold"], result.truth, title)
    return str(path)
