"""Where each host's containers run: the Docker engine that reaches it, and its parent cgroup.

Two kinds of host, mixed freely in one LEI:

- an **emulated host** (the default): a parent cgroup of the broker's own engine, made by the
  collector (``dragon/<lei>/<host>``); a container moves there by ``--cgroup-parent``;
- a **machine with its own engine**, from ``DRAGON_MIGRATOR_ENDPOINTS``: ``host=url`` pairs
  (``lei/host=url`` for another LEI's host), where url is ``unix:///path/docker.sock``,
  ``tcp://address:2376`` (with TLS from ``DRAGON_MIGRATOR_TLS_DIR``: ca.pem, cert.pem, key.pem,
  Docker's own layout).

Not ``ssh://``: the docker SDK reaches an engine over ssh through paramiko or the ``ssh`` binary
and its keys, none of which the migrator's image carries; mutual TLS is Docker's own way to
open an engine to the network, and needs nothing but three files.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.tls
import requests
import structlog

from dragon.collector.cgroups import CgroupHost, emulated_host_path

log = structlog.get_logger(__name__)

LOCAL = "local"
# What an engine can raise: the SDK does not wrap requests' connection errors and timeouts.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class EngineUnreachable(RuntimeError):
    """A machine's engine does not answer (its client cannot even be made)."""


PROBE_API_VERSION = "1.24"  # any version: only used to ask the engine for its own


@dataclass(frozen=True)
class Engine:
    """A Docker engine: ``name`` (its URL, or ``local``) and its client."""

    name: str
    client: Any


class Engines:
    """The engines of the hosts a migrator may move tasks between."""

    def __init__(
        self,
        local: Any,
        cgroup_root: str,
        endpoints: dict[tuple[str, str], str] | None = None,
        tls_dir: str = "",
    ) -> None:
        self.local = Engine(LOCAL, local)
        self.cgroup_root = cgroup_root
        self.endpoints = dict(endpoints or {})
        self.tls_dir = tls_dir
        self._clients: dict[str, Engine] = {}
        self._lock = threading.Lock()  # clients are made on first use, from the MQTT worker or the main thread

    def of(self, lei: str, host: str) -> Engine:
        """The engine of ``lei``/``host``; EngineUnreachable if its client cannot be made now."""
        url = self.endpoints.get((lei, host))
        if url is None:
            return self.local
        with self._lock:
            if url not in self._clients:
                try:
                    self._clients[url] = Engine(url, self._connect(url))
                except ENGINE_ERRORS as exc:
                    raise EngineUnreachable(f"the engine at {url} does not answer: {exc}") from exc
            return self._clients[url]

    def name_of(self, lei: str, host: str) -> str:
        """The name of ``lei``/``host``'s engine (as :attr:`Engine.name`), without reaching it."""
        return self.endpoints.get((lei, host), LOCAL)

    def cgroup_parent(self, lei: str, host: str) -> str | None:
        """An emulated host's parent cgroup; None for a machine with its own engine."""
        if (lei, host) in self.endpoints:
            return None
        return CgroupHost(emulated_host_path(lei, host), self.cgroup_root).cgroup_parent

    def exists(self, lei: str, host: str) -> bool:
        """An emulated host exists once its cgroup does (Docker would make a missing one, with no
        limits); a machine, when its engine answers."""
        if (lei, host) not in self.endpoints:
            return CgroupHost(emulated_host_path(lei, host), self.cgroup_root).exists()
        try:
            return bool(self.of(lei, host).client.ping())
        except (*ENGINE_ERRORS, EngineUnreachable):
            return False

    def of_lei(self, lei: str, strict: bool = False) -> list[Engine]:
        """Every engine where ``lei``'s tasks may run: the local one and its machines'. One that
        does not answer is left out (logged), or, ``strict``, raises EngineUnreachable."""
        return self._reachable([key for key in sorted(self.endpoints) if key[0] == lei], strict)

    def all(self, strict: bool = False) -> list[Engine]:
        """The local engine and every configured machine's, of any LEI (see :meth:`of_lei`)."""
        return self._reachable(sorted(self.endpoints), strict)

    def all_and_unreachable(self) -> tuple[list[Engine], list[str]]:
        """The engines :meth:`all` gives, and the configured machines (``lei/host``) out of reach."""
        unreachable: list[str] = []
        return self._reachable(sorted(self.endpoints), False, unreachable), unreachable

    def _reachable(
        self, hosts: list[tuple[str, str]], strict: bool, unreachable: list[str] | None = None
    ) -> list[Engine]:
        engines = {LOCAL: self.local}
        for lei, host in hosts:
            try:
                engine = self.of(lei, host)
            except EngineUnreachable as exc:
                if strict:
                    raise
                log.error("engine_unreachable", host=f"{lei}/{host}", error=str(exc)[:300])
                if unreachable is not None:
                    unreachable.append(f"{lei}/{host}")
                continue
            engines[engine.name] = engine
        return list(engines.values())

    def close(self) -> None:
        for engine in self._clients.values():
            engine.client.close()

    def _connect(self, url: str) -> Any:
        if url.startswith("unix://") and not Path(url.removeprefix("unix://")).exists():
            # Checked first: docker-py leaks the socket of a failed first connection.
            raise docker.errors.DockerException(f"no socket at {url}")
        if url.startswith("tcp://") and self.tls_dir:
            tls_dir = Path(self.tls_dir)
            tls = docker.tls.TLSConfig(
                client_cert=(str(tls_dir / "cert.pem"), str(tls_dir / "key.pem")),
                ca_cert=str(tls_dir / "ca.pem"),
                verify=True,
            )
            return _tls_client(url.replace("tcp://", "https://", 1), tls)
        return docker.DockerClient(base_url=url)


def _tls_client(url: str, tls: docker.tls.TLSConfig) -> Any:
    """A client that trusts our CA only.

    requests prefers REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) from the environment to the CA the
    session was given (psf/requests#3829), so the engine's certificate would be checked against
    the system's CAs and refused. Clients here ignore the environment; the API version is asked
    first (without a version prefix, which every engine serves) since the SDK's own "auto" asks
    before we can switch the environment off.
    """
    probe = docker.APIClient(base_url=url, tls=tls, version=PROBE_API_VERSION)
    probe.trust_env = False
    try:
        version = probe.version(api_version=False)["ApiVersion"]
    finally:
        probe.close()
    client = docker.DockerClient(base_url=url, tls=tls, version=version)
    client.api.trust_env = False
    return client


def container_named(client: Any, name: str) -> bool:
    """Whether an engine has a container named exactly ``name``. Not :func:`found`: Docker's lookup
    also takes a name for an id prefix, so a task named ``db`` would clash with any container whose
    id starts with ``db``."""
    return any(c.name == name for c in client.containers.list(all=True, filters={"name": name}))


def found(collection: Any, key: str) -> bool:
    """Whether an engine's containers, networks, volumes or images hold ``key`` (a name or id)."""
    try:
        collection.get(key)
    except docker.errors.NotFound:
        return False
    return True
