"""A Generative Optimization Network (GON) over time-series windows, and its fault score.

A GON (Tuli et al., NeurIPS-W 2021; DRAGON, TNSM 2022, sec. IV-B/C) has no generator: one
discriminator ``D`` says how likely a window is to be real, and new windows are *generated* by
gradient ascent on ``log D`` in input space. DRAGON starts that ascent from the current window
(window initialisation, sec. IV-C) so the result ``Ŵ_{t+1}`` is the nearest window ``D`` finds
plausible; the fault score is how far the true next window rises above it (eq. 13).

``D`` is built by :func:`build_discriminator` from :data:`ARCHITECTURES`: ``mlp``, the first,
topology-free model (an MLP over the flattened window), or ``dragon``, the DRAGON paper's
topology- and schedule-aware network (:mod:`dragon.detector.federation_model`) seen from one
host. Generation (the ascent, Adam or AdaHessian) lives in :mod:`dragon.detector.generation`.

Shapes: ``B`` batch, ``k`` window length, ``n`` features, ``T`` time steps, ``N`` windows.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from dragon.detector.config import FAULT_SCORES, SCOPES
from dragon.detector.federation_model import DimensionsAsHosts, FederationConfig, SingleHostDiscriminator
from dragon.detector.generation import ASCENTS, Climbable, generate
from dragon.detector.optim import Adam
from dragon.records import check_known_keys

log = structlog.get_logger(__name__)

MLP_LAYERS = 2  # hidden layers of the first GON's D (architecture "mlp")

# Windows generated at once when scoring. It bounds memory; a window's score depends on its
# batch only through float rounding (about 1e-6; every window of a batch gets the same
# Hutchinson probe), and 128 and 512 give identical scores on the FTSAD sets. The double
# backward keeps a few dozen copies of a batch alive: on FTSAD-55 (windows of 10 x 55) the
# bench's peak was 300 / 288 / 285 MiB with 512 / 256 / 128 windows, for 0.2-0.3 s more over
# 2,264 test steps at 128; streaming scores one step at a time (docs/benchmarks.md, "Detector
# memory").
SCORE_BATCH = 128
# Windows per batch of the validation loss. The loss is summed batch by batch, so this changes
# its rounding, and with it, sometimes, the epoch early stopping keeps: fixed so results are.
VALIDATION_BATCH = 512


# What a checkpoint written before a GonConfig field existed was trained with.
SAVED_BEFORE_THE_KEY: dict[str, Any] = {
    "architecture": "mlp",
    "gen_optimizer": "adam",
    "gen_restart_every": 0,
    "generate_from": "previous",
    "score_rows": "window",
    "gen_box": False,
    "gen_init": "window",
    "scope": "host",
    "fault_score": "excess",
}


@dataclass(frozen=True)
class GonConfig:
    """Everything that builds and trains a GON; saved next to the weights in a checkpoint.

    Defaults were chosen on training data only, never on test labels: the validation loss and
    D(real) vs D(generated) on the held-out tail of the FTSAD train sets, and the ROC-AUC of
    fault scores against synthetic upward faults injected into that tail.

    - ``lr`` is 1e-3, not the papers' 1e-4: with 1e-4 the validation loss was still falling
      after 150 epochs on FTSAD-25 and -55 (~2 minutes for FTSAD-55 on 2 shared CPU cores) and
      on FTSAD-25 D still scored real and generated windows alike (0.50 / 0.50); 1e-3 gets
      further within the 60-epoch cap. The GON authors' code also uses 5e-4..8e-3.
    - ``gen_lr`` 0.05 and ``gen_steps`` 10: Adam on ``Z`` moves a coordinate by about
      ``gen_lr`` per step whatever the gradient's size, so ``gen_lr * gen_steps`` (0.5 of the
      scaled range) bounds how far a generated window can leave the real one. Synthetic-fault
      AUC (FTSAD-1/25/55 tails) was 0.95/0.75/0.73 with 0.005, 0.96/0.76/0.80 with 0.02,
      0.95/0.77/0.83 with 0.05, 0.92/0.77/0.82 with 0.1 (0.90/0.75/0.73 with no ascent at
      all); 20 steps cost twice as much for no gain.
    - LeakyReLU rather than a smooth activation: with SiLU, D stayed at 0.5 everywhere.

    The generation and scoring defaults of the DRAGON model were chosen the same way, with
    ``scripts/select_on_train.py`` (3 seeds, 8 synthetic upward faults of 1-10 steps in the
    last 30 % of train.npy; mean ROC-AUC / PR-AUC on FTSAD-1 and FTSAD-25; docs/detector-quality.md):

    - ``architecture`` ``dragon`` over ``mlp``: 0.893 / 0.788 vs 0.883 / 0.663 on FTSAD-1.
    - ``score_rows`` ``last``: eq. 13 over the whole window keeps a one-step spike in the
      score for k steps, so point-wise precision suffers (PR-AUC 0.665 vs 0.788 on FTSAD-1).
    - ``gen_box``: Ŵ stays inside the training range [0, 1], so a value above anything seen in
      training always counts as excess, even where D's surface extrapolates flatly.
    - ``generate_from`` ``previous`` (eq. 13 as written) over ``current``: 0.893 / 0.788 vs
      0.884 / 0.792 with the box and the last row, a tie, so the paper's form stays.
    - ``gen_optimizer`` ``adahessian`` with ``gen_restart_every`` 5 and ``gen_lr`` 0.05 over
      Adam: 0.896 / 0.819 vs 0.893 / 0.788 on FTSAD-1, 0.926 / 0.647 vs 0.916 / 0.615 on
      FTSAD-25; with ``gen_lr`` 0.01 it was worse than Adam on both.
    - ``gen_hessian_every`` 1, the paper's AdaHessian. Estimating the Hessian every 5 steps (the
      AdaHessian paper's "delayed update", in training and scoring alike) made a 16-host joint
      step 17-35 % cheaper but halved PR-AUC on the rpi16 testbed (0.234 -> 0.112 with topology, 0.379 -> 0.179
      without, 3 seeds; docs/detector-quality.md), so it stays an option for measuring.
    - ``fault_score`` ``excess``, eq. 13 alone. ``excess+unreal`` (plus -log D of the arrived
      window) ranked FTSAD-1's synthetic faults better (0.978 / 0.923 vs 0.952 / 0.908) and tied
      on FTSAD-25/55, but its alarms at the POT threshold were worse on FTSAD-55 (F1 0.929 vs
      0.994): not clear enough to replace the paper's score, so it is an option.
    """

    n_features: int  # n, metrics per time step
    window: int = 10  # k, time steps per window (eq. 1)
    hidden: int = 64  # width of each hidden layer of D
    layers: int = MLP_LAYERS  # hidden layers of D, architecture "mlp" only (the dragon D's structure is the paper's)
    architecture: str = "dragon"  # how D is built (ARCHITECTURES); older checkpoints mean mlp
    topology: bool = True  # dragon architecture: graph transformer + attention (False: Fig. 10 ablation)
    gen_steps: int = 10  # steps of the ascent on log D(Z)
    gen_lr: float = 0.05  # step size of that ascent, in scaled units
    gen_optimizer: str = "adahessian"  # or "adam" (generation.ASCENTS); older checkpoints mean adam
    gen_restart_every: int = 5  # cosine annealing cycle of the ascent, in steps (0: constant step size)
    gen_hessian_every: int = 1  # AdaHessian: a new Hessian estimate every this many steps (delayed update)
    gen_box: bool = True  # keep generated windows inside the scaled training range [0, 1]
    gen_init: str = "window"  # start the ascent from the window itself (sec. IV-C) or from "noise"
    score_rows: str = "last"  # eq. 13 over the whole window, or over its last row only
    fault_score: str = "excess"  # eq. 13 alone, or "excess+unreal": plus -log D(W_{t+1}) (SCORE_TERMS)
    generate_from: str = "previous"  # score against Ŵ generated from W_t ("previous") or W_{t+1} ("current")
    # What D judges at once (SCOPES): one host's window, or every host of an LEI with their tasks,
    # schedule and graph (dragon.detector.lei). The same weights can do either, but a model is
    # calibrated for the one it was trained on, so the scope is part of the model.
    scope: str = "host"
    seed: int = 0  # weight initialisation and minibatch order
    epochs: int = 60  # upper bound; early stopping usually ends sooner
    batch_size: int = 64  # m in Algorithm 1
    lr: float = 1e-3  # Adam learning rate of D's weights
    weight_decay: float = 1e-5  # Adam weight decay of D's weights
    val_fraction: float = 0.2  # chronological tail of the windows held out for early stopping
    patience: int = 8  # epochs without a better validation loss before stopping

    def __post_init__(self) -> None:
        positive = ("n_features", "window", "hidden", "layers", "epochs", "batch_size", "patience", "gen_hessian_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"GonConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.gen_steps < 0 or self.gen_lr <= 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("GonConfig: gen_steps >= 0, gen_lr > 0, lr > 0, weight_decay >= 0")
        if self.gen_optimizer not in ASCENTS:
            raise ValueError(f"GonConfig.gen_optimizer must be one of {sorted(ASCENTS)}, got {self.gen_optimizer!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"GonConfig.architecture must be one of {sorted(ARCHITECTURES)}, got {self.architecture!r}"
            )
        if self.generate_from not in ("previous", "current"):
            raise ValueError(f"GonConfig.generate_from must be 'previous' or 'current', got {self.generate_from!r}")
        if self.score_rows not in ("window", "last"):
            raise ValueError(f"GonConfig.score_rows must be 'window' or 'last', got {self.score_rows!r}")
        if self.fault_score not in FAULT_SCORES:
            raise ValueError(f"GonConfig.fault_score must be one of {sorted(FAULT_SCORES)}, got {self.fault_score!r}")
        if self.gen_init not in ("window", "noise"):
            raise ValueError(f"GonConfig.gen_init must be 'window' or 'noise', got {self.gen_init!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"GonConfig.scope must be one of {SCOPES}, got {self.scope!r}")
        if self.layers != MLP_LAYERS and self.architecture != "mlp":
            # Refused rather than ignored: a setting that changes nothing misleads whoever measures it.
            raise ValueError(f"GonConfig.layers sets the depth of architecture 'mlp' only, not {self.architecture!r}")
        if not self.topology and self.architecture == "mlp":
            raise ValueError("GonConfig.topology=False removes the dragon D's graph attention; 'mlp' has none")
        if self.scope == "lei" and self.architecture != "dragon":
            raise ValueError("GonConfig.scope 'lei' needs architecture 'dragon' (D over hosts, tasks and schedule)")
        if self.gen_restart_every < 0:
            raise ValueError(f"GonConfig.gen_restart_every must be >= 0, got {self.gen_restart_every}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"GonConfig.val_fraction must be in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GonConfig:
        """Rebuild a config; unknown keys are an error so a typo never falls back to a default."""
        check_known_keys(cls, data)
        return cls(**data)

    @classmethod
    def from_saved(cls, data: Mapping[str, Any]) -> GonConfig:
        """A config saved in a checkpoint: a key older checkpoints lack means what it meant then."""
        return cls.from_dict({**SAVED_BEFORE_THE_KEY, **data})


# The paper's Fig. 10 ablations as GonConfig settings: ``bench --ablation NAME``.
ABLATIONS: dict[str, dict[str, Any]] = {
    "noinit": {"gen_init": "noise"},  # without window initialisation: the ascent starts from noise
    "adam": {"gen_optimizer": "adam"},  # first-order Adam instead of AdaHessian
    "notopo": {"topology": False},  # without the graph transformer, convolutions and attention
}


class Discriminator(nn.Module):
    """D(W): probability that window W is real rather than generated; an MLP over k*n inputs.

    LeakyReLU keeps an input gradient everywhere, which the ascent in :func:`generate` needs.
    """

    def __init__(self, cfg: GonConfig) -> None:
        super().__init__()
        self.window = cfg.window
        self.n_features = cfg.n_features
        dims = [cfg.window * cfg.n_features] + [cfg.hidden] * cfg.layers
        blocks: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(dims[-1], 1)

    def logits(self, w: Tensor) -> Tensor:
        """Pre-sigmoid score, (B, k, n) -> (B,); training and ascent use it for stable logs."""
        if w.dim() != 3 or w.shape[1:] != (self.window, self.n_features):
            raise ValueError(f"expected windows (B, {self.window}, {self.n_features}), got {tuple(w.shape)}")
        return self.head(self.body(w)).squeeze(-1)  # (B,)

    def forward(self, w: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(w))  # (B,)


def _dragon(cfg: GonConfig) -> SingleHostDiscriminator:
    """The DRAGON paper's D(G, W, S) (``federation_model``) over one host's windows."""
    return SingleHostDiscriminator(
        FederationConfig(
            n_features=cfg.n_features, window=cfg.window, hidden=cfg.hidden, topology=cfg.topology, seed=cfg.seed
        )
    )


def _dragon_dimensions(cfg: GonConfig) -> DimensionsAsHosts:
    """The DRAGON discriminator with every feature a host of its own, joined all-to-all."""
    federation = FederationConfig(
        n_features=1, window=cfg.window, hidden=cfg.hidden, topology=cfg.topology, seed=cfg.seed
    )
    return DimensionsAsHosts(federation, cfg.n_features)


# How D is built from a config: ``mlp``, the first, topology-free GON; ``dragon``, the paper's
# over one host; ``dragon_dimensions``, the paper's with each feature a host.
ARCHITECTURES: dict[str, Callable[[GonConfig], nn.Module]] = {
    "mlp": Discriminator,
    "dragon": _dragon,
    "dragon_dimensions": _dragon_dimensions,
}


def build_discriminator(cfg: GonConfig) -> nn.Module:
    """A new, untrained D for ``cfg``: ``logits`` maps windows (B, k, n) to (B,), or (B, n) per dimension."""
    return ARCHITECTURES[cfg.architecture](cfg)


def generate_from(model: nn.Module, windows: Tensor, cfg: GonConfig) -> Tensor:
    """Windows (B, k, n) generated from ``windows`` with the ascent ``cfg`` describes.

    ``gen_init == "noise"`` starts from uniform noise in [0, 1] instead (the vanilla GON, the
    "without window initialisation" ablation of Fig. 10), drawn from a generator seeded with
    ``cfg.seed`` so scores stay deterministic.
    """
    if cfg.gen_init == "noise":
        noise = torch.Generator().manual_seed(cfg.seed)
        windows = torch.rand(windows.shape, generator=noise, dtype=windows.dtype)
    box = (0.0, 1.0) if cfg.gen_box else None
    return generate(
        model, windows, cfg.gen_steps, cfg.gen_lr, cfg.gen_optimizer, cfg.gen_restart_every, box, cfg.gen_hessian_every
    )


def unrealness(model: Climbable, windows: Tensor) -> Tensor:
    """-log D(W) of each window (or host): how unreal D finds the window that arrived, in nats."""
    return F.softplus(-model.logits(windows))


# What each fault score (config.FAULT_SCORES) adds to eq. 13's excess. "excess+unreal" is the
# DR-score of MAD-GAN (Li et al., ICANN 2019) with equal weights: the residual against the
# generated window plus the discriminator's own verdict on the window that arrived. The excess
# sees a rise above what D finds plausible; -log D also sees a window D finds odd whose values
# stay below that, e.g. an unusual shape inside the training range.
ScoreTerm = Callable[[Climbable, Tensor], Tensor]  # windows (..., k, n) -> a value per window or dimension
SCORE_TERMS: dict[str, tuple[ScoreTerm, ...]] = {
    "excess": (),
    "excess+unreal": (unrealness,),
}


@torch.no_grad()
def fault_scores(
    model: Climbable, prev_windows: Tensor, next_windows: Tensor, cfg: GonConfig, arrived_by: Climbable | None = None
) -> tuple[Tensor, Tensor]:
    """Fault score f = ||ReLU(W_{t+1} - Ŵ_{t+1})|| (eq. 13), plus the terms of ``cfg.fault_score``, and each
    feature's share of the excess.

    Ŵ_{t+1} is generated from W_t (``cfg.generate_from == "previous"``, eq. 13 as written: a
    prediction) or from W_{t+1} itself (``"current"``: the nearest window D finds plausible, a
    reconstruction). Only upward deviations count because resource faults show as sudden rises
    in utilisation (sec. V-B). The norm is L2 over the whole k x n window, or over its last row.
    Windows are (B, k, n), or (B, m, k, n) for the m hosts of a federation judged together
    (``model`` is then D seen as a function of the host windows, :class:`~dragon.detector.
    federation_data.FederationWindows`). ``contributions[..., j]`` is feature j's share of f²,
    so it sums to 1 when f > 0; it ranks the metrics behind an alarm. Where the excess is 0 and
    only the added terms score (-log D is one verdict on the whole window and names no metric
    itself), the shares are those of the terms' gradient (:func:`term_shares`); all zeros when
    nothing scores.
    ``arrived_by`` is D as it judges the arrived windows for those terms, in their own context
    (in a federation the tasks' windows over W_{t+1}, as D learnt real windows); by default
    ``model``, the context generation used.
    Returns scores (B,) or (B, m) and contributions (B, n) or (B, m, n).
    """
    start = prev_windows if cfg.generate_from == "previous" else next_windows
    predicted = generate_from(model, start, cfg)  # (..., k, n)
    excess = F.relu(next_windows - predicted)  # (..., k, n)
    per_feature = scored_rows(excess, cfg).square().sum(dim=-2)  # (..., n)
    total = per_feature.sum(dim=-1)  # (...)
    contributions = shares_of(per_feature)
    terms = SCORE_TERMS[cfg.fault_score]
    if not terms:
        return total.sqrt(), contributions
    judge = model if arrived_by is None else arrived_by
    with torch.enable_grad():  # one forward pass of D serves the terms and, if needed, their gradient
        arrived = next_windows.detach().requires_grad_(True)
        added = summed_terms(terms, judge, arrived, total.shape)
    silent = (total == 0) & (added > 0)  # scored by the added terms alone
    if silent.any():
        contributions = torch.where(silent.unsqueeze(-1), term_shares(added, arrived, silent, cfg), contributions)
    return total.sqrt() + added.detach(), contributions


def scored_rows(windows: Tensor, cfg: GonConfig) -> Tensor:
    """The rows of (..., k, n) windows the score reads: all k, or the last (the new sample's)."""
    return windows[..., -1:, :] if cfg.score_rows == "last" else windows


def shares_of(per_feature: Tensor) -> Tensor:
    """Each feature's share of non-negative (..., n) amounts; all zeros where they sum to 0."""
    total = per_feature.sum(dim=-1, keepdim=True)
    shares = per_feature / total.clamp_min(torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, shares, torch.zeros_like(shares))


def summed_terms(terms: tuple[ScoreTerm, ...], model: Climbable, windows: Tensor, shape: torch.Size) -> Tensor:
    """The added score terms of each window or host, shaped like the excess score.

    Summed per window or host: a D that judges each dimension apart (dragon_dimensions) says how
    unreal the window is as the sum of its dimensions' -log D.
    """
    return sum(term(model, windows).reshape(*shape, -1).sum(dim=-1) for term in terms)


def term_shares(added: Tensor, arrived: Tensor, judged: Tensor, cfg: GonConfig) -> Tensor:
    """Each feature's share of the squared gradient of the added terms on the scored rows.

    ``added`` are the terms computed from ``arrived`` with autograd on. The metrics the verdict
    is most sensitive to on the row that arrived name the alarm that -log D raised alone. The
    terms of the ``judged`` windows (or hosts) are summed before one backward pass; in a
    federation a host's gradient then also carries the terms of its judged peers through
    attention, not separated from its own (one pass instead of one per host). Windows with no
    excess are common on a quiet host, so with these terms most steps pay this backward pass of
    D, next to the tens of passes that generation takes.
    """
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(added[judged].sum(), arrived)
    return shares_of(scored_rows(gradient, cfg).square().sum(dim=-2))


def make_windows(series: np.ndarray, k: int) -> np.ndarray:
    """Windows W_t = (x_{t-k+1}, ..., x_t) for every t (eq. 1), (T, n) -> (T, k, n) float32.

    The first k-1 windows are completed by repeating x_0 (replication padding), so every time
    step has a window and scores line up with the series.
    """
    series = np.asarray(series, dtype=np.float32)
    if series.ndim != 2 or series.shape[0] == 0:
        raise ValueError(f"expected a non-empty (T, n) series, got shape {series.shape}")
    if k < 1:
        raise ValueError(f"window length must be >= 1, got {k}")
    padded = np.concatenate([np.repeat(series[:1], k - 1, axis=0), series])  # (T+k-1, n)
    index = np.arange(series.shape[0])[:, None] + np.arange(k)[None, :]  # (T, k)
    return padded[index]  # (T, k, n)


@torch.no_grad()
def score_series(model: nn.Module, cfg: GonConfig, series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fault score of every time step of a scaled (T, n) series; switches the model to eval.

    The score at t compares W_t with the window generated from W_{t-1} (W_0 stands in for the
    previous window at t = 0, so the first score only reflects the generator's pull).
    Returns scores (T,) and contributions (T, n) as float64 numpy arrays.
    """
    model.eval()
    windows = torch.from_numpy(make_windows(series, cfg.window))  # (T, k, n)
    previous = torch.cat([windows[:1], windows[:-1]])  # (T, k, n)
    scores, contributions = [], []
    for start in range(0, windows.shape[0], SCORE_BATCH):
        part = slice(start, start + SCORE_BATCH)
        s, c = fault_scores(model, previous[part], windows[part], cfg)
        scores.append(s)
        contributions.append(c)
    return torch.cat(scores).double().numpy(), torch.cat(contributions).double().numpy()


class WindowSet(Protocol):
    """Real windows for Algorithm 1, with the view of D that judges each batch of them.

    A plain series is judged by D alone (:class:`SeriesWindows`); the hosts of a federation are
    judged by D together with their tasks, schedule and graph, which the view binds
    (:class:`~dragon.detector.federation_data.FederationWindows`).
    """

    def __len__(self) -> int: ...

    def batch(self, model: nn.Module, index: Tensor) -> tuple[Climbable, Tensor]:
        """D as a function of the windows at ``index``, and those windows."""


@dataclass(frozen=True)
class SeriesWindows:
    """Windows (N, k, n) of one or more series; D judges each on its own."""

    windows: Tensor  # (N, k, n)

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def batch(self, model: nn.Module, index: Tensor) -> tuple[Climbable, Tensor]:
        return model, self.windows[index]  # (B, k, n)


def as_window_set(windows: Tensor | WindowSet) -> WindowSet:
    return SeriesWindows(windows) if isinstance(windows, Tensor) else windows


def gon_loss(model: Climbable, real: Tensor, cfg: GonConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 1, line 5: BCE(D(W), 1) + BCE(D(Z*), 0) with Z* generated from W itself.

    Returns the loss and the logits of the real and generated windows: (B,), or one per host
    or dimension, (B, m).
    """
    fake = generate_from(model, real, cfg)  # (B, k, n)
    real_logits = model.logits(real)  # (B,)
    fake_logits = model.logits(fake)  # (B,)
    loss = F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return loss, real_logits, fake_logits


@torch.no_grad()
def evaluate_gon(model: nn.Module, windows: Tensor | WindowSet, cfg: GonConfig) -> dict[str, float]:
    """Mean discriminator loss, D(real) and D(generated) over held-out windows (eval mode)."""
    model.eval()
    data = as_window_set(windows)
    total = d_real = d_gen = 0.0
    for start in range(0, len(data), VALIDATION_BATCH):
        view, real = data.batch(model, torch.arange(start, min(start + VALIDATION_BATCH, len(data))))
        loss, real_logits, fake_logits = gon_loss(view, real, cfg)
        total += loss.item() * real.shape[0]
        # Per window: the mean over its logits (one, or one per host or dimension).
        d_real += torch.sigmoid(real_logits).reshape(len(real), -1).mean(dim=1).sum().item()
        d_gen += torch.sigmoid(fake_logits).reshape(len(real), -1).mean(dim=1).sum().item()
    count = len(data)
    return {"loss": total / count, "d_real": d_real / count, "d_gen": d_gen / count}


def _train_epoch(model: nn.Module, opt: Adam, data: WindowSet, order: np.ndarray, cfg: GonConfig) -> float:
    """One pass of Algorithm 1 over shuffled minibatches; returns the mean training loss."""
    model.train()
    total = 0.0
    for start in range(0, len(order), cfg.batch_size):
        view, real = data.batch(model, torch.from_numpy(order[start : start + cfg.batch_size]))
        loss, _, _ = gon_loss(view, real, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * real.shape[0]
    return total / len(order)


def _split(n_windows: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Chronological split: the last windows are held out.

    Neighbouring windows share k-1 rows, so a random split would leak nearly identical
    windows into validation and make early stopping meaningless.
    """
    n_val = int(round(n_windows * val_fraction))
    n_val = min(n_val, n_windows - 1)
    cut = n_windows - n_val
    return np.arange(cut), np.arange(cut, n_windows)


def train_gon(
    windows: np.ndarray | WindowSet, cfg: GonConfig, progress: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Train D on real windows (N, k, n), or a :class:`WindowSet`, with Algorithm 1 and early stopping.

    Generated windows start at the real ones (window initialisation), so the only way for D to
    tell them apart is to make real windows local maxima of its surface: a window moved up
    D's gradient by the ascent must end lower. That pull back toward the data is what
    :func:`fault_scores` measures. Expect a flat phase first (D ~ 0.5 for real and generated)
    before D separates them; on smooth, low-dimensional data it may stay near 0.5 while still
    placing the data at (shallow) maxima.

    The best weights by validation loss are kept. Deterministic for a fixed ``cfg.seed``; the
    global torch RNG state is left untouched. Returns the model and a history: per-epoch
    ``train_loss``, ``val_loss``, ``val_d_real``, ``val_d_gen`` (mean D over the held-out
    windows and over the windows generated from them), ``best_epoch``, ``best_val_loss`` and
    ``epochs_run``.
    """
    data = _checked_windows(windows, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_discriminator(cfg)
    rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx = _split(len(data), cfg.val_fraction)
    opt = Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "val_d_real": [], "val_d_gen": []}
    best_loss, best_state, best_epoch = float("inf"), copy.deepcopy(model.state_dict()), 0
    started = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc="gon", unit="epoch", disable=not progress)
    for epoch in bar:
        train_loss = _train_epoch(model, opt, data, rng.permutation(train_idx), cfg)
        # Without a validation split the training loss stands in, so patience still applies.
        held_out = evaluate_gon(model, _Subset(data, val_idx), cfg) if len(val_idx) else {"loss": train_loss}
        for key, value in (("train_loss", train_loss), ("val_loss", held_out["loss"])):
            history[key].append(value)
        history["val_d_real"].append(held_out.get("d_real"))
        history["val_d_gen"].append(held_out.get("d_gen"))
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{held_out['loss']:.4f}")
        if held_out["loss"] < best_loss:
            best_loss, best_state, best_epoch = held_out["loss"], copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    history.update(best_epoch=best_epoch, best_val_loss=best_loss, epochs_run=len(history["train_loss"]))
    log.info(
        "gon_trained",
        windows=len(data),
        epochs_run=history["epochs_run"],
        best_epoch=best_epoch,
        best_val_loss=round(best_loss, 5),
        seconds=round(time.perf_counter() - started, 2),
    )
    return model, history


@dataclass(frozen=True)
class _Subset:
    """The windows of ``data`` at ``index``, as a window set of their own (the validation split)."""

    data: WindowSet
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, model: nn.Module, index: Tensor) -> tuple[Climbable, Tensor]:
        return self.data.batch(model, torch.from_numpy(self.index)[index])


def _checked_windows(windows: np.ndarray | WindowSet, cfg: GonConfig) -> WindowSet:
    if not isinstance(windows, np.ndarray):
        if len(windows) < 2:
            raise ValueError("need at least 2 windows")
        return windows
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim != 3 or windows.shape[1:] != (cfg.window, cfg.n_features):
        raise ValueError(f"expected windows (N, {cfg.window}, {cfg.n_features}), got {windows.shape}")
    if windows.shape[0] < 2 or not np.isfinite(windows).all():
        raise ValueError("need at least 2 windows, all finite")
    return SeriesWindows(torch.from_numpy(windows))
