"""`slimtune serve` started for tests: a real subprocess on 127.0.0.1 and a free port, stopped after."""

from __future__ import annotations

import contextlib
import http.client
import json
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


def tiny_long_context(folder: Path) -> Path:
    """tests/tiny_models.py's Llama with an 8192-token context: long enough that a request can run for
    seconds (~1 ms a token here), which the tests of queueing, disconnects and shutdown need."""
    import json

    from tests.tiny_models import make_tiny_model

    make_tiny_model("llama", folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (folder / "config.json").write_text(json.dumps(config))
    return folder


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
        full_env = {k: v for k, v in os.environ.items() if k != "SLIMTUNE_API_KEY"}
        full_env.update({"PYTHONPATH": str(REPO), **(env or {})})
        command = [sys.executable, "-m", "slimtune", "serve", "--model", str(model), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"slimtune serve exited {self.process.returncode}:\n{self.process.stdout.read()}"
                )
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


@contextlib.contextmanager
def generator_busy(server: Server, long: dict, then_running: int):
    """A long streamed completion (`long`: its body) keeps the server's one generator busy while the block
    sends requests; leaving the block waits until `then_running` requests hold a slot (the long one included),
    then closes the long one's connection: the requests that waited start together, as one batch."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({**long, "stream": True})
    connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    try:
        yield
        end = time.monotonic() + 30
        while health(server)["running"] < then_running:
            assert time.monotonic() < end, f"{then_running} requests did not reach the server"
            time.sleep(0.05)
    finally:
        connection.close()


def health(server: Server) -> dict:
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        return json.loads(response.read())
