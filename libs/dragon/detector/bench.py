"""The benchmark protocol: train on normal data, score the test series, threshold, measure.

One protocol for every model of the registry (:mod:`dragon.detector.baselines`), so their
numbers are comparable:

1. fit the model on ``train.npy`` only;
2. score the training series and fit POT on those scores (risk ``q``, initial ``level``): the
   threshold encodes normal operation only;
3. score ``test.npy``, with the last training rows as history so the first windows hold real
   data (FTSAD's test series continues its training series);
4. compare with ``labels.npy``. Test labels are used for measuring and nothing else: no
   setting, threshold or early stop ever looks at them.

With ``online`` (``--online``), step 3 is what the service does instead: the test series is
judged one step at a time and the model fine-tuned when its confidence gate fires
(:mod:`dragon.detector.online`); each fine-tune is listed in the report.

A time step is anomalous when any of its label dimensions is 1. Threshold-free quality of the
raw scores (ROC-AUC, PR-AUC) comes first; F1 at the POT threshold, PA%K and point-adjusted F1
(which flatters any detector on long segments) follow. HitRate@100% and NDCG@100% rank the
model's per-dimension contributions and need per-dimension labels ([T', D], D > 1).
``f1_best_diagnostic`` is the best F1 over all thresholds in hindsight: it reads the labels to
pick its threshold, so it is reported to separate score quality from POT's choice and must
never be used to choose anything.

Costs: ``train_s`` covers fit, scoring the training series and the POT fit; ``test_s`` scores
the whole test series in one call (on-line: one step at a time, fine-tunes included); the step
latencies time one step (one window) at a time, as a streaming detector would;
``peak_rss_mb`` is the whole process's peak, mapped libraries included, and ``anon_rss_mb`` the
memory it allocated itself, read at the end.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import structlog
import torch

from dragon.detector import metrics
from dragon.detector.baselines import AnomalyModel, create_model
from dragon.detector.config import DEFAULT_POT_LAG, ONLINE_MIN_INTERVAL_STEPS
from dragon.detector.online import OnlineSettings
from dragon.detector.pot import DEFAULT_LEVEL, DEFAULT_Q, PotState, StreamingPot, fit_pot, usable_drift_depth
from dragon.detector.svgplot import Frame
from dragon.detector.train import CALIBRATION_TAIL, DatasetError, load_dataset_dir

log = structlog.get_logger(__name__)

# Single-step calls run before timing starts: the first calls pay for lazy initialisation.
LATENCY_WARMUP = 3
# Plot size in SVG user units, and the most score points drawn: longer series are reduced to
# the maximum of equal buckets of steps, which keeps every peak visible.
SVG_WIDTH, SVG_HEIGHT, SVG_MARGIN = 1000, 300, 60
SVG_MAX_POINTS = 2000


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; every field is recorded in the result."""

    data: str  # folder with train.npy [T, D], test.npy [T', D], labels.npy [T', D] or [T']
    model: str = "gon"  # a name registered in dragon.detector.baselines.MODELS
    params: dict[str, Any] = field(default_factory=dict)  # the model's settings (its config's fields)
    seed: int = 0  # passed to the model (weights, minibatch order, random scores)
    pot_q: float = DEFAULT_Q  # POT risk: a normal score exceeds the threshold with this probability
    pot_level: float = DEFAULT_LEVEL  # POT initial quantile of the training scores
    latency_samples: int = 200  # single-step scoring calls timed for the latency percentiles
    pot_mode: str = "static"  # a key of STREAMS: static POT, streaming SPOT or drift-aware DSPOT
    dspot_depth: int = 20  # DSPOT: normal scores in the moving average
    pot_lag: int = DEFAULT_POT_LAG  # SPOT/DSPOT: normal scores learnt this many scores late (0: at once)
    online: bool = False  # score step by step and fine-tune as the service does (dragon.detector.online)
    online_interval: int = ONLINE_MIN_INTERVAL_STEPS  # on-line: at least this many steps between fine-tunes

    def __post_init__(self) -> None:
        if self.pot_mode not in STREAMS:
            raise ValueError(f"pot_mode must be one of {sorted(STREAMS)}, got {self.pot_mode!r}")
        if self.pot_lag < 0:
            raise ValueError(f"pot_lag must be >= 0, got {self.pot_lag}")
        if self.latency_samples < 1:
            raise ValueError(f"latency_samples must be >= 1, got {self.latency_samples}")
        # fit_pot checks these too, but only after training: fail before it instead.
        if not 0.0 < self.pot_level < 1.0 or not 0.0 < self.pot_q < 1.0 - self.pot_level:
            raise ValueError(
                f"POT needs 0 < level < 1 and 0 < q < 1 - level, got q={self.pot_q}, level={self.pot_level}"
            )
        if self.online:
            online_settings(self)  # its checks, before training


@dataclass
class BenchResult:
    """The JSON report and the per-step test scores it was computed from."""

    report: dict[str, Any]
    scores: np.ndarray  # (T',)
    truth: np.ndarray  # (T',) bool, any label dimension set
    thresholds: np.ndarray  # (T',) the threshold in force at each step (one value for a static POT)


def load_benchmark(data: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """train (T, D), test (T', D), labels (T', D) or (T',); DatasetError naming the file otherwise."""
    train, test, labels = load_dataset_dir(data)
    root = Path(data)
    if test is None:
        raise DatasetError(f"{root / 'test.npy'}: missing; the benchmark needs test.npy and labels.npy")
    if labels is None:
        raise DatasetError(f"{root / 'labels.npy'}: missing; the benchmark needs test.npy and labels.npy")
    return train, test, labels


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Run the protocol of the module docstring and return the report with the test scores."""
    train, test, labels = load_benchmark(cfg.data)
    model = create_model(cfg.model, seed=cfg.seed, **cfg.params)
    if cfg.online and not hasattr(model, "score_online"):
        raise ValueError(f"--online fine-tunes the model as the service does: model {cfg.model!r} cannot")
    pot, train_scores, train_s = fit_and_calibrate(model, train, cfg)
    started = time.perf_counter()
    if cfg.online:
        run = model.score_online(test, train, online_settings(cfg), pot)
        scores, contributions, fine_tunes = run.scores, run.contributions, run.fine_tunes
    else:
        scores, contributions = model.score(test, history=train)
        fine_tunes = None
    test_s = time.perf_counter() - started
    _check_output(scores, contributions, test.shape)
    # (T',): on-line, each step's threshold came with its verdict; else POT's rule over the scores.
    if cfg.online:
        thresholds, starting_fit = run.thresholds, run.starting_fit
    else:
        thresholds, starting_fit = offline_thresholds(pot, train_scores, scores, cfg)
    latencies = step_latencies_ms(model, train, test, cfg.latency_samples)
    truth = metrics.step_truth(labels)
    params = _params(cfg, model, starting_fit, train, test, labels)
    params |= {"latency_samples": len(latencies)}
    report = {
        **quality(scores, contributions, labels, thresholds),
        "threshold": _json_number(float(thresholds[-1])),
        "threshold_initial": _json_number(float(thresholds[0])),
        **costs(train_s, test_s, latencies),
        "fine_tunes": fine_tunes,
        "params": params,
    }
    log.info("bench_done", model=cfg.model, data=cfg.data, roc_auc=report["roc_auc"], pr_auc=report["pr_auc"])
    return BenchResult(report=report, scores=scores, truth=truth, thresholds=thresholds)


def online_settings(cfg: BenchConfig) -> OnlineSettings:
    """The service's fine-tuning defaults, with this run's interval and threshold mode."""
    return OnlineSettings(
        min_interval_steps=cfg.online_interval, pot_mode=cfg.pot_mode, dspot_depth=cfg.dspot_depth, pot_lag=cfg.pot_lag
    )


def fit_and_calibrate(model: AnomalyModel, train: np.ndarray, cfg: BenchConfig) -> tuple[PotState, np.ndarray, float]:
    """Fit on train, fit POT on the training scores; returns the POT state, those scores, the seconds.

    The seconds cover everything learnt from training data: the fit, scoring the training
    series and the POT fit.
    """
    started = time.perf_counter()
    model.fit(train)
    train_scores, train_contributions = model.score(train)
    _check_output(train_scores, train_contributions, train.shape)
    pot = fit_pot(train_scores, q=cfg.pot_q, level=cfg.pot_level)
    return pot, train_scores, time.perf_counter() - started


# How each threshold mode learns from the test scores it has seen: not at all (static POT), as
# SPOT from the fit on the training scores, or as DSPOT from a fit on their drift-free form.
STREAMS: dict[str, Callable[[PotState, np.ndarray, BenchConfig], StreamingPot | None]] = {
    "static": lambda pot, train_scores, cfg: None,
    "spot": lambda pot, train_scores, cfg: StreamingPot(pot, lag=cfg.pot_lag),
    "dspot": lambda pot, train_scores, cfg: _dspot(pot, train_scores, cfg),
}


def _dspot(pot: PotState, train_scores: np.ndarray, cfg: BenchConfig) -> StreamingPot:
    """DSPOT from the newest training scores the service keeps (``CALIBRATION_TAIL``), or, when
    they are too few for its moving average, SPOT from the fit on all of them, as the service does."""
    train_scores = train_scores[-CALIBRATION_TAIL:]
    if not usable_drift_depth(len(train_scores), cfg.dspot_depth):
        return STREAMS["spot"](pot, train_scores, cfg)
    return StreamingPot.calibrate(train_scores, cfg.pot_q, cfg.pot_level, cfg.dspot_depth, cfg.pot_lag)


def offline_thresholds(
    pot: PotState, train_scores: np.ndarray, scores: np.ndarray, cfg: BenchConfig
) -> tuple[np.ndarray, PotState]:
    """The threshold in force at each test step (T',), and the POT fit the first one came from.

    Learnt from the training scores and (streaming) the test scores seen *before* each step,
    never from the labels.
    """
    stream = STREAMS[cfg.pot_mode](pot, train_scores, cfg)
    if stream is None:
        return np.full(len(scores), pot.z_q), pot
    start = stream.tail  # run() refits into new states and leaves this one as it was
    return stream.run(scores), start


def step_latencies_ms(model: AnomalyModel, train: np.ndarray, test: np.ndarray, samples: int) -> np.ndarray:
    """Milliseconds to score one test step (one window) with its history, for evenly spaced steps.

    This is what a streaming detector pays per new sample, unlike ``test_s / T'`` which hides
    per-call overhead behind batching.
    """
    context = model.context
    # The training rows a test step may look back on: all of them when there are fewer than context.
    before = train[max(len(train) - context, 0) :] if context else train[:0]
    full = np.concatenate([before, test])  # (P + T', D)
    steps = len(before) + np.unique(np.linspace(0, len(test) - 1, samples).round().astype(int))
    for at in steps[:LATENCY_WARMUP]:
        _score_step(model, full, context, at)
    latencies = []
    for at in steps:
        started = time.perf_counter()
        _score_step(model, full, context, at)
        latencies.append((time.perf_counter() - started) * 1000.0)
    return np.asarray(latencies)


def _score_step(model: AnomalyModel, full: np.ndarray, context: int, at: int) -> None:
    """Score row ``at`` of ``full`` alone, with the ``context`` rows before it (fewer at the start)."""
    history = full[max(at - context, 0) : at] if context else None
    model.score(full[at : at + 1], history=history)


def quality(
    scores: np.ndarray, contributions: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray
) -> dict[str, Any]:
    """Every quality metric of the report; undefined values are None (JSON null).

    ``threshold`` is one value or one per step (streaming POT).
    """
    truth = metrics.step_truth(labels)
    predicted = scores >= threshold
    point = metrics.precision_recall_f1(predicted, truth)
    adjusted = metrics.point_adjusted_prf(predicted, truth)
    delay = metrics.detection_delay(predicted, truth)
    per_dimension = labels.ndim == 2 and labels.shape[1] > 1
    values = {
        "f1_pa": adjusted.f1,
        "precision_pa": adjusted.precision,
        "recall_pa": adjusted.recall,
        "f1": point.f1,
        "precision": point.precision,
        "recall": point.recall,
        "f1_pa_k_auc": metrics.f1_pa_k_auc(predicted, truth),
        "roc_auc": metrics.roc_auc(scores, truth),
        "pr_auc": metrics.average_precision(scores, truth),
        **relative_aucs(scores, truth, threshold),
        "f1_best_diagnostic": metrics.best_f1(scores, truth),
        "detection_delay_steps": delay.median_steps,
        "segments_detected": delay.detected,
        "segments_missed": delay.missed,
        "false_alarms_per_1000_steps": metrics.false_alarms_per_1000_steps(predicted, truth),
        "hit_rate_100": metrics.hit_rate_at(contributions, labels) if per_dimension else None,
        "ndcg_100": metrics.ndcg_at(contributions, labels) if per_dimension else None,
        "alarms": int(predicted.sum()),
        "anomaly_rate": float(truth.mean()),
    }
    return {key: _json_number(value) for key, value in values.items()}


def relative_aucs(scores: np.ndarray, truth: np.ndarray, threshold: float | np.ndarray) -> dict[str, float | None]:
    """ROC-AUC and PR-AUC of score / threshold in force: what an alarm compares, where the threshold moves.

    A streaming threshold or a fine-tuned model changes the scale scores are judged on during the
    series; the raw scores' AUCs then also rate how comparable the scales are. With one static
    threshold these equal ``roc_auc`` and ``pr_auc``. None where a threshold is not positive.
    """
    threshold = np.broadcast_to(np.asarray(threshold, dtype=np.float64), scores.shape)
    if not (threshold > 0).all():
        return {"roc_auc_relative": None, "pr_auc_relative": None}
    relative = scores / threshold
    return {
        "roc_auc_relative": metrics.roc_auc(relative, truth),
        "pr_auc_relative": metrics.average_precision(relative, truth),
    }


def costs(train_s: float, test_s: float, latencies_ms: np.ndarray) -> dict[str, float]:
    """The cost fields every benchmark report carries: seconds, peak memory, step latency percentiles."""
    return {
        "train_s": round(train_s, 6),
        "test_s": round(test_s, 6),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "anon_rss_mb": round(anon_rss_mb(), 1),
        "step_latency_ms_p50": round(float(np.percentile(latencies_ms, 50)), 4),
        "step_latency_ms_p99": round(float(np.percentile(latencies_ms, 99)), 4),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB).

    It covers the whole bench process, including the libraries it imports (torch among them,
    through the data loader), so it bounds a model's own footprint from above.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def anon_rss_mb() -> float:
    """This process's anonymous resident memory now (``RssAnon``), in MiB; NaN where Linux does not say.

    The memory the process itself allocated, without the file-backed pages of the libraries it
    maps (about 96 MiB of torch's, shared with every other torch process and reclaimable). The
    detector service's memory in docs/benchmarks.md is measured this way, from its cgroup. Read
    at the end of the bench, when the model's and torch's allocations are all made.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _check_output(scores: np.ndarray, contributions: np.ndarray, shape: tuple[int, ...]) -> None:
    """A model that breaks the interface must fail loudly, not produce a plausible report."""
    if scores.shape != shape[:1] or contributions.shape != shape:
        raise ValueError(f"model returned scores {scores.shape} and contributions {contributions.shape} for {shape}")
    if not np.isfinite(scores).all():
        raise ValueError("model returned NaN or infinite scores")


def _params(
    cfg: BenchConfig, model: AnomalyModel, pot: PotState, train: np.ndarray, test: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Everything needed to rerun and to interpret the numbers."""
    return {
        "model": cfg.model,
        "model_config": model.describe(),
        "seed": cfg.seed,
        "pot": {
            "mode": cfg.pot_mode,
            "dspot_depth": cfg.dspot_depth if cfg.pot_mode == "dspot" else None,
            "lag": cfg.pot_lag if cfg.pot_mode != "static" else None,
            "q": pot.q,
            "level": pot.level,
            "calibration_scores": pot.n,  # training scores the fit is on (for DSPOT, their drift-free form)
            "t": pot.t,
            "method": pot.method,
            "n_peaks": pot.n_peaks,
        },
        "online": dataclasses.asdict(online_settings(cfg)) if cfg.online else None,
        "data": str(Path(cfg.data).resolve()),
        "train_shape": list(train.shape),
        "test_shape": list(test.shape),
        "labels_shape": list(labels.shape),
        "latency_warmup": LATENCY_WARMUP,
        **run_environment(),
    }


def run_environment() -> dict[str, Any]:
    """Where and when a benchmark ran: what its timings, and its scores, depend on besides the data."""
    return {
        "torch_threads": torch.get_num_threads(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # the machine is shared: timings depend on it
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        # The vector instructions torch's CPU kernels use (AVX2, AVX512…): sums come out in another
        # order on another CPU, so a trained model, and its scores, differ a little between machines.
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _json_number(value: Any) -> Any:
    """NaN becomes None: JSON has no NaN, and a metric that is undefined should say so."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_outputs(result: BenchResult, out: str | Path, plot: str | None, plotter: Plotter | None) -> dict[str, str]:
    """Write the JSON report, the scores as ``RESULT.scores.npy`` beside it, and the plot."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scores_file = scores_path(out)
    np.save(scores_file, result.scores)
    out.write_text(json.dumps(result.report, indent=2, allow_nan=False) + "\n")
    files = {"out": str(out), "scores": str(scores_file)}
    if plot is not None and plotter is not None:
        params = result.report["params"]
        title = f"{params['model']} on {Path(params['data']).name}"
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        plotter(Path(plot), result.scores, result.thresholds, result.truth, title)
        files["plot"] = str(plot)
    return files


def scores_path(out: Path) -> Path:
    """RESULT.json -> RESULT.scores.npy, beside the report."""
    return out.with_name(f"{out.stem if out.suffix == '.json' else out.name}.scores.npy")


Plotter = Callable[[Path, np.ndarray, np.ndarray, np.ndarray, str], None]


def plotter_for(path: str | None) -> Plotter | None:
    """The writer for the plot's file type, checked before any training so a bad path fails fast."""
    if path is None:
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in PLOTTERS:
        raise ValueError(f"--plot {path}: unsupported file type {suffix!r}; use .svg or .png")
    if suffix == ".png" and importlib.util.find_spec("matplotlib") is None:
        raise ValueError(f"--plot {path}: a .png needs matplotlib, which is not installed; use a path ending in .svg")
    return PLOTTERS[suffix]


def write_svg(path: Path, scores: np.ndarray, thresholds: np.ndarray, truth: np.ndarray, title: str) -> None:
    """A self-contained SVG: scores on a symmetric log scale, the threshold, labelled segments shaded.

    The scale is sign(s) log10(1 + |s|) because scores of one run span many decades (a z-score
    of 1e7 next to a threshold of 5), and a linear axis would flatten everything but the peak.
    A streaming threshold (SPOT, DSPOT, on-line) is drawn as it moved, step by step.
    """
    steps = len(scores)
    x, y = _envelope(_symlog(scores))
    t_x, t_y = _range_envelope(_symlog(thresholds))
    lo, hi = min(y.min(), t_y.min()), max(y.max(), t_y.max())
    width, height, margin = SVG_WIDTH, SVG_HEIGHT, SVG_MARGIN
    frame = Frame(width, height, margin, steps, lo, hi)
    px, py = frame.x, frame.y

    shaded = "".join(
        f'<rect x="{px(start):.1f}" y="{margin}" width="{max(px(stop - 1) - px(start), 1.0):.1f}" '
        f'height="{height - 2 * margin}" fill="#f4a582" fill-opacity="0.4"/>'
        for start, stop in metrics.segments(truth)
    )
    points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, y, strict=True))
    if _moves(thresholds):
        threshold_points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(t_x, t_y, strict=True))
        threshold_text = f"threshold per step, {thresholds[-1]:.4g} at the end (dashed)"
    else:
        threshold_points = f"{margin},{py(t_y[0]):.1f} {width - margin},{py(t_y[0]):.1f}"
        threshold_text = f"threshold {thresholds[0]:.4g} (dashed)"
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'
        f'<rect width="{width}" height="{height}" fill="white"/>{shaded}'
        f'<polyline points="{points}" fill="none" stroke="#2166ac" stroke-width="0.8"/>'
        f'<polyline class="threshold" points="{threshold_points}" fill="none" stroke="#b2182b" '
        f'stroke-dasharray="4 3"/>'
        f'<text x="{margin}" y="20">{escape(title)}: score (symlog), {threshold_text}, '
        f"labelled segments shaded</text>"
        f'<text x="{margin}" y="{height - 12}">step 0</text>'
        f'<text x="{width - margin}" y="{height - 12}" text-anchor="end">step {steps - 1}</text>'
        f'<text x="{margin - 4}" y="{py(hi) + 4:.1f}" text-anchor="end">{_unsymlog(hi):.3g}</text>'
        f'<text x="{margin - 4}" y="{py(lo) + 4:.1f}" text-anchor="end">{_unsymlog(lo):.3g}</text>'
        "</svg>\n"
    )


def write_png(path: Path, scores: np.ndarray, thresholds: np.ndarray, truth: np.ndarray, title: str) -> None:
    """The same plot with matplotlib, which is optional: only used when it is installed."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3.5))
    for start, stop in metrics.segments(truth):
        ax.axvspan(start, stop - 1, color="#f4a582", alpha=0.4, linewidth=0)
    ax.plot(scores, color="#2166ac", linewidth=0.8)
    if _moves(thresholds):
        ax.plot(thresholds, color="#b2182b", linestyle="--", drawstyle="steps-post")
    else:
        ax.axhline(thresholds[0], color="#b2182b", linestyle="--")
    ax.set_yscale("symlog")
    ax.set_title(title)
    ax.set_xlabel("test step")
    ax.set_ylabel("score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PLOTTERS: dict[str, Plotter] = {".svg": write_svg, ".png": write_png}


def _moves(thresholds: np.ndarray) -> bool:
    """Whether the threshold changed during the run (streaming POT) or stayed one value."""
    return bool(np.any(thresholds != thresholds[0]))


def _symlog(values: np.ndarray | float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.sign(values) * np.log10(1.0 + np.abs(values))


def _unsymlog(value: float) -> float:
    return float(np.sign(value) * (10.0 ** abs(value) - 1.0))


def _envelope(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most SVG_MAX_POINTS (step, value) pairs: the maximum of equal buckets of steps.

    For scores: a peak stays visible however long the run.
    """
    if len(values) <= SVG_MAX_POINTS:
        return np.arange(len(values), dtype=np.float64), values
    centres, starts = _buckets(len(values), SVG_MAX_POINTS)
    return centres, np.maximum.reduceat(values, starts)


def _range_envelope(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most SVG_MAX_POINTS (step, value) pairs: each bucket's minimum, then its maximum.

    For a threshold: drawn by its maxima alone, one that dipped for a few steps (where alarms
    came) would look as if it had not; the line now spans each bucket's whole range.
    """
    if len(values) <= SVG_MAX_POINTS:
        return np.arange(len(values), dtype=np.float64), values
    centres, starts = _buckets(len(values), SVG_MAX_POINTS // 2)
    lows, highs = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
    return np.repeat(centres, 2), np.column_stack([lows, highs]).ravel()


def _buckets(steps: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` equal buckets of ``steps`` steps: each one's centre step and first step."""
    edges = np.linspace(0, steps, count + 1).astype(int)
    return (edges[:-1] + edges[1:] - 1) / 2.0, edges[:-1]
