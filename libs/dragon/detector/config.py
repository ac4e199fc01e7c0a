"""The detector's configuration (see the table in README.md). Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from dragon.config import ConfigError, section, setting
from dragon.settings import CommonConfig, RedisSettings

POT_MODES = ("static", "spot", "dspot")
# What a model judges at once (GonConfig.scope): one host's window, or the whole LEI.
SCOPES = ("host", "lei")
# What a fault score is made of (GonConfig.fault_score, dragon.detector.gon.SCORE_TERMS): eq. 13's
# excess over the generated window, or that plus -log D of the window that arrived.
FAULT_SCORES = ("excess", "excess+unreal")
MAX_POT_DEPTH = 1000
MAX_FINETUNE_WINDOWS = 4096  # one full-batch step; also bounds the windows kept in memory
# Fewer than 2 intervals would call a host silent for one sample lost or late; more than a day's
# worth at one sample a second is no longer a fault report.
MAX_SILENT_INTERVALS = 86_400
MAX_FINETUNE_KEEP_FOR_S = 365 * 86400.0  # a year: beyond it, say 0 (kept until trimmed)
MAX_START_WINDOWS = 100  # a start held back longer is no early warning, and a typo should not switch faults off
# POT's risk q and initial quantile, for the service, `dragon-detector train` and both benches
# (dragon.detector.pot takes them as its defaults; they live here so that knowing the settings
# imports no numpy). The DRAGON and GON papers use q = 1e-4. Chosen on training data only
# (scripts/select_on_train.py --pot-q, docs/detector-quality.md "The POT risk"), 1e-3 cost the
# GON at most 0.006 F1 against it on FTSAD-25/55's held-out training tails and gained 0.15 on
# FTSAD-1's, whose 600 training scores are too few to extrapolate to a 1-in-10,000 event.
DEFAULT_Q = 1e-3
DEFAULT_LEVEL = 0.98
# SPOT/DSPOT learn each normal score this many scores late, and the first alarm after a quiet
# spell drops those not yet learnt (dragon.detector.pot.StreamingPot.lag), so a fault's onset,
# scoring just under the threshold before its first alarm, is not learnt as peaks that lift the
# bar the fault is judged by. One window length k (DRAGON_WINDOW's default): if a fault's first
# alarm comes within k windows of its first sample, no score before that alarm whose window
# held a faulty sample is learnt. Set by that reasoning, not tuned; measured in
# docs/detector-quality.md ("Learning a score only once its window is behind").
DEFAULT_POT_LAG = 10
MAX_POT_LAG = 100  # its held scores are rewritten to Redis with every batch
# `dragon-detector bench --online`: the least steps between two fine-tunes, the service's
# DRAGON_FINETUNE_MIN_INTERVAL (600 s) at FTSAD's sampling interval (10 s).
ONLINE_MIN_INTERVAL_STEPS = 60


@dataclass(frozen=True)
class DetectorConfig:
    common: CommonConfig = section(CommonConfig)
    redis: RedisSettings = section(RedisSettings)
    window: int = setting("DRAGON_WINDOW", 10, "window length k (eq. 1)", "samples")
    history: int = setting(
        "DRAGON_WINDOW_HISTORY", 8640, "samples kept per host in Redis (windows and training record)", "samples"
    )
    checkpoint: str = setting(
        "DRAGON_DETECTOR_CHECKPOINT", "", "checkpoint to serve (empty: the LEI's current model, or learn one)"
    )
    model_dir: str = setting(
        "DRAGON_DETECTOR_MODEL_DIR", "/var/lib/dragon", "where a model learned on-line is saved (a volume)"
    )
    warmup_s: float = setting(
        "DRAGON_DETECTOR_WARMUP", 300.0, "without a checkpoint: learn from this much normal operation first", "s"
    )
    warmup_min_samples: int = setting(
        "DRAGON_DETECTOR_WARMUP_MIN_SAMPLES", 30, "and from at least this many samples per host", "samples"
    )
    train_epochs: int = setting("DRAGON_DETECTOR_TRAIN_EPOCHS", 60, "epochs when learning on-line", "epochs")
    scope: str = setting(
        "DRAGON_DETECTOR_SCOPE",
        "host",
        "what a model learnt on-line judges at once: host (each host's window alone) or lei (every host of "
        "the LEI with its tasks, schedule and graph, DRAGON eq. 6-10); a served model keeps the scope it was "
        "trained with",
    )
    broker_host: str = setting(
        "DRAGON_DETECTOR_BROKER_HOST",
        "",
        "scope lei: the host the LEI's graph centres on (its broker); empty or not sampled: the first host by name",
    )
    topology: bool = setting(
        "DRAGON_DETECTOR_TOPOLOGY",
        False,
        "scope lei: learn with the graph transformer, convolutions and attention (eq. 7-10); off, the head reads "
        "each host's window and schedule encoding (better and 3x cheaper on the rpi16 traces, "
        "docs/detector-quality.md)",
    )
    fault_score: str = setting(
        "DRAGON_DETECTOR_FAULT_SCORE",
        "excess",
        "what a model learnt on-line scores: excess (eq. 13, how far the window rises above the generated one) "
        "or excess+unreal (plus -log D of the window, MAD-GAN's DR-score: better on FTSAD and rpi16, worse with "
        "DRAGON_DETECTOR_TOPOLOGY, docs/detector-quality.md); a served model keeps the score it was trained with",
    )
    pot_q: float = setting("DRAGON_POT_Q", DEFAULT_Q, "POT risk q: the false-alarm probability the threshold aims at")
    pot_level: float = setting("DRAGON_POT_LEVEL", DEFAULT_LEVEL, "POT initial quantile of the calibration scores")
    pot_mode: str = setting(
        "DRAGON_POT_MODE",
        "spot",
        "threshold of each host: static (the model's), spot (streaming POT, learns from each normal window) "
        "or dspot (spot on scores minus a moving average, follows slow drift)",
    )
    pot_depth: int = setting("DRAGON_POT_DEPTH", 20, "dspot: normal scores in the moving average", "samples")
    pot_lag: int = setting(
        "DRAGON_POT_LAG",
        DEFAULT_POT_LAG,
        "learn each normal window this many windows late: in spot/dspot an alarm after at least this many "
        "normal windows in a row, or the first since the threshold was calibrated, drops those not yet learnt "
        "(they may be the fault's onset), and fine-tuning (any mode) keeps a clean window only once as many later "
        "ones were clean; one window length at the default DRAGON_WINDOW, change them together; 0 learns at once",
        "windows",
    )
    start_windows: int = setting(
        "DRAGON_FAULT_START_WINDOWS",
        1,
        "alarms in a row before a fault starts, dated at the first of them: each one more delays every start by a "
        "window (a predicted one too, which shortens its lead) and drops alarms shorter than that; a silent host's "
        "fault starts at once; the planner acts on a fault once it has started",
        "windows",
    )
    clear_windows: int = setting(
        "DRAGON_FAULT_CLEAR_WINDOWS", 3, "normal windows in a row before a fault ends (hysteresis)", "windows"
    )
    silent_intervals: float = setting(
        "DRAGON_DETECTOR_SILENT_INTERVALS",
        10.0,
        "report a host silent (a fault event with cause silent) once this many of its sampling intervals pass "
        "without a sample while its LEI's other hosts' samples come on; 0: never",
        "intervals",
    )
    predicted: bool = setting(
        "DRAGON_DETECTOR_PREDICTED",
        True,
        "also judge the simulator's forecast of each host's next sample (predicted mode, DRAGON Alg. 2 "
        "line 4): verdicts on dragon/<lei>/hosts/<host>/health/predicted, events with mode predicted",
    )
    json_mirror: bool = setting(
        "DRAGON_FAULTS_JSON", True, "also publish every fault event as JSON on dragon/faults-json/<lei>/<host>"
    )
    finetune: bool = setting(
        "DRAGON_FINETUNE",
        True,
        "fine-tune the served model on recent normal windows when its confidence D on them drops "
        "(DRAGON eq. 19, gated as in CAROL)",
    )
    finetune_min_interval_s: float = setting(
        "DRAGON_FINETUNE_MIN_INTERVAL",
        600.0,
        "at least this long after a model is made (trained or fine-tuned) before the next fine-tune",
        "s",
    )
    finetune_quantile: float = setting(
        "DRAGON_FINETUNE_QUANTILE",
        0.01,
        "fine-tune when a host's mean confidence D over its newest normal windows (a third of the reference) "
        "falls below this quantile of its confidence on the reference windows",
    )
    finetune_reference: int = setting(
        "DRAGON_FINETUNE_REFERENCE",
        60,
        "the first normal windows of each host under a model, whose confidence is the reference (its floor is "
        "kept in Redis, so a restart under the same model keeps it)",
        "windows",
    )
    finetune_windows: int = setting(
        "DRAGON_FINETUNE_WINDOWS",
        1024,
        "newest normal windows a fine-tune learns from and recalibrates POT on, kept in Redis across restarts; "
        "a fine-tune waits for enough of them to give POT 10 peaks (500 at level 0.98), or for this many",
        "windows",
    )
    finetune_keep_for_s: float = setting(
        "DRAGON_FINETUNE_KEEP_FOR",
        86400.0,
        "the kept normal windows are forgotten when no detector of the LEI has kept one for this long, so a "
        "detector back after a long outage does not learn from the operation of days ago; 0: never",
        "s",
    )
    finetune_steps: int = setting("DRAGON_FINETUNE_STEPS", 10, "Adam steps of one fine-tune", "steps")

    def validate(self) -> None:
        if not 2 <= self.window <= 256:
            raise ConfigError("DRAGON_WINDOW must be between 2 and 256")
        if self.history < self.window + 1:
            raise ConfigError("DRAGON_WINDOW_HISTORY must exceed DRAGON_WINDOW")
        if not 0 < self.pot_q < 1 or not 0 < self.pot_level < 1:
            raise ConfigError("DRAGON_POT_Q and DRAGON_POT_LEVEL must be in (0, 1)")
        if self.pot_mode not in POT_MODES:
            raise ConfigError(f"DRAGON_POT_MODE must be one of {', '.join(POT_MODES)}")
        if not 1 <= self.pot_depth <= MAX_POT_DEPTH:
            raise ConfigError(f"DRAGON_POT_DEPTH must be between 1 and {MAX_POT_DEPTH}")
        if not 0 <= self.pot_lag <= MAX_POT_LAG:
            raise ConfigError(f"DRAGON_POT_LAG must be between 0 and {MAX_POT_LAG}")
        if self.scope not in SCOPES:
            raise ConfigError(f"DRAGON_DETECTOR_SCOPE must be one of {', '.join(SCOPES)}")
        if self.fault_score not in FAULT_SCORES:
            raise ConfigError(f"DRAGON_DETECTOR_FAULT_SCORE must be one of {', '.join(FAULT_SCORES)}")
        if not (self.silent_intervals == 0 or 2 <= self.silent_intervals <= MAX_SILENT_INTERVALS):
            raise ConfigError(
                f"DRAGON_DETECTOR_SILENT_INTERVALS must be 0 (never) or between 2 and {MAX_SILENT_INTERVALS}"
            )
        if not 1 <= self.start_windows <= MAX_START_WINDOWS:
            raise ConfigError(f"DRAGON_FAULT_START_WINDOWS must be between 1 and {MAX_START_WINDOWS}")
        if self.clear_windows < 1:
            raise ConfigError("DRAGON_FAULT_CLEAR_WINDOWS must be at least 1")
        if self.finetune_min_interval_s < 0:
            raise ConfigError("DRAGON_FINETUNE_MIN_INTERVAL must not be negative")
        if not 0 < self.finetune_quantile <= 1:
            raise ConfigError("DRAGON_FINETUNE_QUANTILE must be in (0, 1]")
        if self.finetune_reference < 3:
            raise ConfigError("DRAGON_FINETUNE_REFERENCE must be at least 3")
        if not 2 <= self.finetune_windows <= MAX_FINETUNE_WINDOWS:
            raise ConfigError(f"DRAGON_FINETUNE_WINDOWS must be between 2 and {MAX_FINETUNE_WINDOWS}")
        if not (self.finetune_keep_for_s == 0 or 1 <= self.finetune_keep_for_s <= MAX_FINETUNE_KEEP_FOR_S):
            # NaN fails both comparisons; below 1 s the expiry would round to "never" or expire at once.
            raise ConfigError(
                f"DRAGON_FINETUNE_KEEP_FOR must be 0 (never) or between 1 and {MAX_FINETUNE_KEEP_FOR_S:g} s"
            )
        if self.finetune_steps < 1:
            raise ConfigError("DRAGON_FINETUNE_STEPS must be at least 1")
