"""What a task needs on another machine before it can run there: its image and its volumes' data.

Only for moves between engines; on one engine (emulated hosts) both are simply there. Both are
streamed engine to engine through the Engine API (image save/load; a volume's files as a tar
from a throw-away container on each side), never through a registry: there may be none.
"""

from __future__ import annotations

from typing import Any

import docker.errors
import structlog

from dragon.migrator.engines import found

log = structlog.get_logger(__name__)

CHUNK = 1 << 20


class TransferError(RuntimeError):
    """What the task needs cannot follow it to the target machine."""


def named_volumes(container: Any) -> list[tuple[str, str]]:
    """(volume name, mount point) of each named volume the container uses."""
    return [(m["Name"], m["Destination"]) for m in container.attrs.get("Mounts") or [] if m.get("Type") == "volume"]


def check_portable(container: Any, target: Any) -> None:
    """Raise TransferError unless the container can move to the ``target`` engine: no bind mounts
    (they stay on their machine), and none of its volumes' names taken there (copying into a
    volume some other container there may use would overwrite its data)."""
    binds = [m["Source"] for m in container.attrs.get("Mounts") or [] if m.get("Type") == "bind"]
    if binds:
        raise TransferError(f"bind mounts stay on their machine: {', '.join(binds)}")
    taken = [volume for volume, _ in named_volumes(container) if found(target.volumes, volume)]
    if taken:
        raise TransferError(f"the target machine has volumes of the same name already: {', '.join(taken)}")


def ensure_image(source: Any, target: Any, container: Any) -> bool:
    """Copy the container's image to the target engine unless it has it; True if copied."""
    image_id = container.attrs["Image"]
    try:
        target.images.get(image_id)
        return False
    except docker.errors.ImageNotFound:
        pass
    name = container.attrs["Config"]["Image"]  # the tag it was run from, so the copy carries it
    reference = name if _same_image(source, name, image_id) else image_id
    for status in target.api.load_image(source.api.get_image(reference, chunk_size=CHUNK)):
        if "error" in status or "errorDetail" in status:
            raise TransferError(f"the target engine could not load {reference}: {status.get('error', status)}")
    log.info("image_copied", image=reference)
    return True


def copy_volumes(source: Any, target: Any, container: Any, image: str) -> list[str]:
    """Copy each named volume's files to a volume of the same name on the target engine."""
    copied = []
    for volume, _ in named_volumes(container):
        target.volumes.create(volume)  # checked free before the move began (check_portable)
        reader = source.containers.create(image, ["true"], volumes={volume: {"bind": "/volume", "mode": "ro"}})
        writer = target.containers.create(image, ["true"], volumes={volume: {"bind": "/volume", "mode": "rw"}})
        try:
            stream, _ = reader.get_archive("/volume/.", chunk_size=CHUNK)
            writer.put_archive("/volume", stream)  # streamed: a volume need not fit in memory
        finally:
            reader.remove(force=True)
            writer.remove(force=True)
        copied.append(volume)
    return copied


def _same_image(client: Any, name: str, image_id: str) -> bool:
    try:
        return client.images.get(name).id == image_id
    except docker.errors.ImageNotFound:
        return False
