"""Can this engine checkpoint and restore a container? Asked once, at start-up, by trying.

``docker info`` saying ``Experimental: true`` is not enough: checkpoints then go through runc
to CRIU, which may still fail on the kernel (on these machines CRIU 3.17 cannot parse the
vDSO of kernels 6.13 and later; docs/migrator.md). So the probe checkpoints a throw-away
container through the Engine API (the docker SDK has no checkpoint call) and reports what
happened. The migrator publishes the answer on its availability topic and names it in every
move event (``mode_reason``).
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import structlog

log = structlog.get_logger(__name__)

PROBE_COMMAND = ["sleep", "30"]


@dataclass(frozen=True)
class CriuSupport:
    available: bool
    reason: str

    def capabilities(self) -> dict[str, str]:
        """As MQTT user properties on the availability message."""
        return {"criu": "available" if self.available else "unavailable", "criu_reason": self.reason[:200]}


def probe(client: Any, image: str, enabled: bool = True) -> CriuSupport:
    """Checkpoint a throw-away container of ``image`` and say whether CRIU moves can work here."""
    if not enabled:
        return CriuSupport(False, "disabled by DRAGON_MIGRATOR_CRIU=off")
    try:
        if not client.info().get("ExperimentalBuild"):
            return CriuSupport(False, "the Docker engine is not experimental (checkpoints need dockerd --experimental)")
        container = client.containers.run(
            image, PROBE_COMMAND, detach=True, name=f"dragon-criu-probe-{secrets.token_hex(4)}", network_mode="none"
        )
    except docker.errors.DockerException as exc:
        return CriuSupport(False, f"the probe container could not start: {first_line(exc)}")
    try:
        create_checkpoint(client, container.id, "probe", leave_running=True)
        return CriuSupport(True, "a running probe container was checkpointed")
    except docker.errors.APIError as exc:
        return CriuSupport(False, f"checkpointing a probe container failed: {first_line(exc)}")
    finally:
        container.remove(force=True)


def create_checkpoint(client: Any, container_id: str, name: str, leave_running: bool) -> None:
    """``POST /containers/{id}/checkpoints`` through the SDK's low-level client."""
    api = client.api
    response = api._post_json(
        api._url("/containers/{0}/checkpoints", container_id), data={"CheckpointID": name, "Exit": not leave_running}
    )
    api._raise_for_status(response)


def start_from_checkpoint(client: Any, container_id: str, name: str) -> None:
    """``POST /containers/{id}/start?checkpoint=name``: restore the checkpoint's processes."""
    api = client.api
    api._raise_for_status(api._post(api._url("/containers/{0}/start", container_id), params={"checkpoint": name}))


def copy_checkpoint(docker_root: str, source_id: str, target_id: str, name: str) -> None:
    """Put the source's checkpoint into the *target's own* checkpoints directory.

    Restoring from a custom ``--checkpoint-dir`` is broken in Docker (moby#37344); a checkpoint
    restores only from the container's own directory, and the Engine API cannot copy one there.
    """
    containers = Path(docker_root) / "containers"
    shutil.copytree(containers / source_id / "checkpoints" / name, containers / target_id / "checkpoints" / name)


def first_line(exc: Exception) -> str:
    """The first line of a Docker error's explanation (CRIU's are long)."""
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip().splitlines()[0][:300] if str(text).strip() else type(exc).__name__
