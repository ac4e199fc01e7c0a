"""What a task needs on another machine before it can run there: its image and its volumes' data.

Only for moves between engines; on one engine (emulated hosts) both are simply there. Both are
streamed engine to engine through the Engine API (image save/load; a volume's files as a tar
from a throw-away container on each side), never through a registry: there may be none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker.errors
import structlog

from dragon.migrator.engines import found

log = structlog.get_logger(__name__)

CHUNK = 1 << 20
COPY_LABEL = "dragon.move.copy"  # on a volume copy's throw-away containers: the move they copy for


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


def copy_volumes(source: Any, target: Any, container: Any, image: str, move_id: str) -> list[str]:
    """Copy each named volume's files to a volume of the same name on the target engine."""
    copied = []
    for volume, _ in named_volumes(container):
        target.volumes.create(volume)  # checked free before the move began (check_portable)
        with (
            _copy_container(source, image, volume, "ro", move_id) as reader,
            _copy_container(target, image, volume, "rw", move_id) as writer,
        ):
            stream, _ = reader.get_archive("/volume/.", chunk_size=CHUNK)
            writer.put_archive("/volume", stream)  # streamed: a volume need not fit in memory
        copied.append(volume)
    return copied


@contextmanager
def _copy_container(client: Any, image: str, volume: str, mode: str, move_id: str) -> Iterator[Any]:
    """A throw-away container with ``volume`` at /volume, removed on the way out.

    Labelled with its move: a migrator killed mid-copy leaves it behind, holding the volume (the
    copy could then not be removed, nor the source's volume), and the move's roll back finds it
    by that label (:func:`remove_copy_containers`).
    """
    helper = client.containers.create(
        image, ["true"], volumes={volume: {"bind": "/volume", "mode": mode}}, labels={COPY_LABEL: move_id}
    )
    try:
        yield helper
    finally:
        helper.remove(force=True, v=True)  # v: with the anonymous volumes an image's VOLUME gave it


def remove_copy_containers(client: Any, move_id: str) -> None:
    """Remove what :func:`copy_volumes` of move ``move_id`` left on an engine (a migrator killed mid-copy)."""
    for helper in client.containers.list(all=True, filters={"label": f"{COPY_LABEL}={move_id}"}):
        log.warning("copy_container_removed", id=move_id, container=helper.name)
        helper.remove(force=True, v=True)


def _same_image(client: Any, name: str, image_id: str) -> bool:
    try:
        return client.images.get(name).id == image_id
    except docker.errors.ImageNotFound:
        return False
