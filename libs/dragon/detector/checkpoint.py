"""A self-describing detector checkpoint: everything needed to score, in one file or blob.

A checkpoint carries the config that builds the model next to its weights, the feature names
and scaler bounds the weights were trained on, and the POT thresholds, so a detector service
needs nothing else to turn raw metrics into fault labels. It is written with ``torch.save``
and read with ``torch.load(weights_only=True)``: only tensors and plain Python types are in the
file, so loading one can never run code. ``to_bytes`` gives the same format in memory (for
Redis).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import Tensor, nn

from dragon.detector.gon import GonConfig, build_discriminator
from dragon.detector.pot import PotState, StreamingPot, usable_drift_depth
from dragon.detector.scaling import MinMaxScaler

log = structlog.get_logger(__name__)

FORMAT = "dragon-detector-checkpoint"
VERSION = 1
# Which DRAGON wrote a checkpoint, as a count that only grows. Raise it with any change after which
# the code before cannot use what this code writes: a new GonConfig key, other host metrics, a new
# VERSION, a new POT state field (tests/unit/test_checkpoint.py pins what it stands for), a torch
# whose files the torch of the code before cannot read (the images pin torch). A replica
# that cannot use its LEI's model tells by it whether a newer DRAGON wrote the model (a rolling
# upgrade: the replicas of that version serve it) or not (corrupt, or an older DRAGON's: nobody
# will; learn anew). Redis keeps it beside the model (modelstore.StoredModel).
GENERATION = 1
DEFAULT_HOST = "*"  # key of the POT state that applies to every host without its own


class CheckpointError(ValueError):
    """A checkpoint is malformed, of another format or version, or inconsistent."""


@dataclass(eq=False)  # tensors inside: compare model_id or to_bytes() instead
class Checkpoint:
    """Config, weights, feature names, scaler bounds, POT states and provenance of one model."""

    gon: dict[str, Any]  # GonConfig.to_dict()
    state_dict: dict[str, Tensor]  # Discriminator weights, on CPU
    feature_names: tuple[str, ...]  # n names, in column order
    lo: list[float]  # scaler minimum per feature
    hi: list[float]  # scaler maximum (lo + span) per feature
    pot: dict[str, dict[str, Any]]  # PotState.to_dict() by host; "*" is the default
    meta: dict[str, Any] = field(default_factory=dict)  # created_at, source, train_seconds, history
    # The newest calibration (training) scores in the order they were scored, so a service can
    # calibrate DSPOT with its own depth; empty in checkpoints written before this field.
    calibration_tail: list[float] = field(default_factory=list)
    generation: int = GENERATION  # of the DRAGON that wrote it; 0: before the field

    def __post_init__(self) -> None:
        self.feature_names = tuple(str(name) for name in self.feature_names)
        self.lo = [float(v) for v in self.lo]
        self.hi = [float(v) for v in self.hi]
        self.calibration_tail = [float(v) for v in self.calibration_tail]
        self.state_dict = {key: value.detach().cpu().clone() for key, value in self.state_dict.items()}
        try:
            n = GonConfig.from_dict(self.gon).n_features
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"bad gon config: {exc}") from exc
        if not len(self.feature_names) == len(self.lo) == len(self.hi) == n:
            raise CheckpointError(
                f"{n} features in the config but {len(self.feature_names)} names, {len(self.lo)} lo, {len(self.hi)} hi"
            )
        if DEFAULT_HOST not in self.pot:
            raise CheckpointError(f"pot needs a default state under {DEFAULT_HOST!r}")
        _require_plain(self.pot, "pot")
        _require_plain(self.meta, "meta")
        if type(self.generation) is not int or self.generation < 0:
            raise CheckpointError(f"generation must be a whole number >= 0, got {self.generation!r}")
        for host in self.pot:
            try:  # now, not at the first score: a state a newer DRAGON wrote fails every batch
                self.pot_state(host)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"pot state of {host!r}: {exc}") from exc

    @property
    def config(self) -> GonConfig:
        return GonConfig.from_saved(self.gon)

    # Computed once: a replica compares its model's id and revision with Redis's every few
    # seconds, and a checkpoint is not changed once built (dataclasses.replace makes a new one).
    @functools.cached_property
    def model_id(self) -> str:
        """12 hex digits of a SHA-256 over the config and the weights, so events can name the model.

        Hashes tensor contents, not the serialised file, so it is the same wherever and
        whenever the checkpoint is saved, and changes with any weight.
        """
        digest = hashlib.sha256(json.dumps(self.gon, sort_keys=True).encode())
        for key in sorted(self.state_dict):
            tensor = self.state_dict[key].contiguous()
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:12]

    @functools.cached_property
    def revision(self) -> str:
        """12 hex digits of a SHA-256 over the model id and what judges with the weights: feature
        names, scaler bounds, POT states and calibration scores.

        A model recalibrated with the same weights (retrained with the same seed and data but
        another ``--pot-q``, say) keeps its :attr:`model_id`, under which events, gate floors and
        stored thresholds name it, but not its revision, by which replicas notice the change
        (``modelstore.StoredModel.names``). Not in the id itself: every stored model's id would
        change at an upgrade, and replicas of the two versions would take each other's for new.
        """
        judging = [self.feature_names, self.lo, self.hi, self.pot, self.calibration_tail]
        digest = hashlib.sha256(self.model_id.encode())
        digest.update(json.dumps(judging, sort_keys=True).encode())
        return digest.hexdigest()[:12]

    def build_model(self) -> nn.Module:
        """The discriminator D with these weights, in eval mode."""
        model = build_discriminator(self.config)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit the config: {exc}") from exc
        return model.eval()

    def scaler(self) -> MinMaxScaler:
        return MinMaxScaler(lo=self.lo, hi=self.hi)

    def pot_state(self, host: str = DEFAULT_HOST) -> PotState:
        """The host's own POT state if it has one, else the default."""
        return PotState.from_dict(self._pot_of(host))

    def pot_risk(self, host: str = DEFAULT_HOST) -> tuple[float, float]:
        """The risk q and initial quantile of :meth:`pot_state`, without reading its peaks (on every batch)."""
        state = self._pot_of(host)
        return float(state["q"]), float(state["level"])

    def _pot_of(self, host: str) -> dict[str, Any]:
        return self.pot.get(host, self.pot[DEFAULT_HOST])

    def usable_drift_depth(self, depth: int) -> int:
        """``depth`` if DSPOT can start from this checkpoint's calibration scores, else 0 (SPOT).

        DSPOT calibrates on more than ``depth`` of the newest calibration scores: checkpoints
        written before that field have none, and a fine-tune learnt from few windows has few.
        """
        return usable_drift_depth(len(self.calibration_tail), depth, model_id=self.model_id)

    def streaming_pot(self, host: str = DEFAULT_HOST, depth: int = 0, lag: int = 0) -> StreamingPot:
        """Where ``host``'s streaming threshold starts under this model: SPOT, or DSPOT if ``depth`` > 0.

        DSPOT starts from the newest training scores (``calibration_tail``), its drift-free form;
        pass a depth :meth:`usable_drift_depth` allows. ``lag``: see :class:`StreamingPot`. A new
        object each call.
        """
        pot = self.pot_state(host)
        if not depth:
            return StreamingPot(pot, lag=lag)
        tail = np.asarray(self.calibration_tail)
        return StreamingPot.calibrate(tail, q=pot.q, level=pot.level, depth=depth, lag=lag)

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file, then rename) so a reader never sees half a file."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(self._payload(), handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        with open(path, "rb") as handle:
            return cls._from_payload(_torch_load(handle, str(path)))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self._payload(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        return cls._from_payload(_torch_load(io.BytesIO(data), "bytes"))

    def _payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "gon": dict(self.gon),
            "state_dict": dict(self.state_dict),
            "feature_names": list(self.feature_names),
            "lo": list(self.lo),
            "hi": list(self.hi),
            "pot": self.pot,
            "meta": self.meta,
            "calibration_tail": list(self.calibration_tail),
            "generation": self.generation,
        }

    @classmethod
    def _from_payload(cls, payload: Any) -> Checkpoint:
        if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
            raise CheckpointError(f"not a {FORMAT}")
        if payload.get("version") != VERSION:
            raise CheckpointError(f"checkpoint version {payload.get('version')!r}, this code reads {VERSION}")
        keys = ("gon", "state_dict", "feature_names", "lo", "hi", "pot", "meta")
        missing = [key for key in keys if key not in payload]
        if missing:
            raise CheckpointError(f"checkpoint lacks {missing}")
        # Optional: older checkpoints of the same version lack it.
        tail = payload.get("calibration_tail", [])
        generation = payload.get("generation", 0)  # 0: written before the field
        return cls(**{key: payload[key] for key in keys}, calibration_tail=tail, generation=generation)


def _torch_load(handle: Any, source: str) -> Any:
    try:
        return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike for a bad file
        if short_of_memory(exc):
            raise  # this machine's trouble, maybe not the checkpoint's (following.py)
        raise CheckpointError(f"cannot read checkpoint from {source}: {exc}") from exc


def short_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says this machine ran out of memory (Python's, or torch's CPU allocator)."""
    return isinstance(error, MemoryError) or "can't allocate memory" in str(error)


def _require_plain(value: Any, where: str) -> None:
    """Fail at construction, not at load time, if a value would not survive weights_only."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where}: keys must be strings, got {key!r}")
            _require_plain(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _require_plain(item, f"{where}[{index}]")
    elif not (value is None or type(value) in (str, int, float, bool)):
        raise CheckpointError(f"{where}: {type(value).__name__} is not a plain type (str, int, float, bool, None)")
