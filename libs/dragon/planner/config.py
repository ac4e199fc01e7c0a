"""The planner's configuration (see the table in README.md)."""

from __future__ import annotations

from dataclasses import dataclass

from dragon.config import ConfigError, section, setting
from dragon.migrator.config import CommandSettings
from dragon.settings import CommonConfig
from dragon.simulator.config import CoSimSettings


@dataclass(frozen=True)
class PlannerConfig:
    common: CommonConfig = section(CommonConfig)
    cosim: CoSimSettings = section(CoSimSettings)
    commands: CommandSettings = section(CommandSettings)
    interval_s: float = setting(
        "DRAGON_PLANNER_INTERVAL", 10.0, "how often the planner decides while a host of its LEI is faulty", "s"
    )
    look_ahead: int = setting(
        "DRAGON_PLANNER_LOOKAHEAD", 1, "intervals planned ahead: 1 is DRAGON (Alg. 2), more is DRAGON+ (Alg. 3, N = 5)"
    )
    health_max_age_s: float = setting(
        "DRAGON_PLANNER_HEALTH_MAX_AGE",
        60.0,
        "a fault verdict older than this is not acted on (since it arrived, plus how late it came)",
        "s",
    )
    chains: int = setting("DRAGON_PLANNER_CHAINS", 16, "simulated annealing: independent chains")
    steps: int = setting(
        "DRAGON_PLANNER_STEPS", 150, "simulated annealing: steps per chain, plus 4 per task on a faulty host"
    )
    seed: int = setting("DRAGON_PLANNER_SEED", -1, "seed of the annealing (-1: a fresh one per decision)")
    move_cooldown_s: float = setting(
        "DRAGON_PLANNER_MOVE_COOLDOWN",
        60.0,
        "a task is not moved again for this long after it came to its host or its move was answered",
        "s",
    )
    command_timeout_s: float = setting(
        "DRAGON_PLANNER_COMMAND_TIMEOUT",
        120.0,
        "a task whose command the migrator has not answered may be commanded again after this long",
        "s",
    )

    def validate(self) -> None:
        if self.interval_s <= 0 or self.health_max_age_s <= 0:
            raise ConfigError("DRAGON_PLANNER_INTERVAL and DRAGON_PLANNER_HEALTH_MAX_AGE must be positive")
        if not 1 <= self.look_ahead <= 20:
            raise ConfigError("DRAGON_PLANNER_LOOKAHEAD must be between 1 and 20")
        if self.chains < 1 or self.steps < 1:
            raise ConfigError("DRAGON_PLANNER_CHAINS and DRAGON_PLANNER_STEPS must be at least 1")
        if self.move_cooldown_s < 0 or self.command_timeout_s <= 0:
            raise ConfigError(
                "DRAGON_PLANNER_MOVE_COOLDOWN must not be negative, DRAGON_PLANNER_COMMAND_TIMEOUT positive"
            )

    @property
    def mode(self) -> str:
        return "dragon" if self.look_ahead == 1 else "dragon+"
