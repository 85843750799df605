"""Two `slimtune run` processes on one cache_dir at the same time, and locks left by killed processes.

The test holds the LoRA entry's lock itself while both runs start, so that both must wait for it (each
prints whom it waits for); then it lets go. Whatever the order they get the locks in, every cache entry must
be computed by exactly one of them and reused by the other, and both must publish a model that generates.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_crash_safety import Attempt, check_cache, generate, write_config

from slimtune.cli.main import main
from slimtune.engine.cache import Cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def pass_keys(tmp_path: Path, model: Path) -> list[str]:
    """Cache keys of the workflow's passes (they do not depend on cache_dir), from a run in its own cache."""
    folder = tmp_path / "keys"
    folder.mkdir()
    config = write_config(folder, model, seed=1, evaluate=False, max_steps=6)
    assert main(["run", "--config", str(config)]) == 0
    return [p["key"] for p in json.loads((folder / "out" / "run.json").read_text())["passes"]]


def with_output_dir(config: Path, name: str) -> Path:
    import yaml

    data = yaml.safe_load(config.read_text())
    data["output_dir"] = str(config.parent / name)
    path = config.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_two_runs_share_one_cache(tiny, tmp_path):
    keys = pass_keys(tmp_path, tiny)
    shared = tmp_path / "shared"
    shared.mkdir()
    config = write_config(shared, tiny, seed=1, evaluate=False, max_steps=6)
    lock_file = shared / "cache" / "locks" / f"{keys[0]}.lock"
    lock_file.parent.mkdir(parents=True)
    with open(lock_file, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(str(os.getpid()))
        held.flush()
        runs = [Attempt.start(with_output_dir(config, name)) for name in ("out_a", "out_b")]
        waiting = f"waiting for another run (pid {os.getpid()}) working on cache entry {keys[0][:12]}"
        for run in runs:
            assert run.wait_for(lambda r=run: any(waiting in line for line in r.lines)), run.output()
        fcntl.flock(held, fcntl.LOCK_UN)
    for run in runs:
        assert run.finish() == 0, run.output()

    records = [json.loads((shared / name / "run.json").read_text()) for name in ("out_a", "out_b")]
    for index, key in enumerate(keys):
        assert [r["passes"][index]["key"] for r in records] == [key, key]
        hits = sorted(r["passes"][index]["cache_hit"] for r in records)
        assert hits == [False, True], f"pass {index}: computed by both runs or by neither"
    entries = check_cache(shared / "cache")
    assert set(entries) == set(keys)
    assert not list((shared / "cache" / "tmp").glob("*")) and not list((shared / "cache" / "work").glob("*"))
    models = [shared / name / "model" for name in ("out_a", "out_b")]
    assert generate(models[0]) == generate(models[1])
    assert (models[0] / "model.onnx").read_bytes() == (models[1] / "model.onnx").read_bytes()


def test_lock_of_a_killed_process_does_not_block(tmp_path, capsys):
    key = "e" * 64
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from slimtune.engine.cache import Cache\n"
            f"with Cache({str(tmp_path)!r}).lock({key!r}):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    lock_file = tmp_path / "locks" / f"{key}.lock"
    assert lock_file.read_text() == str(holder.pid)
    assert Cache(tmp_path)._in_use(key)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()

    assert lock_file.exists()  # the stale file stays, naming a dead process...
    assert not Cache(tmp_path)._in_use(key)  # ...but holds no lock
    with Cache(tmp_path).lock(key):
        assert lock_file.read_text() == str(os.getpid())
    assert "waiting" not in capsys.readouterr().out  # taken at once, not after a wait
