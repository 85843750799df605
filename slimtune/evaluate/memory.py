"""Peak memory while serving, measured in a fresh Python process so that nothing the evaluator did before
(other models, freed but not returned allocations) blurs the number.

What counts: the child imports the runtime libraries first (torch/transformers/peft, or onnxruntime_genai and
transformers for the tokenizer), takes its resident set size (RSS) as the baseline, then loads the model and
its tokenizer and greedily generates for the given prompts. `peak_memory_bytes` is the peak RSS during that
(Linux VmHWM, reset at the baseline through /proc/self/clear_refs; elsewhere a 5 ms RSS sampler) minus the
baseline: weights as they are paged in (memory-mapped weight files count once touched), runtime arenas, the KV
cache and activations. Libraries' code and import-time data are not counted; `peak_rss_bytes` (the absolute
peak) and `baseline_rss_bytes` are reported too.

Run as `python -m slimtune.evaluate.memory` with a JSON request on stdin; prints one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError
from slimtune.models.ref import ModelRef

TIMEOUT_S = 1800


def measure_memory(
    ref: ModelRef, prompts: Sequence[list[int]], *, max_new_tokens: int = 8, threads: int | None = None
) -> dict[str, Any]:
    """{peak_memory_bytes, peak_rss_bytes, baseline_rss_bytes, method, prompts}, measured in a child process."""
    request = {
        "ref": ref.to_json(),
        "prompts": [list(p) for p in prompts],
        "max_new_tokens": max_new_tokens,
        "threads": threads,
    }
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "slimtune.evaluate.memory"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise ModelError(f"memory measurement of {ref.path} took over {TIMEOUT_S} s") from err
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ModelError(f"memory measurement of {ref.path} failed (exit {done.returncode}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class _PeakRss:
    """Peak RSS from the baseline on: the kernel's high-water mark when it can be reset, else sampling."""

    def __init__(self):
        import psutil

        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.method = "VmHWM"
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.method = "sampled every 5 ms"
            self._peak = self.baseline
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def peak(self) -> int:
        if self.method == "VmHWM":
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        self._stop.set()
        self._thread.join()
        return max(self._peak, self._process.memory_info().rss)


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    ref = ModelRef.from_json(request["ref"])
    if ref.kind == "onnx":
        import onnxruntime_genai  # noqa: F401 - imported before the baseline: libraries are not counted
        import transformers  # noqa: F401
    elif ref.kind == "gguf":
        import llama_cpp  # noqa: F401
        import transformers  # noqa: F401
    else:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        if ref.kind == "adapter":
            import peft  # noqa: F401
    from slimtune.models.runtime import open_model

    meter = _PeakRss()
    backend = open_model(ref, threads=request.get("threads"))
    for prompt in request["prompts"]:
        backend.generate_ids(prompt, request["max_new_tokens"])
    peak = meter.peak()
    return {
        "peak_memory_bytes": peak - meter.baseline,
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": meter.baseline,
        "method": meter.method,
        "prompts": len(request["prompts"]),
    }


if __name__ == "__main__":
    print(json.dumps(_serve(json.loads(sys.stdin.read()))))
