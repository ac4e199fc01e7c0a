"""A second Docker engine on this machine: a "remote" host with its own engine, for tests.

``dockerd`` with its own data root, exec root, socket and default bridge (an interface of its
own) and no iptables rules, so it cannot disturb the machine's own engine. Not ``--bridge=none``:
dockerd then deletes ``docker0``, the default bridge of the machine's own engine (seen here).
Its image store starts empty, like a freshly installed edge device's.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors
import requests

START_TIMEOUT_S = 60
PROBE_API_VERSION = "1.41"  # Docker 20.10; later engines still serve it


class EngineUnavailable(RuntimeError):
    """No second engine can run here (not root, or no dockerd)."""


@contextmanager
def second_engine(workdir: Path) -> Iterator[str]:
    """Run a second dockerd under ``workdir``; yield its ``unix://`` URL; stop it and remove its data."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineUnavailable("dockerd is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    bridge = own_bridge()
    socket = workdir / "docker.sock"
    log = (workdir / "dockerd.log").open("w")
    command = [
        dockerd,
        f"--data-root={workdir / 'root'}",
        f"--exec-root={workdir / 'exec'}",
        f"--pidfile={workdir / 'dockerd.pid'}",
        f"--host=unix://{socket}",
        f"--bridge={bridge}",
        "--iptables=false",
        "--ip6tables=false",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"unix://{socket}"
    try:
        _wait_until_up(url, process, workdir)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(workdir / "root", ignore_errors=True)
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)


def own_bridge() -> str:
    """A new bridge interface with a private /24 of its own, for the second engine's containers."""
    if shutil.which("ip") is None:
        raise EngineUnavailable("the ip command (iproute2) is not installed")
    name = f"drgn{secrets.token_hex(3)}"
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    for command in (
        ["ip", "link", "add", name, "type", "bridge"],
        ["ip", "addr", "add", f"{subnet}.1/24", "dev", name],
        ["ip", "link", "set", name, "up"],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["ip", "link", "delete", name], capture_output=True)
            raise EngineUnavailable(f"{' '.join(command)}: {done.stderr.strip()}")
    return name


def _wait_until_up(url: str, process: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineUnavailable(f"dockerd exited: {(workdir / 'dockerd.log').read_text()[-2000:]}")
        # Only once the socket exists: a failed connect leaks its socket inside docker-py.
        if (workdir / "docker.sock").exists() and _answers(url):
            return
        time.sleep(0.3)
    raise EngineUnavailable(f"dockerd did not answer within {START_TIMEOUT_S} s")


def _answers(url: str) -> bool:
    # A pinned API version: the client then asks nothing while it is built (asking a daemon that
    # is not up yet fails inside the constructor and leaks its socket).
    client = docker.APIClient(base_url=url, version=PROBE_API_VERSION)
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, requests.exceptions.ConnectionError):
        return False
    finally:
        client.close()
