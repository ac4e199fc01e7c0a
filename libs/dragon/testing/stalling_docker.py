"""A Docker daemon that stops answering on demand: a Unix socket relayed to the real daemon's.

A daemon that hangs (its disk at its limit, a restart half done) accepts connections and
requests and answers none. :class:`StallingDocker` relays every connection to the real
daemon and, between :meth:`StallingDocker.stall` and :meth:`StallingDocker.resume`, holds each
request (or each whose request line holds a given text) where it is: the Docker SDK pointed at
:attr:`StallingDocker.url` sees a hung daemon, then the same daemon answering again.

    with StallingDocker(workdir) as daemon:
        client = docker.DockerClient(base_url=daemon.url)
        daemon.stall()  # every call from now on waits
        daemon.stall("DELETE ")  # removals only; stall("/containers/json"): container lists only
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
from pathlib import Path
from types import TracebackType

CHUNK = 65536
POLL_S = 0.05  # how often a held request looks at the flag again


def daemon_socket() -> str:
    """The real daemon's socket: ``DOCKER_HOST`` when it names one, else Docker's default."""
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else "/var/run/docker.sock"


class _Relay(socketserver.BaseRequestHandler):
    server: _RelayServer

    def handle(self) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.server.upstream)
        answers = threading.Thread(target=self._pump, args=(upstream, self.request, False), daemon=True)
        answers.start()
        self._pump(self.request, upstream, True)
        answers.join()
        upstream.close()

    def _pump(self, source: socket.socket, target: socket.socket, held: bool) -> None:
        """Copy ``source`` to ``target`` until either closes; ``held``: wait while stalled."""
        try:
            while chunk := source.recv(CHUNK):
                if held and self.server.holds(chunk):
                    self.server.count_held()
                    while self.server.stalled.is_set() and not self.server.closing.is_set():
                        self.server.closing.wait(POLL_S)
                target.sendall(chunk)
        except OSError:
            pass  # the other side went away
        finally:
            for side in (source, target):
                try:
                    side.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _RelayServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, upstream: str) -> None:
        self.upstream = upstream
        self.stalled = threading.Event()
        self.closing = threading.Event()
        self.matching = b""  # hold only requests whose request line holds this (b"": every request)
        self.held = 0  # requests (or parts of one) held while stalled
        self._lock = threading.Lock()
        super().__init__(path, _Relay)

    def holds(self, chunk: bytes) -> bool:
        """Whether ``chunk``, on its way to the daemon, waits (a request's first chunk starts with
        its request line; with no text to match, every chunk waits)."""
        return self.stalled.is_set() and self.matching in chunk.split(b"\r\n", 1)[0]

    def count_held(self) -> None:
        with self._lock:
            self.held += 1


class StallingDocker:
    """The real daemon behind ``<workdir>/docker.sock``, hung between :meth:`stall` and :meth:`resume`."""

    def __init__(self, workdir: Path, upstream: str | None = None) -> None:
        self.path = workdir / "docker.sock"
        self._server = _RelayServer(str(self.path), upstream or daemon_socket())
        self._thread = threading.Thread(target=self._server.serve_forever, name="stalling-docker", daemon=True)

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def stall(self, matching: str = "") -> None:
        """Hold every request from now on, or only those whose request line holds ``matching``."""
        self._server.matching = matching.encode()
        self._server.stalled.set()

    def resume(self) -> None:
        """Let the held requests go on, and the next ones through."""
        self._server.stalled.clear()

    @property
    def held(self) -> int:
        """How many requests (or parts of one) arrived while stalled: a client did wait."""
        return self._server.held

    def __enter__(self) -> StallingDocker:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.closing.set()  # lets held requests go
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
