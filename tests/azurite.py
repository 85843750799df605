"""Azurite, the Azure Storage emulator (npm package `azurite`), started on 127.0.0.1 for a test and stopped after.

`scripts/setup.sh --test` installs it into `.azurite/` (git-ignored); a test run without it installs it there
first (npm). If it cannot start, the test fails: storage tests never skip silently.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = REPO / ".azurite"
BINARY = PREFIX / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key (public, in its docs)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _installed() -> Path:
    if not BINARY.is_file():
        npm = shutil.which("npm")
        assert npm, "Azurite needs Node.js and npm (scripts/setup.sh --test installs them)"
        subprocess.run(
            [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(PREFIX), "azurite"],
            check=True,
            timeout=600,
        )
    return BINARY


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Azurite:
    """`with Azurite() as server:` a Blob endpoint at `server.blob_url`; `server.connection_string`."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.blob_url = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.connection_string = f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={self.blob_url};"
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Azurite:
        command = [
            str(_installed()),
            "--inMemoryPersistence",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--skipApiVersionCheck",  # the Python SDK may speak a newer API version than this Azurite
            "--silent",
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self._process.stdout.read().decode(errors="replace") if self._process.stdout else ""
                raise RuntimeError(f"Azurite exited with code {self._process.returncode}: {output[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"Azurite did not listen on 127.0.0.1:{self.port} within 60 s")

    def __exit__(self, *exc) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
