"""Every service's config class, so that a shared env file can be validated.

A ``DRAGON_*`` variable that no service knows is a typo and is rejected; one that
another service reads is accepted silently.
"""

from __future__ import annotations

from typing import TypeVar

from dragon.collector.config import CollectorConfig
from dragon.config import env_names, load
from dragon.detector.config import DetectorConfig
from dragon.migrator.config import MigratorConfig
from dragon.planner.config import PlannerConfig
from dragon.simulator.config import SimulatorConfig

T = TypeVar("T")

CONFIG_CLASSES: tuple[type, ...] = (CollectorConfig, DetectorConfig, SimulatorConfig, PlannerConfig, MigratorConfig)


def known_env_names() -> set[str]:
    return {name for cls in CONFIG_CLASSES for name in env_names(cls)}


def load_from_env(cls: type[T]) -> T:
    """``cls`` from the environment, accepting the other services' settings (one shared env file)."""
    return load(cls, known=known_env_names())
