"""Anomaly models the benchmark compares, behind one small interface and one registry.

Every model is built by :func:`create_model` from its registered name, a seed and a plain
dict of settings (checked against the model's dataclass config, so a typo is an error), and
answers two calls:

- ``fit(train)``: learn normal operation from a (T, D) series;
- ``score(series, history=None)``: per-step scores (T,) and per-dimension contributions
  (T, D) of a (T, D) series. ``history`` holds the rows that came just before ``series``;
  only its last ``context`` rows are used, to give the first windows real data. Nothing in
  ``history`` is scored.

The registry is the one place a model is chosen; the paper's topology-aware model joins it
with ``@register_model("name")`` and the bench needs no change.

Contributions rank the dimensions behind a score (HitRate/NDCG); only their order matters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog
import torch

from dragon.detector.checkpoint import DEFAULT_HOST, Checkpoint
from dragon.detector.gon import SCORE_BATCH, Discriminator, GonConfig, fault_scores, make_windows
from dragon.detector.online import OnlineRun, OnlineSettings, score_online
from dragon.detector.pot import PotState
from dragon.detector.scaling import DATASET_MIN_SPAN, MinMaxScaler
from dragon.detector.train import train_from_series
from dragon.records import check_known_keys

log = structlog.get_logger(__name__)


class AnomalyModel(Protocol):
    """What the benchmark needs from a model; see the module docstring for the contract."""

    context: int  # rows of history a step's score depends on, besides the step itself

    def fit(self, train: np.ndarray) -> None: ...

    def score(self, series: np.ndarray, history: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


ModelFactory = Callable[[Mapping[str, Any], int], AnomalyModel]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Class decorator: make a model available to :func:`create_model` under ``name``."""

    def register(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return register


def create_model(name: str, seed: int = 0, **params: Any) -> AnomalyModel:
    """The registered model ``name``, configured by ``params`` (its config's fields) and ``seed``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](params, seed)


def _config(cls: type, params: Mapping[str, Any]) -> Any:
    """Build a config dataclass from plain params; unknown keys are an error, not ignored."""
    check_known_keys(cls, params)
    return cls(**params)


def _checked(series: np.ndarray, n_features: int | None = None) -> np.ndarray:
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 2 or series.shape[0] == 0:
        raise ValueError(f"expected a non-empty (T, D) series, got shape {series.shape}")
    if n_features is not None and series.shape[1] != n_features:
        raise ValueError(f"model was fitted on {n_features} dimensions, got {series.shape[1]}")
    if not np.isfinite(series).all():
        raise ValueError("series contains NaN or infinite values")
    return series


def _tail(history: np.ndarray | None, rows: int, n_features: int) -> np.ndarray:
    """The last ``rows`` rows of ``history`` (fewer if it is shorter), (P, D); none without history."""
    if history is None or len(history) == 0 or rows == 0:
        return np.empty((0, n_features))
    return _checked(history, n_features)[-rows:]


@dataclass(frozen=True)
class RandomConfig:
    """No settings: scores are uniform on [0, 1), independent of the data."""


@register_model("random")
class RandomModel:
    """Chance reference: seeded uniform scores and contributions (ROC-AUC ~0.5, AP ~ anomaly rate)."""

    context = 0

    def __init__(self, params: Mapping[str, Any], seed: int) -> None:
        self.config = _config(RandomConfig, params)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._n_features: int | None = None

    def fit(self, train: np.ndarray) -> None:
        self._n_features = _checked(train).shape[1]
        self._rng = np.random.default_rng(self.seed)  # refitting replays the same draws

    def score(self, series: np.ndarray, history: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        series = _checked(series, self._n_features)
        return self._rng.random(series.shape[0]), self._rng.random(series.shape)

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


# Aggregations of per-dimension |z| into one score per step; "max" is the default because one
# faulty metric among many is the usual fault, and a mean would dilute it by D.
Z_AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max": lambda z: z.max(axis=1),
    "mean": lambda z: z.mean(axis=1),
}


@dataclass(frozen=True)
class ZScoreConfig:
    """Per-dimension z-score against the training mean and standard deviation."""

    std_floor: float = 1e-3  # smallest std, in data units: FTSAD is scaled to [0, 1] and many
    # dimensions are constant in training; without a floor their first change is infinite
    aggregate: str = "max"  # how |z| of the D dimensions becomes one score: a key of Z_AGGREGATES

    def __post_init__(self) -> None:
        if not self.std_floor > 0:
            raise ValueError(f"ZScoreConfig.std_floor must be > 0, got {self.std_floor}")
        if self.aggregate not in Z_AGGREGATES:
            raise ValueError(f"ZScoreConfig.aggregate must be one of {sorted(Z_AGGREGATES)}, got {self.aggregate!r}")


@register_model("zscore")
class ZScoreModel:
    """Score = max over dimensions of |x - mean| / max(std, floor); contributions are the |z|."""

    context = 0

    def __init__(self, params: Mapping[str, Any], seed: int) -> None:
        self.config = _config(ZScoreConfig, params)
        self.mean = self.std = np.empty(0)

    def fit(self, train: np.ndarray) -> None:
        train = _checked(train)
        self.mean = train.mean(axis=0)
        self.std = np.maximum(train.std(axis=0), self.config.std_floor)

    def score(self, series: np.ndarray, history: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        z = np.abs(_checked(series, self.mean.size) - self.mean) / self.std  # (T, D)
        return Z_AGGREGATES[self.config.aggregate](z), z

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


@dataclass(frozen=True)
class PcaConfig:
    """PCA of the centred training data; the score is what the kept components cannot explain."""

    variance: float = 0.95  # keep the fewest components that explain this share of the variance

    def __post_init__(self) -> None:
        if not 0.0 < self.variance <= 1.0:
            raise ValueError(f"PcaConfig.variance must be in (0, 1], got {self.variance}")


@register_model("pca")
class PcaModel:
    """Squared reconstruction error after projecting on the principal subspace of training data.

    At most D - 1 components are kept so that a residual subspace always remains: with D = 1
    the score is the squared distance from the training mean. Contributions are the squared
    residual per dimension. Data are centred, not standardised: FTSAD is already scaled.
    """

    context = 0

    def __init__(self, params: Mapping[str, Any], seed: int) -> None:
        self.config = _config(PcaConfig, params)
        self.mean = np.empty(0)
        self.components = np.empty((0, 0))  # (k, D), orthonormal rows

    def fit(self, train: np.ndarray) -> None:
        train = _checked(train)
        self.mean = train.mean(axis=0)
        _, singular, vt = np.linalg.svd(train - self.mean, full_matrices=False)
        variance = singular**2
        total = variance.sum()
        if total > 0:
            explained = np.cumsum(variance) / total
            k = int(np.searchsorted(explained, self.config.variance - 1e-12) + 1)
        else:
            k = 0  # constant training data: nothing to project on
        self.components = vt[: min(k, train.shape[1] - 1)]
        log.debug("pca_fitted", components=int(self.components.shape[0]), dims=int(train.shape[1]))

    def score(self, series: np.ndarray, history: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        centred = _checked(series, self.mean.size) - self.mean  # (T, D)
        residual = centred - (centred @ self.components.T) @ self.components  # (T, D)
        contributions = residual**2
        return contributions.sum(axis=1), contributions

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config) | {"components": int(self.components.shape[0])}


@register_model("gon")
class GonModel:
    """The GON of ``dragon.detector.gon`` (by default the DRAGON model), trained and scored as the service does.

    ``params`` are :class:`GonConfig` fields (all but ``n_features``, which the data fix) plus
    ``min_span``, the scaler's smallest span per dimension. Its default, 0.1, rescales each
    dimension to its own training range (FTSAD ships scaled to [0, 1] as a whole, so a quiet
    dimension spans much less), while a dimension constant in training keeps a tenth of the
    unit instead of turning its first change into a huge value. Chosen on training data with
    ``scripts/select_on_train.py``: synthetic-fault ROC-AUC / PR-AUC on FTSAD-25 0.999 / 0.996
    with 0.1 (the same with 0.01) against 0.916 / 0.615 with 1.0. The seed is ``GonConfig.seed``.
    A step's score compares its window with the window generated from the previous one, so it
    depends on ``window`` rows of history: ``context = window``.
    """

    def __init__(self, params: Mapping[str, Any], seed: int) -> None:
        params = dict(params)
        self.min_span = float(params.pop("min_span", DATASET_MIN_SPAN))
        if "n_features" in params:
            raise ValueError("GonModel: n_features is set by the data, not by a parameter")
        self.overrides = params | {"seed": seed}
        # Built once now so a bad parameter fails before any data is loaded.
        self.context = GonConfig.from_dict({"n_features": 1, **self.overrides}).window
        self.cfg: GonConfig | None = None  # set by fit, when the data fix n_features
        self.checkpoint: Checkpoint | None = None  # set by fit; what on-line scoring fine-tunes
        self.model: Discriminator | None = None
        self.scaler: MinMaxScaler | None = None
        self.training_log: dict[str, Any] = {}  # epochs run, best epoch, losses

    def fit(self, train: np.ndarray | Sequence[np.ndarray]) -> None:
        """Train on one (T, D) series, or on several (one per host) that share the model and scaler."""
        parts = [_checked(part) for part in ([train] if isinstance(train, np.ndarray) else train)]
        self.cfg = GonConfig.from_dict({"n_features": parts[0].shape[1], **self.overrides})
        names = [f"dim{j}" for j in range(parts[0].shape[1])]
        self.checkpoint = train_from_series(parts, names, self.cfg, min_span=self.min_span, source="bench")
        self.model, self.scaler = self.checkpoint.build_model(), self.checkpoint.scaler()
        self.training_log = self.checkpoint.meta["history"]

    def score(self, series: np.ndarray, history: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        scores, contributions = self.score_many([series], [history])
        return scores[0], contributions[0]

    @torch.no_grad()
    def score_many(
        self, series: Sequence[np.ndarray], histories: Sequence[np.ndarray | None]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """:meth:`score` of several series (one per host) in shared batches, as the service scores a batch.

        Scores are batch-invariant (one Hutchinson probe per batch), so this only saves calls.
        """
        if self.cfg is None or self.model is None or self.scaler is None:
            raise RuntimeError("GonModel.score before fit")
        pairs = [self._windows(part, history) for part, history in zip(series, histories, strict=True)]
        previous = torch.cat([p for p, _ in pairs])  # (sum T, k, n)
        windows = torch.cat([w for _, w in pairs])
        scores, contributions = [], []
        for start in range(0, windows.shape[0], SCORE_BATCH):
            part = slice(start, start + SCORE_BATCH)
            s, c = fault_scores(self.model, previous[part], windows[part], self.cfg)
            scores.append(s)
            contributions.append(c)
        cuts = np.cumsum([len(w) for _, w in pairs])[:-1]
        return (
            np.split(torch.cat(scores).double().numpy(), cuts),
            np.split(torch.cat(contributions).double().numpy(), cuts),
        )

    def score_online(
        self,
        series: np.ndarray,
        history: np.ndarray | None,
        settings: OnlineSettings | None = None,
        pot: PotState | None = None,
    ) -> OnlineRun:
        """Score ``series`` one step at a time as the service does, fine-tuning when its gate fires.

        ``pot`` is the threshold the caller fitted on the training scores (the bench's risk and
        level); by default the one training fitted. The trained model is not changed:
        fine-tuning works on copies (``online.score_online``).
        """
        if self.checkpoint is None:
            raise RuntimeError("GonModel.score_online before fit")
        checkpoint = self.checkpoint
        if pot is not None:
            checkpoint = dataclasses.replace(checkpoint, pot={DEFAULT_HOST: pot.to_dict()})
        previous, windows = self._window_pairs(series, history, scaled=False)  # raw, as the service sees them
        return score_online(checkpoint, previous, windows, settings)

    def _windows(self, series: np.ndarray, history: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """W_{t-1} and W_t (T, k, n) of every step of ``series``, scaled, its history filling the first windows."""
        previous, windows = self._window_pairs(series, history, scaled=True)
        return torch.from_numpy(previous), torch.from_numpy(windows)

    def _window_pairs(
        self, series: np.ndarray, history: np.ndarray | None, scaled: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """W_{t-1} and W_t (T, k, n) float32 of every step of ``series``, scaled or in the data's units."""
        series = _checked(series, self.cfg.n_features)
        prefix = _tail(history, self.context, self.cfg.n_features)
        full = np.concatenate([prefix, series])  # (P+T, n)
        windows = make_windows(self.scaler.transform(full).astype(np.float32) if scaled else full, self.cfg.window)
        previous = np.concatenate([windows[:1], windows[:-1]])  # (P+T, k, n)
        # Only the series' own windows are generated: one scored step costs one window.
        return previous[len(prefix) :], windows[len(prefix) :]  # (T, k, n) each

    def describe(self) -> dict[str, Any]:
        cfg = self.cfg.to_dict() if self.cfg is not None else dict(self.overrides)
        cfg.pop("n_features", None)
        trained = {key: self.training_log[key] for key in ("epochs_run", "best_epoch") if key in self.training_log}
        return cfg | {"min_span": self.min_span} | trained
