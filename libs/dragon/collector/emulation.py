"""Emulated hosts of one LEI on one machine: a parent cgroup each, with demo tasks.

``EmulatedLei.ensure_host`` creates ``<prefix>/<lei>/<host>`` with the host's CPU and
memory limits; ``ensure_demo_tasks`` starts demo task containers in it (Docker's
``cgroup_parent``) on the LEI's Docker network, where a flood hog can reach them.
Everything is found again by name and labels, so calling the ``ensure_*`` methods after
a collector restart changes nothing that is already right.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker.errors
import structlog

from dragon.collector.cgroups import DEFAULT_ROOT, CgroupError, CgroupHost, emulated_host_path, emulated_lei_path
from dragon.collector.docker_api import (
    DOCKER_ERRORS,
    HOST_LABEL,
    LEI_LABEL,
    MANAGED_LABEL,
    PORT_LABEL,
    TASK_LABEL,
    WORKLOAD_LABEL,
    unanswered,
)
from dragon.collector.injector import container_name
from dragon.settings import check_id

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
MANAGER = "collector"


@dataclass(frozen=True)
class EmulatedHostSpec:
    """One emulated host: its name (an MQTT topic level), CPU cores and memory."""

    name: str
    cpus: float
    memory_mb: int

    def __post_init__(self) -> None:
        check_id("host name", self.name)
        if self.cpus <= 0:
            raise ValueError(f"host {self.name}: cpus must be positive")
        if self.memory_mb <= 0:
            raise ValueError(f"host {self.name}: memory_mb must be positive")


class EmulationUnsupported(RuntimeError):
    """This Docker engine cannot run emulated hosts."""


def require_cgroupfs_driver(docker_info: Mapping[str, Any]) -> None:
    """Emulated hosts are cgroups their containers join with ``--cgroup-parent=/dragon/<lei>/<host>``,
    a path of Docker's ``cgroupfs`` cgroup driver: under the ``systemd`` driver Docker takes only
    ``*.slice`` names there and refuses every demo task and fault. Raise, saying what to do, unless
    ``docker_info`` (``docker info``) names the cgroupfs driver."""
    driver = docker_info.get("CgroupDriver", "")
    if driver and driver != "cgroupfs":
        raise EmulationUnsupported(
            f"Docker runs with the {driver!r} cgroup driver; emulated hosts need 'cgroupfs': add "
            '"exec-opts": ["native.cgroupdriver=cgroupfs"] to /etc/docker/daemon.json and restart Docker, or '
            "protect this machine as a real host (DRAGON_COLLECTOR_PROBE=psutil, DRAGON_EMULATE=false, "
            "DRAGON_INJECTOR=false, DRAGON_COLLECTOR_HOSTS=<its id>)"
        )


class EmulatedLei:
    """The emulated hosts of LEI ``lei``: cgroups under ``<cgroup_prefix>/<lei>``, demo
    task containers (``image``) on Docker network ``network`` (default ``dragon-<lei>``;
    created, labelled as ours, when missing)."""

    def __init__(
        self,
        docker_client: Any,
        lei: str,
        cgroup_root: str | os.PathLike[str] = DEFAULT_ROOT,
        image: str = "dragon-collector:local",
        network: str | None = None,
        *,
        cgroup_prefix: str = "dragon",
        proc_root: str | os.PathLike[str] = "/proc",
        task_memory_mb: int = 64,
        demo_port: int = 8080,
    ) -> None:
        check_id("lei", lei)
        self._client = docker_client
        self.lei = lei
        self.cgroup_root = cgroup_root
        self.image = image
        self.network = network or f"dragon-{lei}"
        self.cgroup_prefix = cgroup_prefix.strip("/")
        self._proc_root = proc_root
        self.task_memory_mb = task_memory_mb
        self.demo_port = demo_port

    def cgroup(self, host: str) -> CgroupHost:
        """The cgroup of emulated host ``host`` (it may not exist yet)."""
        check_id("host name", host)
        path = emulated_host_path(self.lei, host, self.cgroup_prefix)
        return CgroupHost(path, self.cgroup_root, proc_root=self._proc_root)

    def ensure_host(self, spec: EmulatedHostSpec) -> CgroupHost:
        cgroup = self.cgroup(spec.name)
        cgroup.ensure(cpus=spec.cpus, memory_bytes=spec.memory_mb * MIB)
        return cgroup

    def ensure_network(self) -> None:
        try:
            self._client.networks.get(self.network)
            return
        except docker.errors.NotFound:
            pass
        try:
            self._client.networks.create(
                self.network, driver="bridge", labels={LEI_LABEL: self.lei, MANAGED_LABEL: MANAGER}
            )
            log.info("lei_network_created", lei=self.lei, network=self.network)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: another collector created it meanwhile
                raise

    def ensure_demo_tasks(self, spec: EmulatedHostSpec, count: int) -> list[Any]:
        """Demo task containers ``<lei>-<host>-demo<i>`` for i < count, running; returns them."""
        self.ensure_network()
        cgroup = self.cgroup(spec.name)
        # By name, wherever it runs now: the migrator may have moved a demo task to another host
        # (or LEI); it keeps its name, and starting a second copy would fail on that name anyway.
        labels = [f"{TASK_LABEL}=true", f"{MANAGED_LABEL}={MANAGER}"]
        existing = {c.name: c for c in self._client.containers.list(all=True, filters={"label": labels})}
        tasks = []
        for index in range(count):
            name = container_name("dragon", self.lei, spec.name, f"demo{index}")
            container = existing.get(name)
            if container is None:
                container = self._run_demo(name, spec.name, cgroup)
            elif container.status != "running":
                container.start()
                log.info("demo_task_restarted", lei=self.lei, host=spec.name, container=name)
            tasks.append(container)
        return tasks

    def _run_demo(self, name: str, host: str, cgroup: CgroupHost) -> Any:
        memory = f"{self.task_memory_mb}m"
        container = self._client.containers.run(
            self.image,
            ["python3", "-m", "dragon.collector.workloads", "demo", "--port", str(self.demo_port), "--duration", "0"],
            name=name,
            detach=True,
            labels={
                TASK_LABEL: "true",
                LEI_LABEL: self.lei,
                HOST_LABEL: host,
                MANAGED_LABEL: MANAGER,
                WORKLOAD_LABEL: "demo",
                PORT_LABEL: str(self.demo_port),
            },
            cgroup_parent=cgroup.cgroup_parent,
            network=self.network,
            restart_policy={"Name": "unless-stopped"},
            # No CPU limit: on cgroup v1 a child's quota may not exceed its parent's, and
            # the host's quota already caps the task.
            mem_limit=memory,
            memswap_limit=memory,
            environment={"PYTHONUNBUFFERED": "1"},
        )
        log.info("demo_task_started", lei=self.lei, host=host, container=name, cgroup=cgroup.parent)
        return container

    def remove_all(self) -> None:
        """Remove this LEI's managed containers (tasks and fault hogs), its host cgroups and
        the network if this class created it. For tests and ``down``.

        Each step whatever the one before met: a removal Docker refuses must not leave the other
        containers, the cgroups and the network behind. A call Docker does not answer in time
        ends the Docker calls: the next would wait as long, past the stop's grace period.
        """
        answering = self._remove_containers()
        try:
            lei_path = emulated_lei_path(self.lei, self.cgroup_prefix)
            CgroupHost(lei_path, self.cgroup_root, proc_root=self._proc_root).remove()
        except CgroupError as exc:
            # Still busy: a container someone else started in one of the hosts, or one not removed.
            log.warning("lei_cgroups_not_removed", lei=self.lei, error=str(exc))
        if answering:
            self._remove_network()
        else:
            log.warning("lei_network_not_removed", lei=self.lei, network=self.network, error="Docker does not answer")

    def _remove_containers(self) -> bool:
        """Remove the managed containers; False when Docker stopped answering."""
        filters = {"label": [f"{LEI_LABEL}={self.lei}", f"{MANAGED_LABEL}={MANAGER}"]}
        try:
            containers = self._client.containers.list(all=True, filters=filters)
        except DOCKER_ERRORS as exc:
            log.warning("managed_containers_not_listed", lei=self.lei, error=str(exc))
            return not unanswered(exc)
        for container in containers:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except DOCKER_ERRORS as exc:
                log.warning("managed_container_not_removed", lei=self.lei, container=container.name, error=str(exc))
                if unanswered(exc):
                    return False
                continue  # refused (409: a removal in progress, say): the next may go
            log.info("managed_container_removed", lei=self.lei, container=container.name)
        return True

    def _remove_network(self) -> None:
        try:
            network = self._client.networks.get(self.network)
            labels = network.attrs.get("Labels") or {}
            if labels.get(MANAGED_LABEL) == MANAGER and labels.get(LEI_LABEL) == self.lei:
                network.remove()
                log.info("lei_network_removed", lei=self.lei, network=self.network)
        except docker.errors.NotFound:
            pass
        except DOCKER_ERRORS as exc:
            log.warning("lei_network_not_removed", lei=self.lei, network=self.network, error=str(exc))
