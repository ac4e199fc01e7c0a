"""Structured JSON logs for every service (structlog).

Each module takes its own logger with ``structlog.get_logger(__name__)`` and logs
events as snake_case keys with fields. :func:`configure` is called once by a
service's entry point, never at import time.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", service: str = "", json: bool = True) -> None:
    """Route structlog and stdlib logging to stderr as one JSON object a line."""
    numeric = _LEVELS[level]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    # Libraries (paho, docker, urllib3) log through the stdlib: keep their warnings.
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )


class EveryInterval:
    """Lets a line that may repeat with every message (Redis away, say) through at most once per ``interval_s``.

    The first occurrence passes at once; :meth:`due` says how many were held back since the one
    before, so the line that passes can say so.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._held_back = 0

    def reset(self) -> None:
        """The trouble is over: the next occurrence passes at once, as a first one does."""
        self._last, self._held_back = None, 0

    def due(self) -> int | None:
        """None: hold this one back. Otherwise it passes, and this many were held back before it."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_s:
            self._held_back += 1
            return None
        held_back, self._last, self._held_back = self._held_back, now, 0
        return held_back
