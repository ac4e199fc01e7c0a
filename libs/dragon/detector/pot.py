"""Peaks-Over-Threshold (POT) thresholds for fault scores (Siffer et al., KDD 2017).

Extreme-value theory says the excesses of a score over a high threshold ``t`` follow a
Generalized Pareto Distribution (GPD) whatever the score's own distribution. Fitting that tail
on calibration scores gives the threshold ``z_q`` that a normal score exceeds with probability
``q`` only, far beyond any empirical quantile a few thousand points could support.

The GPD is fitted by maximum likelihood with Grimshaw's reduction to one variable: with
``x = gamma / sigma`` the likelihood equations become ``w(x) = u(x) v(x) - 1 = 0`` where
``u(x) = 1 + mean(log(1 + x Y))`` and ``v(x) = mean(1 / (1 + x Y))``; every root gives
``gamma = u(x) - 1`` and ``sigma = gamma / x``, and the root (or the exponential case,
``gamma = 0``) with the highest log-likelihood wins. Roots are bracketed on a grid and refined by
bisection, with numpy only.

:class:`PotState` keeps the peaks as well as the fit so that streaming SPOT/DSPOT
(:class:`StreamingPot`) can add a peak and refit with :func:`fit_tail` without the calibration
scores. A streaming update also learns a few alarms as right-censored excesses (known to reach
the threshold, not how far); with those the likelihood has no Grimshaw reduction and is climbed
by Nelder-Mead (:func:`censored_mle`).

Parameters: the GON and DRAGON papers use risk ``q = 1e-4`` and a "low quantile" of 0.07 for
FTSAD. We default to ``q = 1e-3`` (``dragon.detector.config.DEFAULT_Q`` says why). The "low
quantile" wording comes from OmniAnomaly's POT code, which thresholds the *lower* tail of a log-likelihood; for
fault scores, where the upper tail matters, the equivalent is ``level = 0.93``. The GON
authors' own code initialises at 0.98-0.9999 on FTSAD. We default to ``level = 0.98``: about
2% of the calibration points are peaks (43 on FTSAD-55's 2158 training points, enough for a
two-parameter fit), and ``t`` stays well inside normal behaviour.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from dragon.detector.config import DEFAULT_LEVEL, DEFAULT_Q
from dragon.records import check_known_keys

log = structlog.get_logger(__name__)

# Fewer peaks than this and a two-parameter GPD fit is noise: fit the exponential tail instead.
MIN_PEAKS = 10
# With no peak at all (constant or tied scores), z_q = t + FALLBACK_MARGIN * |t| + FALLBACK_EPS.
FALLBACK_MARGIN = 0.1
FALLBACK_EPS = 1e-6
# |gamma| below this is treated as the exponential tail (the GPD limit as gamma -> 0).
GAMMA_EPS = 1e-8
_GRID = 200  # grid points per side when bracketing Grimshaw's roots
_BISECTIONS = 80
_NM_ITERATIONS = 200  # Nelder-Mead steps of the censored fit; a warm start needs a few dozen
_NM_TOLERANCE = 1e-9  # stop when the simplex's log-likelihoods agree this closely


@dataclass
class PotState:
    """A fitted POT threshold; plain floats and ints so it serialises to JSON or msgpack.

    ``method`` says which fit produced ``z_q``: ``"gpd"`` (Grimshaw's maximum likelihood,
    possibly choosing the exponential candidate), ``"exponential"`` (fewer than ``MIN_PEAKS``
    peaks), or ``"no_peaks"`` (no score above ``t``, or no finite tail through the peaks; ``z_q``
    is a margin above ``t``).
    """

    t: float  # initial threshold: the ``level`` quantile of the calibration scores
    gamma: float  # GPD shape of the excesses over t (0 for the exponential tail)
    sigma: float  # GPD scale of the excesses over t
    n: int  # number of calibration scores
    n_peaks: int  # number of scores strictly above t
    q: float  # risk: probability that a normal score exceeds z_q
    level: float  # quantile that gave t
    z_q: float  # the threshold: label 1 when score >= z_q
    method: str  # "gpd" | "exponential" | "no_peaks"
    peaks: tuple[float, ...] = ()  # excesses over t, kept for streaming updates (StreamingPot)
    # Right-censored excesses: alarms of a streaming update known only to reach at least this far
    # over t (StreamingPot.update); empty for a fit on calibration scores.
    censored: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict, which deep-copies the peaks one by one: a
        # detector serialises one state per host and batch (0.66 ms each with 1,000 peaks).
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["peaks"] = list(self.peaks)
        data["censored"] = list(self.censored)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PotState:
        check_known_keys(cls, data)
        fields = dict(data)
        fields["peaks"] = tuple(float(p) for p in fields.get("peaks", ()))
        fields["censored"] = tuple(float(c) for c in fields.get("censored", ()))
        return cls(**fields)

    @property
    def tail_count(self) -> int:
        """Scores known to exceed t: the peaks and the censored alarms."""
        return len(self.peaks) + len(self.censored)


def label(score: float, state: PotState) -> int:
    """Fault label l = 1(f >= z_q) (DRAGON eq. 14)."""
    return int(score >= state.z_q)


def fit_pot(
    scores: np.ndarray, q: float = DEFAULT_Q, level: float = DEFAULT_LEVEL, min_peaks: int = MIN_PEAKS
) -> PotState:
    """Fit POT on calibration scores (normal operation only, never test data).

    ``t`` is the ``level`` quantile, the peaks are ``scores[scores > t] - t``, and the tail is
    fitted by :func:`fit_tail`. Fallbacks, so the threshold is always finite and above ``t``:
    fewer than ``min_peaks`` peaks -> exponential tail (``sigma`` = mean excess); no peak at all
    (constant, all-zero or tied scores) -> ``z_q = t + 0.1 |t| + 1e-6``.
    Raises ValueError for empty or non-finite scores and for ``q >= 1 - level`` (the
    extrapolation needs a risk below the fraction of peaks).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("POT needs a non-empty array of finite scores")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not 0.0 < q < 1.0 - level:
        raise ValueError(f"q must be in (0, 1 - level) = (0, {1.0 - level:g}), got {q}")
    t = float(np.quantile(scores, level))
    peaks = scores[scores > t] - t
    return fit_tail(t, peaks, n=int(scores.size), q=q, level=level, min_peaks=min_peaks)


def fit_tail(
    t: float,
    peaks: np.ndarray,
    n: int,
    q: float,
    level: float,
    min_peaks: int = MIN_PEAKS,
    censored: np.ndarray | tuple[float, ...] = (),
    start: tuple[float, float] | None = None,
) -> PotState:
    """Fit the excesses ``peaks`` (> 0) over ``t`` out of ``n`` scores and compute ``z_q``.

    Separate from :func:`fit_pot` so a streaming update can refit after adding a peak.
    ``censored`` are excesses known only to be at least that large (alarms of a streaming
    update): they enter the likelihood through the GPD's survival function
    (:func:`censored_mle`, started from ``start`` when given) and count as scores above t.
    """
    peaks = np.asarray(peaks, dtype=np.float64).ravel()
    censored = np.asarray(censored, dtype=np.float64).ravel()
    if peaks.size == 0:
        return _no_peaks(t, n, q, level, peaks, censored)
    exponential = float((peaks.sum() + censored.sum()) / peaks.size)  # censored MLE of the exponential scale
    if peaks.size < min_peaks:
        log.info("pot_few_peaks", n_peaks=int(peaks.size), min_peaks=min_peaks)
        gamma, sigma, method = 0.0, exponential, "exponential"
    else:
        gamma, sigma = censored_mle(peaks, censored, start) if censored.size else grimshaw(peaks)
        method = "gpd"
    tail_count = peaks.size + censored.size
    z_q = gpd_quantile(t, gamma, sigma, q, n, tail_count)
    if not (math.isfinite(z_q) and z_q > t):
        # A shape estimate near a support boundary can overflow; the exponential tail cannot.
        log.warning("pot_gpd_unusable", gamma=gamma, sigma=sigma, z_q=z_q)
        gamma, sigma, method = 0.0, exponential, "exponential"
        z_q = gpd_quantile(t, gamma, sigma, q, n, tail_count)
    if not (math.isfinite(z_q) and z_q > t):
        return _no_peaks(t, n, q, level, peaks, censored)
    return PotState(
        t=t,
        gamma=float(gamma),
        sigma=float(sigma),
        n=int(n),
        n_peaks=int(peaks.size),
        q=q,
        level=level,
        z_q=float(z_q),
        method=method,
        peaks=tuple(float(p) for p in peaks),
        censored=tuple(float(c) for c in censored),
    )


def _no_peaks(
    t: float, n: int, q: float, level: float, peaks: np.ndarray, censored: np.ndarray | tuple[float, ...] = ()
) -> PotState:
    """No score above t, or no finite tail: nothing to extrapolate, so stay just above everything seen.

    Peaks that gave no usable tail are kept, so a streaming update refits on them with the next.
    """
    z_q = t + FALLBACK_MARGIN * abs(t) + FALLBACK_EPS
    log.warning("pot_no_peaks", t=t, n=n, z_q=z_q, n_peaks=int(peaks.size))
    return PotState(
        t=t,
        gamma=0.0,
        sigma=0.0,
        n=int(n),
        n_peaks=int(peaks.size),
        q=q,
        level=level,
        z_q=z_q,
        method="no_peaks",
        peaks=tuple(float(p) for p in peaks),
        censored=tuple(float(c) for c in censored),
    )


def gpd_quantile(t: float, gamma: float, sigma: float, q: float, n: int, n_peaks: int) -> float:
    """z_q = t + sigma/gamma ((q n / n_peaks)^-gamma - 1), or t - sigma log(q n / n_peaks) at gamma = 0."""
    ratio = q * n / n_peaks
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if abs(gamma) < GAMMA_EPS:
            return float(t - sigma * np.log(ratio))
        return float(t + sigma / gamma * (np.power(ratio, -gamma) - 1.0))


def gpd_log_likelihood(peaks: np.ndarray, gamma: float, sigma: float) -> float:
    """Log-likelihood of GPD(gamma, sigma) for excesses ``peaks``; -inf outside the support."""
    if not (sigma > 0 and math.isfinite(sigma) and math.isfinite(gamma)):
        return -math.inf
    n = peaks.size
    if abs(gamma) < GAMMA_EPS:
        return float(-n * math.log(sigma) - peaks.sum() / sigma)
    arg = 1.0 + gamma * peaks / sigma
    if (arg <= 0).any():
        return -math.inf
    return float(-n * math.log(sigma) - (1.0 + 1.0 / gamma) * np.log(arg).sum())


def censored_log_likelihood(peaks: np.ndarray, censored: np.ndarray, gamma: float, sigma: float) -> float:
    """Log-likelihood of GPD(gamma, sigma) for excesses ``peaks`` and right-censored excesses ``censored``.

    A censored excess c adds log P(Y >= c) = -(1/gamma) log(1 + gamma c / sigma) (-c / sigma at
    gamma = 0) instead of a density. -inf outside the support.
    """
    if not (sigma > 0 and math.isfinite(sigma) and math.isfinite(gamma)):
        return -math.inf
    if abs(gamma) < GAMMA_EPS:
        return float(-peaks.size * math.log(sigma) - (peaks.sum() + censored.sum()) / sigma)
    arg_peaks, arg_censored = 1.0 + gamma * peaks / sigma, 1.0 + gamma * censored / sigma
    if (arg_peaks <= 0).any() or (arg_censored <= 0).any():
        return -math.inf
    return float(
        -peaks.size * math.log(sigma)
        - (1.0 + 1.0 / gamma) * np.log(arg_peaks).sum()
        - np.log(arg_censored).sum() / gamma
    )


def censored_mle(
    peaks: np.ndarray, censored: np.ndarray, start: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Maximum-likelihood (gamma, sigma) of a GPD with right-censored excesses.

    Grimshaw's reduction does not hold with censoring, so the likelihood is climbed by
    Nelder-Mead over (gamma, log sigma), from ``start`` (a streaming update passes the fit in
    force, which is close) or Grimshaw's fit of the uncensored peaks. The exponential fit, whose
    censored MLE has a closed form, is a candidate too; the higher likelihood wins.
    """
    peaks, censored = np.asarray(peaks, dtype=np.float64), np.asarray(censored, dtype=np.float64)
    exponential = (0.0, float((peaks.sum() + censored.sum()) / peaks.size))
    gamma0, sigma0 = start if start is not None and start[1] > 0 else grimshaw(peaks)

    def cost(theta: np.ndarray) -> float:
        return -censored_log_likelihood(peaks, censored, float(theta[0]), math.exp(theta[1]))

    found = _nelder_mead(cost, np.array([gamma0, math.log(sigma0)]))
    candidate = (float(found[0]), math.exp(found[1]))
    if censored_log_likelihood(peaks, censored, *candidate) > censored_log_likelihood(peaks, censored, *exponential):
        return candidate
    return exponential


def _nelder_mead(cost: Callable[[np.ndarray], float], x0: np.ndarray, step: float = 0.1) -> np.ndarray:
    """Minimise ``cost`` from ``x0`` with the standard Nelder-Mead simplex (numpy only, no scipy)."""
    simplex = np.vstack([x0, x0 + np.diag(np.full(x0.size, step))])  # (d+1, d)
    values = np.array([cost(x) for x in simplex])
    for _ in range(_NM_ITERATIONS):
        order = np.argsort(values)
        simplex, values = simplex[order], values[order]
        if np.isfinite(values[-1]) and values[-1] - values[0] < _NM_TOLERANCE:
            break
        centre = simplex[:-1].mean(axis=0)
        reflected = centre + (centre - simplex[-1])
        value = cost(reflected)
        if value < values[0]:
            expanded = centre + 2.0 * (centre - simplex[-1])
            expanded_value = cost(expanded)
            simplex[-1], values[-1] = (expanded, expanded_value) if expanded_value < value else (reflected, value)
        elif value < values[-2]:
            simplex[-1], values[-1] = reflected, value
        else:
            contracted = centre + 0.5 * (simplex[-1] - centre)
            contracted_value = cost(contracted)
            if contracted_value < values[-1]:
                simplex[-1], values[-1] = contracted, contracted_value
            else:  # shrink towards the best point
                simplex[1:] = simplex[0] + 0.5 * (simplex[1:] - simplex[0])
                values[1:] = [cost(x) for x in simplex[1:]]
    return simplex[int(np.argmin(values))]


def grimshaw(peaks: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (gamma, sigma) of a GPD for positive excesses, by Grimshaw's trick.

    Candidates are the exponential fit (gamma = 0, sigma = mean) and every root of w(x) on
    (-1/max, 0) and (0, 2 (mean - min) / min^2], the bounds Grimshaw (1993) gives for x.
    """
    peaks = np.asarray(peaks, dtype=np.float64)
    y_min, y_max, y_mean = float(peaks.min()), float(peaks.max()), float(peaks.mean())
    best = (0.0, y_mean)
    best_ll = gpd_log_likelihood(peaks, *best)
    if y_max <= y_min * (1.0 + 1e-12):
        return best  # identical excesses: only the exponential fit is defined
    for x in _grimshaw_roots(peaks, y_min, y_max, y_mean):
        gamma = float(np.log1p(x * peaks).mean())
        sigma = gamma / x
        ll = gpd_log_likelihood(peaks, gamma, sigma)
        if ll > best_ll:
            best, best_ll = (gamma, sigma), ll
    return best


def _w(peaks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Grimshaw's w(x) = u(x) v(x) - 1 for a vector of x, (G,) -> (G,)."""
    s = 1.0 + np.outer(x, peaks)  # (G, n_peaks)
    u = 1.0 + np.log(s).mean(axis=1)
    v = (1.0 / s).mean(axis=1)
    return u * v - 1.0


def _grimshaw_roots(peaks: np.ndarray, y_min: float, y_max: float, y_mean: float) -> list[float]:
    """Non-zero roots of w, bracketed by sign changes on a grid and refined by bisection.

    x = 0 is always a (trivial) root, so the grids stop short of it on both sides.
    """
    # Negative side: x = -s / y_max, s in (0, 1); dense near both ends, where w changes fast.
    s = np.unique(np.concatenate([np.geomspace(1e-8, 0.5, _GRID), 1.0 - np.geomspace(0.5, 1e-10, _GRID)]))
    negative = -s[::-1] / y_max  # increasing, from near -1/y_max up to near 0
    upper = 2.0 * (y_mean - y_min) / y_min**2
    positive = np.geomspace(1e-8 / y_mean, upper, _GRID) if upper > 1e-8 / y_mean else np.empty(0)
    roots = []
    for grid in (negative, positive):
        if grid.size < 2:
            continue
        values = _w(peaks, grid)
        for i in np.flatnonzero(np.sign(values[:-1]) * np.sign(values[1:]) <= 0):
            roots.append(_bisect(peaks, grid[i], grid[i + 1], values[i]))
    return roots


def _bisect(peaks: np.ndarray, lo: float, hi: float, w_lo: float) -> float:
    """Root of w in [lo, hi] given a sign change; bisection is slow but cannot leave the bracket."""
    if w_lo == 0.0:
        return lo
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        w_mid = float(_w(peaks, np.array([mid]))[0])
        if w_mid == 0.0:
            return mid
        if (w_mid > 0) == (w_lo > 0):
            lo, w_lo = mid, w_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# Peaks kept by the streaming update: bounds the refit cost and lets old peaks age out.
MAX_STREAM_PEAKS = 1000
# Alarms a streaming update may learn from at once after a quiet spell (StreamingPot.update):
# enough that a burst of normal exceedances is not lost, few enough that a fault hardly counts.
MAX_ALLOWANCE = 3.0


@dataclass
class StreamingPot:
    """SPOT, or DSPOT when ``depth`` > 0 (Siffer et al. 2017), for one stream of scores.

    :meth:`update` judges one score against the threshold in force and learns from it unless it
    is an alarm. ``tail`` is the POT fit in force with its peaks and ``n``; in DSPOT it is fitted
    on drift-free scores, each score minus the mean of the ``depth`` normal scores before it
    (``recent``), so a slow rise of normal operation moves the threshold with it. With ``lag``
    > 0 a normal score is learnt ``lag`` scores late (``held`` until then), and the first alarm
    after a quiet spell (``quiet``) drops what is held: the first steps of a fault often score just under
    the threshold, and learnt as peaks they would raise the bar the rest of the fault is judged
    by. Serialises to plain floats, ints and lists, so a service can keep one per host in Redis.
    """

    tail: PotState
    depth: int = 0  # DSPOT moving-average depth in scores; 0 is SPOT
    recent: tuple[float, ...] = ()  # DSPOT: the last ``depth`` normal scores, oldest first
    max_peaks: int = MAX_STREAM_PEAKS  # newest peaks (and censored alarms) the tail is refitted on
    # Alarms that normal operation alone would raise and not yet learnt from: q per score, at
    # most MAX_ALLOWANCE (see update).
    allowance: float = 0.0
    # Censored alarms owed to ageing: the tail forgets them at the rate it forgets peaks (_refit).
    ageing: float = 0.0
    lag: int = 0  # normal scores wait this many later scores before they are learnt; 0 learns at once
    held: tuple[float, ...] = ()  # normal scores not yet learnt, oldest first (see update)
    # Whether the held scores follow a quiet spell: ``lag`` normal scores in a row, or the
    # calibration itself, whose scores are of normal operation by construction (see update).
    quiet: bool = True

    def __post_init__(self) -> None:
        self.recent = tuple(float(score) for score in self.recent)
        self.held = tuple(float(score) for score in self.held)
        if self.depth < 0 or len(self.recent) != self.depth:
            raise ValueError(f"depth must be >= 0 with as many recent scores, got {self.depth} and {len(self.recent)}")
        if self.lag < 0 or len(self.held) > self.lag:
            raise ValueError(f"lag must be >= 0 with at most as many held scores, got {self.lag} and {len(self.held)}")
        if self.max_peaks < 1:
            raise ValueError(f"max_peaks must be at least 1, got {self.max_peaks}")
        if not isinstance(self.quiet, bool):
            raise ValueError(f"quiet must be true or false, got {self.quiet!r}")
        # lag held scores are a quiet spell whatever was stored (at lag 0, always: nothing is held).
        self.quiet = self.quiet or len(self.held) == self.lag

    @classmethod
    def calibrate(
        cls, scores: np.ndarray, q: float = DEFAULT_Q, level: float = DEFAULT_LEVEL, depth: int = 0, lag: int = 0
    ) -> StreamingPot:
        """Fit on calibration scores; DSPOT fits their drift-free form and averages their last ``depth``."""
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if not depth:
            return cls(fit_pot(scores, q=q, level=level), lag=lag)
        return cls(fit_pot(drift_removed(scores, depth), q=q, level=level), depth, tuple(scores[-depth:]), lag=lag)

    @property
    def drift(self) -> float:
        """What is subtracted from each score: the mean of the recent normal scores (0 in SPOT)."""
        return sum(self.recent) / self.depth if self.depth else 0.0

    @property
    def threshold(self) -> float:
        """The threshold the next score is judged against, in score units."""
        return self.drift + self.tail.z_q

    def update(self, score: float) -> tuple[float, bool]:
        """Judge ``score``, then learn from it; returns (threshold in force, alarm).

        A normal score joins the held ones (with ``lag`` 0 it is learnt at once); the oldest
        held score is learnt once more than ``lag`` are held (:meth:`_learn`). An alarm after at
        least ``lag`` normal scores in a row, or before any alarm since the calibration, drops the
        held ones: they may be the onset of the fault it opens. An alarm after fewer normal scores
        since the previous alarm learns them at once: they lie between two alarms,
        as plain SPOT would have learnt them, so a level that has moved for good and alarms every
        few scores is learnt as without the lag (dropping them at every alarm, DSPOT after a
        rise of 6 in an Exp(1) stream raised 172 alarms in 3,000 scores instead of 2).

        An alarm (``score >= threshold``) is not learnt from as a value, so a long fault never
        raises the bar to its own level. Leaving every alarm out, though, biases a long
        stationary stream downwards: normal operation itself exceeds z_q at rate q, those
        largest normal scores are then missing from the peaks, each refit finds a lighter tail
        and the threshold sinks (Exp(1) scores, q = 1e-3: the alarm rate rose from 1.7e-3 to
        5.0e-3 over 150,000 scores). So as many alarms as normal operation would raise (an
        allowance of q per score, at most ``MAX_ALLOWANCE`` saved up) are learnt as
        right-censored excesses: known to reach the threshold, not how far. A fault's alarms
        beyond that allowance are ignored, so a fault of a thousand windows adds about one.
        """
        z_q = self.tail.z_q
        threshold = self.drift + z_q
        self.allowance = min(MAX_ALLOWANCE, self.allowance + self.tail.q)
        if score >= threshold:
            if not self.quiet:
                for held in self.held:
                    self._learn(held)
            self.held, self.quiet = (), self.lag == 0  # at lag 0 nothing is ever held: trivially quiet
            tail = self.tail
            # z_q > t in every fit; a state stored by older code may hold one that sank below t.
            if self.allowance >= 1.0 and tail.method != "no_peaks" and z_q > tail.t:
                self.allowance -= 1.0
                # Censored at the threshold it crossed, z_q - t, even if learning moved z_q since.
                self._refit(tail.n + 1, tail.peaks, (*tail.censored, z_q - tail.t))
            return threshold, True
        self.held = (*self.held, float(score))
        self.quiet = self.quiet or len(self.held) >= self.lag
        if len(self.held) > self.lag:
            self._learn(self.held[0])
            self.held = self.held[1:]
        return threshold, False

    def _learn(self, score: float) -> None:
        """Count one normal score in ``n`` and the moving average; a new peak if it exceeds ``t``.

        A peak refits the tail on the newest ``max_peaks`` peaks; otherwise z_q only moves with ``n``.
        """
        drift, tail = self.drift, self.tail
        if self.depth:
            self.recent = (*self.recent[1:], score)
        n, excess = tail.n + 1, score - drift
        if excess > tail.t:
            self._refit(n, (*tail.peaks, excess - tail.t), tail.censored)
        elif tail.method == "no_peaks":
            self.tail = dataclasses.replace(tail, n=n)  # nothing to extrapolate from yet
        else:
            # One more normal score lowers the tail probability of every peak: move z_q with n.
            z_q = gpd_quantile(tail.t, tail.gamma, tail.sigma, tail.q, n, tail.tail_count)
            if math.isfinite(z_q) and z_q > tail.t:
                self.tail = dataclasses.replace(tail, n=n, z_q=z_q)
            else:
                # Fewer than q n scores above t: the scores fell for good (a host gone quiet for
                # hours), and the tail above t says nothing of a quantile below it. Refitting
                # says so as a fit on the same peaks would, rather than judge below t.
                self._refit(n, tail.peaks, tail.censored)

    def _refit(self, n: int, peaks: tuple[float, ...], censored: tuple[float, ...]) -> None:
        """Refit the tail on the newest ``max_peaks`` peaks and censored alarms, out of ``n`` scores."""
        tail = self.tail
        if len(peaks) > self.max_peaks:
            # The oldest peak leaves, and with it its share of n: otherwise n grows for ever while
            # the peaks do not, N_t / n shrinks and z_q sinks (Exp(1), q = 1e-3: 16x the false
            # alarms of q after 500,000 scores). The censored alarms age at the same rate, else
            # they would pile up against a window of peaks that moves on and fatten the tail.
            peaks, n = peaks[1:], max(self.max_peaks, round(n * (1 - 1 / self.max_peaks)))
            self.ageing += len(censored) / self.max_peaks
            drop = min(int(self.ageing), len(censored))
            censored, self.ageing = censored[drop:], self.ageing - drop
        censored = censored[-self.max_peaks :]
        start = (tail.gamma, tail.sigma) if tail.method == "gpd" else None
        self.tail = fit_tail(tail.t, np.asarray(peaks), n, tail.q, tail.level, censored=censored, start=start)

    def run(self, scores: np.ndarray) -> np.ndarray:
        """:meth:`update` with each score in turn; returns the threshold in force at each step (T,)."""
        scores = np.asarray(scores, dtype=np.float64).ravel()
        return np.array([self.update(float(score))[0] for score in scores], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tail": self.tail.to_dict(),
            "depth": self.depth,
            "recent": list(self.recent),
            "max_peaks": self.max_peaks,
            "allowance": self.allowance,
            "ageing": self.ageing,
        } | self._lag_fields()

    def _lag_fields(self) -> dict[str, Any]:
        # Left out at lag 0, so such a state reads as before the lag existed, also to older code;
        # ``quiet`` too whenever ``lag`` held scores say it (all but the first scores after a
        # calibration), so only a state that has just been calibrated is new to older code.
        if not self.lag:
            return {}
        fields: dict[str, Any] = {"lag": self.lag, "held": list(self.held)}
        if self.quiet != (len(self.held) == self.lag):
            fields["quiet"] = self.quiet
        return fields

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StreamingPot:
        check_known_keys(cls, data)
        # A state written without ``quiet`` (older code, or lag held scores) says it by ``held``.
        quiet = data.get("quiet", len(data.get("held", ())) == data.get("lag", 0))
        return cls(**(dict(data) | {"tail": PotState.from_dict(data["tail"]), "quiet": quiet}))


def spot_thresholds(state: PotState, scores: np.ndarray, max_peaks: int = MAX_STREAM_PEAKS, lag: int = 0) -> np.ndarray:
    """SPOT (Siffer et al. 2017, streaming part): the threshold in force at each step.

    ``state`` comes from :func:`fit_pot` on calibration (training) scores; see
    :meth:`StreamingPot.update` for the rule and ``lag``. Uses only past scores, never labels.
    Returns (T,).
    """
    return StreamingPot(state, max_peaks=max_peaks, lag=lag).run(scores)


def usable_drift_depth(calibration_scores: int, depth: int, **context: object) -> int:
    """``depth`` if DSPOT can start from that many calibration scores (more than ``depth``), else 0:
    SPOT, said once in the log with ``context`` (which model, say)."""
    if calibration_scores > depth or depth == 0:
        return depth
    log.warning(
        "dspot_needs_calibration_scores_using_spot", calibration_scores=calibration_scores, depth=depth, **context
    )
    return 0


def drift_removed(scores: np.ndarray, depth: int) -> np.ndarray:
    """DSPOT's detrending: each score minus the mean of the ``depth`` scores before it."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if depth < 1 or scores.size <= depth:
        raise ValueError(f"DSPOT needs more than depth={depth} calibration scores, got {scores.size}")
    sums = np.concatenate([[0.0], np.cumsum(scores)])
    means = (sums[depth:-1] - sums[: -depth - 1]) / depth  # mean of scores[i-depth:i], i >= depth
    return scores[depth:] - means


def dspot_thresholds(
    calibration: np.ndarray,
    scores: np.ndarray,
    depth: int,
    q: float = DEFAULT_Q,
    level: float = DEFAULT_LEVEL,
    lag: int = 0,
) -> np.ndarray:
    """DSPOT (Siffer et al. 2017): SPOT on scores minus a moving average of recent normal scores.

    The moving average follows slow drift of normal operation (a host whose baseline load
    rises), so only sudden rises count. Alarms do not enter the average. Returns the
    threshold in the original score units at each step (moving average + drift-free z_q).
    """
    return StreamingPot.calibrate(calibration, q, level, depth, lag).run(scores)
