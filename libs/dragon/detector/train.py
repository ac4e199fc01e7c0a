"""From a raw series of normal operation to a checkpoint: scale, window, train, calibrate POT.

POT is calibrated on the fault scores of the training series itself, never on test data, so
the threshold only encodes what normal operation looks like.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn

from dragon.detector.checkpoint import DEFAULT_HOST, Checkpoint
from dragon.detector.gon import GonConfig, make_windows, score_series, train_gon
from dragon.detector.pot import DEFAULT_LEVEL, DEFAULT_Q, fit_pot
from dragon.detector.scaling import MinMaxScaler

log = structlog.get_logger(__name__)

# Newest training scores kept in the checkpoint, from which a service calibrates DSPOT with its
# own depth: about 80 peaks at level 0.98, and about 37 kB.
CALIBRATION_TAIL = 4096


class DatasetError(ValueError):
    """A data set folder or file is missing or malformed; the message names the file."""


def train_from_series(
    series: np.ndarray | Sequence[np.ndarray],
    feature_names: Sequence[str],
    cfg: GonConfig | None = None,
    *,
    min_span: float | Sequence[float] | np.ndarray,
    pot_q: float = DEFAULT_Q,
    pot_level: float = DEFAULT_LEVEL,
    progress: bool = False,
    source: str = "",
) -> Checkpoint:
    """Train a detector on raw normal operation and return its checkpoint.

    ``series`` is one (T, n) array, or several (one per host, say) that share one scaler and
    one model but are windowed and scored separately, so no window spans two of them.
    ``min_span`` is the smallest span per feature, in the series' own units (see
    :meth:`MinMaxScaler.fit`); it has no default because only the caller knows the units.
    ``cfg`` defaults to ``GonConfig(n_features=n)``. ``source`` is recorded in the metadata.
    """
    parts = _series_list(series, feature_names)
    cfg = cfg or GonConfig(n_features=len(feature_names))
    if cfg.n_features != len(feature_names):
        raise ValueError(f"config has n_features={cfg.n_features} but the series has {len(feature_names)}")
    started = time.perf_counter()
    scaler = MinMaxScaler.fit(np.concatenate(parts), min_span)
    scaled = [scaler.transform(part).astype(np.float32) for part in parts]  # each (T_i, n)
    windows = np.concatenate([make_windows(part, cfg.window) for part in scaled])  # (N, k, n)
    model, history = train_gon(windows, cfg, progress=progress)
    scores = np.concatenate([score_series(model, cfg, part)[0] for part in scaled])  # (N,)
    seconds = time.perf_counter() - started
    bounds = scaler.to_dict()
    checkpoint = calibrated_checkpoint(
        model,
        cfg,
        feature_names,
        bounds["lo"],
        bounds["hi"],
        scores,
        pot_q=pot_q,
        pot_level=pot_level,
        meta=training_meta(source, len(scores), seconds, history, scores),
    )
    pot = checkpoint.pot_state()
    log.info(
        "detector_trained",
        model_id=checkpoint.model_id,
        samples=int(len(scores)),
        series=len(parts),
        features=len(feature_names),
        seconds=round(seconds, 2),
        threshold=pot.z_q,
        pot_method=pot.method,
    )
    return checkpoint


def calibrated_checkpoint(
    model: nn.Module,
    cfg: GonConfig,
    feature_names: Sequence[str],
    lo: Sequence[float],
    hi: Sequence[float],
    scores: np.ndarray,
    *,
    pot_q: float,
    pot_level: float,
    meta: dict[str, Any],
) -> Checkpoint:
    """The checkpoint of ``model`` with POT fitted on its ``scores`` of normal operation.

    ``scores`` (N,) are in the order they were scored; the newest become ``calibration_tail``.
    Shared by training and on-line fine-tuning (``finetune.py``).
    """
    pot = fit_pot(scores, q=pot_q, level=pot_level)
    return Checkpoint(
        gon=cfg.to_dict(),
        state_dict={key: value.detach().clone() for key, value in model.state_dict().items()},
        feature_names=tuple(feature_names),
        lo=list(lo),
        hi=list(hi),
        pot={DEFAULT_HOST: pot.to_dict()},
        meta=meta,
        calibration_tail=np.asarray(scores)[-CALIBRATION_TAIL:].tolist(),
    )


def _series_list(series: np.ndarray | Sequence[np.ndarray], feature_names: Sequence[str]) -> list[np.ndarray]:
    """One or several finite (T_i, n) float64 arrays with n == len(feature_names)."""
    if isinstance(series, np.ndarray) and series.ndim == 2:
        parts = [series]
    else:
        parts = list(series)
    parts = [np.asarray(part, dtype=np.float64) for part in parts]
    n = len(feature_names)
    for index, part in enumerate(parts):
        if part.ndim != 2 or part.shape[0] == 0 or part.shape[1] != n:
            raise ValueError(f"series {index}: expected (T, {n}) for {n} feature names, got shape {part.shape}")
        if not np.isfinite(part).all():
            raise ValueError(f"series {index}: contains NaN or infinite values")
    if sum(len(part) for part in parts) < 2:
        raise ValueError("need at least 2 time steps to train")
    return parts


def training_meta(source: str, samples: int, seconds: float, history: dict[str, Any], scores: np.ndarray) -> dict:
    """Provenance and a summary of training, plain types only (see Checkpoint)."""
    best = history["best_epoch"]

    def at_best(key: str) -> float | None:
        value = history[key][best]
        return None if value is None else float(value)

    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "train_samples": int(samples),
        "train_seconds": round(float(seconds), 3),
        "torch": str(torch.__version__),
        "history": {
            "epochs_run": int(history["epochs_run"]),
            "best_epoch": int(best),
            "best_val_loss": float(history["best_val_loss"]),
            "val_d_real": at_best("val_d_real"),
            "val_d_gen": at_best("val_d_gen"),
            "train_loss": [float(v) for v in history["train_loss"]],
            "val_loss": [float(v) for v in history["val_loss"]],
        },
        "train_scores": {
            "mean": float(scores.mean()),
            "p99": float(np.quantile(scores, 0.99)),
            "max": float(scores.max()),
        },
    }


def load_dataset_dir(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read a folder shaped like FTSAD: train.npy [T, D], optional test.npy [T', D] and labels.npy.

    labels.npy is [T', D] (per dimension) or [T'] and needs test.npy; it is returned as int8
    0/1. train and test are returned as float64. Any problem raises :class:`DatasetError`
    naming the file: missing, unreadable, not numeric, wrong rank, empty, NaN/inf, mismatched
    D or T', labels other than 0/1.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    train_file, test_file, labels_file = root / "train.npy", root / "test.npy", root / "labels.npy"
    if not train_file.exists():
        raise DatasetError(f"{train_file}: missing")
    train = _load_matrix(train_file)
    test = _load_matrix(test_file) if test_file.exists() else None
    if test is not None and test.shape[1] != train.shape[1]:
        raise DatasetError(f"{test_file}: {test.shape[1]} dimensions, train.npy has {train.shape[1]}")
    if not labels_file.exists():
        return train, test, None
    if test is None:
        raise DatasetError(f"{labels_file}: labels without test.npy")
    return train, test, _load_labels(labels_file, test)


def _load_array(file: Path) -> np.ndarray:
    try:
        array = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: a file of zero bytes
        raise DatasetError(f"{file}: cannot be read as a .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{file}: expected a single .npy array, got {type(array).__name__}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DatasetError(f"{file}: dtype {array.dtype} is not numeric")
    if array.size == 0:
        raise DatasetError(f"{file}: empty array of shape {array.shape}")
    if not np.isfinite(array).all():
        raise DatasetError(f"{file}: contains NaN or infinite values")
    return array


def load_npy(file: Path, ndim: int) -> np.ndarray:
    """A finite, non-empty numeric array of rank ``ndim`` from ``file`` as float64; DatasetError naming it."""
    if not file.exists():
        raise DatasetError(f"{file}: missing")
    array = _load_array(file)
    if array.ndim != ndim:
        raise DatasetError(f"{file}: expected {ndim} dimensions, got shape {array.shape}")
    return array.astype(np.float64)


def _load_matrix(file: Path) -> np.ndarray:
    return load_npy(file, ndim=2)


def _load_labels(file: Path, test: np.ndarray) -> np.ndarray:
    labels = _load_array(file)
    if labels.ndim not in (1, 2) or labels.shape[0] != test.shape[0]:
        raise DatasetError(
            f"{file}: expected [{test.shape[0]}] or [{test.shape[0]}, {test.shape[1]}], got {labels.shape}"
        )
    if labels.ndim == 2 and labels.shape[1] != test.shape[1]:
        raise DatasetError(f"{file}: {labels.shape[1]} dimensions, test.npy has {test.shape[1]}")
    if not np.isin(labels, (0, 1)).all():
        raise DatasetError(f"{file}: labels must be 0 or 1")
    return labels.astype(np.int8)
