"""A second Docker engine on this machine: a "remote" host with its own engine, for tests.

``dockerd`` with its own data root, exec root, socket and default bridge (an interface of its
own) and no iptables rules, so it cannot disturb the machine's own engine. Not ``--bridge=none``:
dockerd then deletes ``docker0``, the default bridge of the machine's own engine (seen here).
Its image store starts empty, like a freshly installed edge device's. It also listens on
``tcp://127.0.0.1:<port>`` with mutual TLS (a throw-away CA made with ``openssl``), the way a
remote edge device's engine is reached.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests

START_TIMEOUT_S = 60
PROBE_API_VERSION = "1.41"  # Docker 20.10; later engines still serve it


class EngineUnavailable(RuntimeError):
    """No second engine can run here (not root, or no dockerd, ip or openssl)."""


@dataclass(frozen=True)
class SecondEngine:
    unix_url: str
    tls_url: str  # tcp://127.0.0.1:<port>, mutual TLS
    tls_dir: str  # the client's ca.pem, cert.pem and key.pem (Docker's layout)


@contextmanager
def second_engine(workdir: Path) -> Iterator[SecondEngine]:
    """Run a second dockerd under ``workdir``; yield how to reach it; stop it and remove its data."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineUnavailable("dockerd is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    tls_dir = make_certificates(workdir / "tls")
    port = free_port()
    bridge = own_bridge()
    sock = workdir / "docker.sock"
    log = (workdir / "dockerd.log").open("w")
    command = [
        dockerd,
        f"--data-root={workdir / 'root'}",
        f"--exec-root={workdir / 'exec'}",
        f"--pidfile={workdir / 'dockerd.pid'}",
        f"--host=unix://{sock}",
        f"--host=tcp://127.0.0.1:{port}",
        "--tlsverify",
        f"--tlscacert={tls_dir / 'ca.pem'}",
        f"--tlscert={tls_dir / 'server-cert.pem'}",
        f"--tlskey={tls_dir / 'server-key.pem'}",
        f"--bridge={bridge}",
        "--iptables=false",
        "--ip6tables=false",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"unix://{sock}"
    try:
        _wait_until_up(url, process, workdir)
        yield SecondEngine(url, f"tcp://127.0.0.1:{port}", str(tls_dir))
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_certificates(directory: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as Docker's TLS expects."""
    if shutil.which("openssl") is None:
        raise EngineUnavailable("openssl is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    new_key = ["req", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    _openssl(directory, [*new_key, "-x509", "-keyout", "ca-key.pem", "-out", "ca.pem", "-subj", "/CN=ca"])
    for role, key, cert in (("server", "server-key.pem", "server-cert.pem"), ("client", "key.pem", "cert.pem")):
        _openssl(directory, [*new_key, "-keyout", key, "-out", f"{role}.csr", "-subj", f"/CN={role}"])
        ca = ["-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial"]
        _openssl(directory, ["x509", "-req", "-in", f"{role}.csr", *ca, "-out", cert, "-extfile", f"{role}.ext"])
    return directory


def _openssl(directory: Path, arguments: list[str]) -> None:
    done = subprocess.run(["openssl", *arguments], cwd=directory, capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineUnavailable(f"openssl {arguments[0]}: {done.stderr.strip()[-300:]}")


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
        if Path(url.removeprefix("unix://")).exists() and _answers(url):
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
