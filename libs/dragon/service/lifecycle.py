"""Service lifecycle: one stop event set by SIGTERM/SIGINT, a health marker file.

A service's ``run()`` reads top to bottom as ``init_*``/``start_*`` steps, then
waits on :attr:`Lifecycle.stop` and tears down in reverse order. The container
healthcheck reads the marker file, which the service touches while it is
healthy (connected and working) and removes when it is not.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class Lifecycle:
    def __init__(self, health_file: str) -> None:
        self.stop = threading.Event()
        self._health = Path(health_file) if health_file else None

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.stop.set()

    def healthy(self, ok: bool) -> None:
        """Touch the marker (its mtime says how recent the last good beat was) or remove it."""
        if self._health is None:
            return
        if ok:
            self._health.touch()
        else:
            self._health.unlink(missing_ok=True)

    def clear(self) -> None:
        self.healthy(False)


def health_check(health_file: str, max_age_s: float) -> int:
    """Exit code for the container healthcheck: 0 when the marker is fresh."""
    path = Path(health_file)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 1
    return 0 if age <= max_age_s else 1
