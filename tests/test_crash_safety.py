"""Crash safety: `slimtune run` killed with SIGKILL at random moments in every pass, then run again.

A tiny Llama goes through LoRA -> MergeAdapterWeights -> ModelBuilder int4 with stage evaluation, as the
example workflow does. The run is a subprocess in its own process group; the harness watches its output for
the pass markers (`[i/3] ...`, `evaluating ...`) and kills the whole group at a seeded random moment inside a
chosen phase. One phase waits for a training checkpoint instead, so that training is always interrupted at
least once with a checkpoint on disk. After every kill it checks, independently of slimtune's own code:

- every folder under cache/entries has an entry.json whose manifest matches the files (size and sha256), and
  the files load (safetensors tensors, ONNX graph, genai_config.json);
- output_dir/model is absent, or a complete model that onnxruntime_genai loads and generates with;
- the next attempt at training resumes from the newest complete checkpoint the kill left (its log says
  `resuming from checkpoint-N`), never from step 0.

Each cycle uses a new training seed (so every pass's cache key changes) and ends with a plain run that must
finish, train to max_steps, leave no temporary folders, and publish a model that loads and generates.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from workflows import emotion_data_config

pytestmark = pytest.mark.slow

SEED = 20261128
MIN_KILLS = 20
MAX_STEPS = 40
SAVE_STEPS = 2
PHASES = ("startup", "lora", "lora-checkpoint", "merge", "builder", "evaluate")
MARKERS = {  # phase -> the output line that starts it
    "lora": re.compile(r"^\[1/3\] lora"),
    "merge": re.compile(r"^\[2/3\] merge"),
    "builder": re.compile(r"^\[3/3\] builder"),
    "evaluate": re.compile(r"^evaluating "),
}
RESUMED = re.compile(r"resuming from checkpoint-(\d+)")
PROCESS_TIMEOUT_S = 300


def write_config(
    folder: Path, model: Path, seed: int, *, evaluate: bool = True, max_steps: int = MAX_STEPS
) -> Path:
    """The example's three passes on a tiny model; with `evaluate`, every stage is evaluated on the 16 rows
    LoRA holds out, as the example does."""
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [emotion_data_config(80, max_seq_len=96)],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 4,
                "alpha": 8,
                "train_data_config": "emotion",
                **({"eval_dataset_size": 0.2} if evaluate else {}),
                "training_args": {
                    "max_steps": max_steps,
                    "per_device_train_batch_size": 4,
                    "logging_steps": 5,
                    "save_steps": SAVE_STEPS,
                    "eval_steps": 20,
                    "seed": seed,
                },
            },
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
        "cache_dir": str(folder / "cache"),
        "output_dir": str(folder / "out"),
    }
    path = folder / f"config-{seed}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Attempt:
    """One `slimtune run` subprocess and the lines it printed, with when each phase began."""

    proc: subprocess.Popen
    started: float
    lines: list[str] = field(default_factory=list)
    phase_started: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, config: Path) -> Attempt:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slimtune", "run", "--config", str(config)],
            cwd=config.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: the kill takes any children with it
        )
        attempt = cls(proc, time.monotonic())
        attempt.phase_started["startup"] = attempt.started
        threading.Thread(target=attempt._read, daemon=True).start()
        return attempt

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            for line in raw.replace("\r", "\n").splitlines():
                self.lines.append(line)
                for phase, marker in MARKERS.items():
                    if phase not in self.phase_started and marker.search(line):
                        self.phase_started[phase] = time.monotonic()

    @property
    def phase(self) -> str:
        """The phase whose marker was printed last."""
        return max(self.phase_started, key=self.phase_started.get)

    def wait_for(self, condition, timeout: float = PROCESS_TIMEOUT_S) -> bool:
        """Poll until `condition()` or the process ends; True when the condition was met."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if self.proc.poll() is not None:
                return bool(condition())
            time.sleep(0.01)
        self.kill()
        pytest.fail("slimtune run made no progress:\n" + self.output())

    def kill(self) -> bool:
        """SIGKILL the process group; True if the process was still running (a real kill)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        time.sleep(0.05)  # let the reader thread drain the pipe
        return self.proc.returncode == -signal.SIGKILL

    def finish(self) -> int:
        try:
            self.proc.wait(PROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
        time.sleep(0.05)
        return self.proc.returncode

    def output(self) -> str:
        return "\n".join(self.lines[-60:])


# ---------------------------------------------------------------- what must hold after every kill


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_loadable(folder: Path, kind: str) -> None:
    from safetensors import safe_open

    weights = sorted(folder.glob("*.safetensors"))
    if kind in ("adapter", "hf"):
        assert weights, f"{folder}: no safetensors"
        for file in weights:
            with safe_open(str(file), "pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    f.get_tensor(name)
        config = "adapter_config.json" if kind == "adapter" else "config.json"
        json.loads((folder / config).read_text())
    elif kind == "onnx":
        import onnxruntime_genai as og

        json.loads((folder / "genai_config.json").read_text())
        og.Model(str(folder))
    else:
        pytest.fail(f"{folder}: unexpected model kind {kind!r}")


_LOADED: set[str] = set()  # file sets (names + sha256) already shown to load: the same bytes load again


def _fingerprint(files: dict[str, str]) -> str:
    return json.dumps(sorted(files.items()))


def check_cache(cache: Path) -> dict[str, dict]:
    """Every entry is complete: manifest == files on disk (sizes and sha256, every time), and the files
    load (once per distinct content). Returns entries by key."""
    found = {}
    for folder in sorted((cache / "entries").glob("*")):
        info_file = folder / "entry.json"
        assert info_file.is_file(), f"{folder} is in entries/ without entry.json (a partial entry)"
        info = json.loads(info_file.read_text())
        output = folder / "output"
        on_disk = {p.relative_to(output).as_posix(): p for p in output.rglob("*") if p.is_file()}
        assert set(on_disk) == set(info["files"]), f"{folder}: files differ from the manifest"
        for name, expected in info["files"].items():
            assert on_disk[name].stat().st_size == expected["size"], f"{folder}/{name}: size"
            assert sha256(on_disk[name]) == expected["sha256"], f"{folder}/{name}: content"
        content = _fingerprint({n: f["sha256"] for n, f in info["files"].items()})
        if content not in _LOADED:
            check_loadable(output, info["kind"])
            _LOADED.add(content)
        found[folder.name] = info
    return found


def generate(folder: Path, n: int = 3) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=8 + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens([1, 5, 6, 7, 8, 9, 10, 11])
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def check_output(out: Path, entries: dict[str, dict]) -> bool:
    """output_dir/model is absent, or complete: the same files as a cached ONNX entry, and it generates."""
    model = out / "model"
    if not model.exists():
        return False
    files = {p.relative_to(model).as_posix(): sha256(p) for p in model.rglob("*") if p.is_file()}
    sources = [
        info for info in entries.values() if {n: f["sha256"] for n, f in info["files"].items()} == files
    ]
    assert sources and sources[0]["kind"] == "onnx", f"{model} matches no complete cached ONNX model"
    if "generated:" + _fingerprint(files) not in _LOADED:
        assert len(generate(model)) == 3
        _LOADED.add("generated:" + _fingerprint(files))
    return True


def complete_checkpoints(work: Path, known: set[str]) -> int:
    """Newest step of a checkpoint whose trainer_state.json parses, in work folders new this cycle."""
    steps = [0]
    for state in work.glob("*/checkpoints/checkpoint-*/trainer_state.json"):
        if state.parents[2].name in known:
            continue
        try:
            steps.append(json.loads(state.read_text())["global_step"])
        except (OSError, ValueError, KeyError):
            continue  # cut short by the kill: not a checkpoint to resume from
    return max(steps)


# ---------------------------------------------------------------- the harness


def calibrate(folder: Path, model: Path) -> dict[str, float]:
    """Seconds each phase takes here, from one uninterrupted run in its own cache."""
    attempt = Attempt.start(write_config(folder, model, seed=SEED))
    assert attempt.finish() == 0, attempt.output()
    ended = time.monotonic()
    order = [p for p in PHASES if p in attempt.phase_started]
    times = {p: attempt.phase_started[p] for p in order}
    durations = {}
    for phase, after in zip(order, [*order[1:], None], strict=True):
        durations[phase] = (times[after] if after else ended) - times[phase]
    return durations


def test_random_kills_never_corrupt_cache_or_output(tmp_path):
    from tiny_models import make_tiny_model

    rng = random.Random(SEED)
    model = make_tiny_model("llama", tmp_path / "tiny")
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    durations = calibrate(calibration, model)
    print(f"\nphase durations: {durations}", flush=True)
    root = tmp_path / "run"
    root.mkdir()
    cache, out, work = root / "cache", root / "out", root / "cache" / "work"

    kills: list[dict] = []
    resumes: list[int] = []
    cycle = 0
    while len(kills) < MIN_KILLS:
        cycle += 1
        assert cycle <= 3 * MIN_KILLS // len(PHASES) + 2, "too many cycles: the kills rarely land"
        config = write_config(root, model, seed=cycle)
        known_work = {p.name for p in work.glob("*")}
        expected_resume = 0  # newest complete checkpoint a kill left behind, not yet resumed from
        attempts: list[Attempt] = []
        for phase in PHASES:
            if len(kills) >= MIN_KILLS:
                break
            attempt = Attempt.start(config)
            attempts.append(attempt)
            if phase == "lora-checkpoint":  # a checkpoint newer than any the earlier kills left
                newest = complete_checkpoints(work, known_work)
                target = min(
                    newest + rng.randrange(SAVE_STEPS, MAX_STEPS // 2, SAVE_STEPS), MAX_STEPS - SAVE_STEPS
                )
                reached = attempt.wait_for(lambda t=target, k=known_work: complete_checkpoints(work, k) >= t)
                delay = rng.uniform(0, 0.2)
            else:
                reached = attempt.wait_for(lambda p=phase, a=attempt: p in a.phase_started)
                delay = rng.uniform(0, durations.get(phase, 0.5))
            if reached:
                time.sleep(delay)
            killed = attempt.kill()
            if not killed:  # the delay overshot (the machine got faster than at calibration): aim earlier
                assert attempt.proc.returncode == 0, attempt.output()
                durations[phase] = durations.get(phase, 0.5) / 2
            else:
                kills.append({"cycle": cycle, "aimed_at": phase, "landed_in": attempt.phase, "delay": delay})
            print(
                f"cycle {cycle} ({time.monotonic() - attempt.started:.1f} s) aimed at {phase} after {delay:.2f} s: "
                f"{'killed in ' + attempt.phase if killed else 'finished first'}",
                flush=True,
            )
            expected_resume = check_resume(attempt, expected_resume, resumes)
            entries = check_cache(cache)
            check_output(out, entries)
            if killed:
                expected_resume = max(expected_resume, complete_checkpoints(work, known_work))
            else:
                break  # the run finished before the kill: on to the next cycle
        final = Attempt.start(config)
        assert final.finish() == 0, final.output()
        check_resume(final, expected_resume, resumes)
        record = json.loads((out / "run.json").read_text())
        assert record["passes"][0]["metrics"]["steps"] == MAX_STEPS
        entries = check_cache(cache)
        assert {p["key"] for p in record["passes"]} <= set(entries)
        assert check_output(out, entries), "the finished run published no model"
        assert not list((cache / "tmp").glob("*")), "attempts of finished passes were left in cache/tmp"
        assert not list(work.glob("*")), "checkpoints of finished passes were left in cache/work"
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")], (
            "temporary folders in output_dir"
        )

    landed = {}
    for kill in kills:
        landed[kill["landed_in"]] = landed.get(kill["landed_in"], 0) + 1
    print(f"\n{len(kills)} kills over {cycle} cycles; landed in: {landed}; resumed from steps {resumes}")
    assert resumes, "no attempt resumed training from a checkpoint"


def check_resume(attempt: Attempt, expected: int, resumes: list[int]) -> int:
    """If a complete checkpoint was left, this attempt must resume from it (or a newer one) once it trains.
    Returns what the next attempt must still resume from."""
    if not expected:
        return 0
    text = "\n".join(attempt.lines)
    found = [int(m) for m in RESUMED.findall(text)]
    if found:
        assert found[-1] >= expected, f"resumed from step {found[-1]}, but checkpoint {expected} was complete"
        resumes.append(found[-1])
        return 0
    status = next(
        (line.strip() for line in attempt.lines if line.strip().startswith(("done in", "cache hit"))), ""
    )
    if status.startswith("cache hit"):  # killed after the entry was committed, before work/ was removed
        return 0
    assert not status, f"training restarted from zero although checkpoint-{expected} was complete"
    return expected  # killed before training began: the next attempt must resume
