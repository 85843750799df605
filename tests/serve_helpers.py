"""`slimtune serve` started for tests: a real subprocess on 127.0.0.1 and a free port, stopped after."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from slimtune.models.ref import ModelMeta, ModelRef
from slimtune.passes.context import PassContext

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
LABELS = ["joy", "fear", "sadness", "surprise"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_int4(hf: Path, out: Path) -> Path:
    """The tiny model as an int4 ONNX Runtime GenAI folder (the ModelBuilder pass), with a slimtune.json."""
    from slimtune.passes.model_builder import ModelBuilderParams
    from slimtune.passes.model_builder.run import run as build

    ctx = PassContext(
        input=ModelRef(str(hf), "hf"),
        meta=ModelMeta(),
        output_dir=out,
        work_dir=out.with_name(out.name + ".work"),
        device="cpu",
        execution_provider="cpu",
        log=lambda _: None,
    )
    folder = Path(build(ctx, ModelBuilderParams(precision="int4")).path)
    ModelMeta(template=TEMPLATE, answer_column="tone", labels=LABELS).save(folder)
    return folder


class Server:
    """`python -m slimtune serve ...` in a subprocess; `stop()` sends SIGTERM and waits for the exit."""

    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        full_env.pop("SLIMTUNE_API_KEY", None) if "SLIMTUNE_API_KEY" not in (env or {}) else None
        command = [sys.executable, "-m", "slimtune", "serve", "--model", str(model), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"slimtune serve exited {self.process.returncode}:\n{self.process.stdout.read()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.process.kill()
        raise RuntimeError(f"slimtune serve did not answer on {self.url} within {timeout} s")

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return self.process.returncode, out
