"""What DRAGON's containers carry for Docker, and what a Docker call can raise.

The labels are how the collector, the fault injector and the migrator know a container: whose
LEI and host it runs on, whether it is a task or a fault's hog, and who started it.
"""

from __future__ import annotations

from collections.abc import Mapping

import docker.errors
import requests.exceptions

from dragon.messages.schema import MAX_STR

LEI_LABEL = "dragon.lei"
HOST_LABEL = "dragon.host"
TASK_LABEL = "dragon.task"  # "true": a task the collector measures and the planner may move
TASK_ID_LABEL = "dragon.task.id"  # the task's id across moves (none: its container's name)
MANAGED_LABEL = "dragon.managed-by"  # the service that started it, and removes it
WORKLOAD_LABEL = "dragon.workload"
PORT_LABEL = "dragon.port"
FAULT_LABEL = "dragon.fault"  # "true": a fault's hog, which counts for its host but is no task
FAULT_ID_LABEL = "dragon.fault.id"
FAULT_KIND_LABEL = "dragon.fault.kind"
STARTED_LABEL = "dragon.fault.started-at"
ENDS_LABEL = "dragon.fault.ends-at"

# A daemon that refuses (DockerException) or does not answer in time (requests' errors).
DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def task_id(labels: Mapping[str, str], name: str) -> str:
    """The task a container runs: its ``dragon.task.id`` label, else its name."""
    return labels.get(TASK_ID_LABEL) or name


def reportable(task: str) -> bool:
    """Whether a message may carry task id ``task``: every reader refuses a sample or schedule
    with a longer one, whole, and its host or LEI would look silent or unscheduled."""
    return len(task) <= MAX_STR


def unanswered(error: BaseException) -> bool:
    """A call the daemon did not answer (a timeout, a connection refused), not one it refused:
    the SDK's APIError (a 409, say) is a requests HTTPError too, and is an answer."""
    return isinstance(error, requests.exceptions.RequestException) and not isinstance(error, docker.errors.APIError)
