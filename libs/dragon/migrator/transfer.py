"""What a task needs on another machine before it can run there: its image and its volumes' data.

Only for moves between engines; on one engine (emulated hosts) both are simply there. Both are
streamed engine to engine through the Engine API (image save/load; a volume's files as a tar
from a throw-away container on each side), never through a registry: there may be none.
"""

from __future__ import annotations

from typing import Any

import docker.errors
import structlog

log = structlog.get_logger(__name__)

CHUNK = 1 << 20


class TransferError(RuntimeError):
    """What the task needs cannot follow it to the target machine."""


def named_volumes(container: Any) -> list[tuple[str, str]]:
    """(volume name, mount point) of each named volume the container uses."""
    return [(m["Name"], m["Destination"]) for m in container.attrs.get("Mounts") or [] if m.get("Type") == "volume"]


def check_portable(container: Any) -> None:
    """Raise TransferError if the container uses what cannot leave its machine (bind mounts)."""
    binds = [m["Source"] for m in container.attrs.get("Mounts") or [] if m.get("Type") == "bind"]
    if binds:
        raise TransferError(f"bind mounts stay on their machine: {', '.join(binds)}")


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
    target.api.load_image(source.api.get_image(reference, chunk_size=CHUNK))
    log.info("image_copied", image=reference)
    return True


def copy_volumes(source: Any, target: Any, container: Any, image: str) -> list[str]:
    """Copy each named volume's files to a volume of the same name on the target engine."""
    copied = []
    for volume, _ in named_volumes(container):
        try:
            target.volumes.get(volume)
        except docker.errors.NotFound:
            target.volumes.create(volume)
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
