"""Real storage servers on loopback for the cloud tests: Azurite (Azure Blob), the moto server (S3) and a plain
HTTP file server with ranged reads. Each runs in its own process so a test can kill it mid-transfer.

A server that cannot start fails the test (`ServerError`): `make test` installs all three (scripts/setup.sh).
Use them as context managers, or through the pytest fixtures of the same names (`from tests.servers import *`
is not needed: conftest-free modules import the fixtures they use).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools"
HTTP_SERVER_SCRIPT = Path(__file__).with_name("http_file_server.py")

# Azurite's fixed development account (public, documented by Microsoft; not a secret)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class ServerError(RuntimeError):
    """A test server did not start: the test fails (it does not skip)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise ServerError(f"{name} exited with code {proc.returncode} before listening: {out[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    proc.kill()
    raise ServerError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Server:
    """One running server process; `kill()` ends it at once (to test interrupted transfers)."""

    name: str
    port: int
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def azurite_binary() -> str:
    local = TOOLS / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    raise ServerError(
        f"azurite-blob not found (looked in {local} and on PATH); `make test` installs it with npm "
        "(scripts/setup.sh --test)"
    )


def azurite_connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


@contextmanager
def azurite_server() -> Iterator[Server]:
    """Azurite's Blob service in memory on a free loopback port. `env` holds the connection string variable."""
    port = free_port()
    proc = subprocess.Popen(
        [
            azurite_binary(),
            "--inMemoryPersistence",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc, "azurite")
        yield Server(
            "azurite", port, proc, {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(port)}
        )
    finally:
        stop(proc)


@contextmanager
def moto_server(*, unchecked_requests: int | None = None) -> Iterator[Server]:
    """The moto server (S3 and friends) on a free loopback port. `env` holds test credentials and the endpoint.
    `unchecked_requests`: moto checks every request's credentials (IAM users and their keys) after this many
    (its INITIAL_NO_AUTH_ACTION_COUNT); by default it accepts any key."""
    port = free_port()
    env = dict(os.environ)
    if unchecked_requests is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(unchecked_requests)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for_port(port, proc, "moto server")
        yield Server(
            "moto",
            port,
            proc,
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            },
        )
    finally:
        stop(proc)


@contextmanager
def http_file_server(root: Path, *, rate: int = 0, port: int | None = None) -> Iterator[Server]:
    """A plain HTTP server over `root` with ETag, Content-Length, Content-MD5 and Range support (see
    tests/http_file_server.py). `rate`: bytes per second per response (0: unlimited), to have time to kill it
    mid-download. `port`: reuse a port (to restart the server where a download left off)."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HTTP_SERVER_SCRIPT), str(root), str(port), str(rate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc, "http file server")
        yield Server("http", port, proc)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Server]:
    with azurite_server() as server:
        yield server


@pytest.fixture(scope="session")
def moto() -> Iterator[Server]:
    with moto_server() as server:
        yield server


@pytest.fixture
def server_env(monkeypatch: pytest.MonkeyPatch):
    """Set a server's environment (credentials, endpoint) for one test: `server_env(azurite)`."""

    def apply(server: Server) -> None:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)

    return apply


def no_proxy_env() -> dict[str, str]:
    """Loopback traffic must not go through a proxy a CI machine may set."""
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env
