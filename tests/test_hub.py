"""Hugging Face Hub models and data sets, against a hub on 127.0.0.1 (tests/hub_server.py) pointed at by
HF_ENDPOINT, so the real huggingface_hub and datasets code runs. slimtune runs in a subprocess each time: the
clients read HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when they are imported, as they do for users."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import Hub
from workflows import EMOTION_DATA, EMOTION_TEMPLATE, short_lora

from tests.tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_right_token_4f9a"
KEYS = """
import json, sys
from slimtune.config.load import load_config
from slimtune.engine.chain import chain_keys, open_session
loaded = load_config(sys.argv[1])
session = open_session(loaded, read_only=True)
print(json.dumps({"path": session.input.model.path, "input": session.input.key,
                  "passes": chain_keys(session, loaded.passes)}))
"""


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, bytes]:
    folder = make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def hub(model_files):
    with Hub() as server:
        server.add("org/tiny", {**model_files, "README.md": b"# tiny\n", "onnx/model.onnx": b"not fetched"})
        server.add("org/private", model_files, token=TOKEN)
        server.add("org/emotion", {"data/train.jsonl": EMOTION_DATA.read_bytes()}, kind="dataset")
        yield server


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-home")  # one hub cache for the module, as on a user's machine


def slimtune(
    args: list[str], hub: Hub, hf_home: Path, tmp_path: Path, **env: str
) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    environment.update(
        PYTHONPATH=str(REPO), HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), SLIMTUNE_HOME=str(tmp_path / "home")
    )
    environment.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600
    )


def write_config(tmp_path: Path, model: str, data: dict | None = None, max_steps: int = 1) -> Path:
    load = data or {"data_name": "json", "data_files": str(EMOTION_DATA), "max_samples": 40}
    config = {
        "input_model": {"type": "HfModel", "model_path": model},
        "data_configs": [
            {
                "name": "emotion",
                "load_dataset_config": load,
                "pre_process_data_config": {"text_template": EMOTION_TEMPLATE, "max_seq_len": 64},
            }
        ],
        "passes": {"lora": short_lora(max_steps)},
        "cache_dir": "cache",
        "output_dir": "out",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def keys(config: Path, hub: Hub, hf_home: Path, tmp_path: Path, **env: str) -> dict:
    done = slimtune(["-c", KEYS, str(config)], hub, hf_home, tmp_path, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def failure(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def test_a_hub_model_and_a_hub_data_set_fine_tune(hub, hf_home, tmp_path):
    config = write_config(
        tmp_path, "org/tiny", {"data_name": "org/emotion", "split": "train", "max_samples": 40}
    )
    done = slimtune(["-m", "slimtune", "run", "--config", str(config)], hub, hf_home, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    commit = hub.repos["models/org/tiny"].branches["main"]
    input_path = record["stages"][0]["path"]
    assert input_path.endswith(f"models--org--tiny/snapshots/{commit}")
    assert Path(input_path).is_relative_to(hf_home)  # the hub's own cache, shared with other programs
    assert record["passes"][0]["metrics"]["train_loss"] > 0
    fetched = [r for r in hub.requests if "/resolve/" in r]
    assert any(r.startswith("GET /org/tiny/resolve/") and r.endswith("/model.safetensors") for r in fetched)
    assert not any("onnx/model.onnx" in r or "README.md" in r and "/org/tiny/" in r for r in fetched)
    assert any(
        r.startswith("GET /datasets/org/emotion/resolve/") and r.endswith("train.jsonl") for r in fetched
    )


def test_a_moved_branch_is_a_new_input_and_a_revision_pins_it(hub, model_files, hf_home, tmp_path):
    hub.add("org/moving", model_files)
    config = write_config(tmp_path, "org/moving")
    first = keys(config, hub, hf_home, tmp_path)
    assert keys(config, hub, hf_home, tmp_path) == first  # same commit: same keys
    old = hub.repos["models/org/moving"].branches["main"]
    new = hub.move_branch("org/moving", {**model_files, "README.md": b"new card\n"})  # same weights
    moved = keys(config, hub, hf_home, tmp_path)
    assert moved["path"].endswith(new) and first["path"].endswith(old)
    assert moved["input"] != first["input"] and moved["passes"] != first["passes"]
    pinned = keys(write_config(tmp_path, f"org/moving@{old}"), hub, hf_home, tmp_path)
    assert pinned == first


def test_offline_mode_uses_the_local_copy(hub, model_files, hf_home, tmp_path):
    hub.add("org/offline", model_files)
    config = write_config(tmp_path, "org/offline")
    online = keys(config, hub, hf_home, tmp_path)
    seen = len(hub.requests)
    with socket.socket() as probe:  # a port where nothing listens: offline mode must not need one
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    offline = keys(config, hub, hf_home, tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT=closed)
    assert offline == online and len(hub.requests) == seen
    assert keys(config, hub, hf_home, tmp_path, HF_ENDPOINT=closed) == online  # unreachable: the cached copy
    unreachable = slimtune(
        ["-m", "slimtune", "validate", str(config)], hub, hf_home, tmp_path, HF_ENDPOINT=closed
    )
    assert unreachable.returncode == 0, unreachable.stderr
    assert (
        f"{closed} cannot be reached" in unreachable.stderr
        and "using the copy in the local cache" in unreachable.stderr
    )
    validate = slimtune(
        ["-m", "slimtune", "validate", str(config)], hub, hf_home, tmp_path, HF_HUB_OFFLINE="1"
    )
    assert validate.returncode == 0, validate.stderr

    data = write_config(tmp_path, "org/offline", {"data_name": "org/emotion", "max_samples": 40})
    validate = slimtune(["-m", "slimtune", "validate", str(data)], hub, hf_home, tmp_path)  # fetches the rows
    assert validate.returncode == 0, validate.stderr
    seen = len(hub.requests)
    validate = slimtune(
        ["-m", "slimtune", "validate", str(data)],
        hub,
        hf_home,
        tmp_path,
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT=closed,
    )
    assert validate.returncode == 0, validate.stderr
    assert len(hub.requests) == seen

    hub.add("org/never-fetched", model_files)
    absent = write_config(tmp_path, "org/never-fetched")
    err = failure(
        slimtune(["-m", "slimtune", "validate", str(absent)], hub, hf_home, tmp_path, HF_HUB_OFFLINE="1")
    )
    assert "org/never-fetched" in err and "offline mode (HF_HUB_OFFLINE)" in err


def test_an_unknown_repository_is_named(hub, hf_home, tmp_path):
    err = failure(
        slimtune(
            ["-m", "slimtune", "run", "--config", str(write_config(tmp_path, "org/missing"))],
            hub,
            hf_home,
            tmp_path,
        )
    )
    assert f"hub model org/missing does not exist on {hub.url}" in err
    assert not (tmp_path / "out").exists()
    err = failure(
        slimtune(
            ["-m", "slimtune", "validate", str(write_config(tmp_path, "org/tiny@no-such-branch"))],
            hub,
            hf_home,
            tmp_path,
        )
    )
    assert "org/tiny@no-such-branch: the revision does not exist" in err


def test_a_private_model_needs_the_right_token(hub, hf_home, tmp_path):
    config = write_config(tmp_path, "org/private")
    validate = ["-m", "slimtune", "validate", str(config)]
    err = failure(slimtune(validate, hub, hf_home, tmp_path))
    assert "org/private" in err and "no token" in err
    err = failure(slimtune(validate, hub, hf_home, tmp_path, HF_TOKEN="hf_wrong_token_1234"))
    assert "org/private" in err and "the hub refused the token (401; used: the token in $HF_TOKEN)" in err
    assert "hf_wrong_token_1234" not in err
    done = slimtune(validate, hub, hf_home, tmp_path, HF_TOKEN=TOKEN)
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout + done.stderr

    saved = tmp_path / "hf-login"  # the token `hf auth login` saves, where HF_HOME says
    saved.mkdir()
    (saved / "token").write_text("hf_saved_but_wrong")
    err = failure(slimtune(validate, hub, saved, tmp_path))
    assert f"used: the token saved by `hf auth login` ({saved / 'token'})" in err
    (saved / "token").write_text(TOKEN)
    done = slimtune(validate, hub, saved, tmp_path)
    assert done.returncode == 0, done.stderr


def test_an_unreachable_endpoint_is_named(hub, hf_home, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = write_config(tmp_path, "org/not-cached")
    err = failure(
        slimtune(["-m", "slimtune", "validate", str(config)], hub, hf_home, tmp_path, HF_ENDPOINT=closed)
    )
    assert f"hub model org/not-cached: {closed} cannot be reached" in err


def test_an_unknown_hub_data_set_or_split_is_named(hub, hf_home, tmp_path):
    config = write_config(tmp_path, "org/tiny", {"data_name": "org/no-data"})
    err = failure(slimtune(["-m", "slimtune", "validate", str(config)], hub, hf_home, tmp_path))
    assert "hub data set org/no-data does not exist" in err
    config = write_config(tmp_path, "org/tiny", {"data_name": "org/emotion", "split": "test"})
    err = failure(slimtune(["-m", "slimtune", "validate", str(config)], hub, hf_home, tmp_path))
    assert "hub data set org/emotion" in err and "test" in err


def test_a_hub_name_like_a_known_model_is_the_hub_model(hub, model_files, hf_home, tmp_path):
    """`org/SmolLM2-135M-Instruct` is asked of the hub, not taken for a typo of the known smollm2-135m-instruct."""
    hub.add("HuggingFaceTB/SmolLM2-135M-Instruct", model_files)
    config = write_config(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct")
    done = slimtune(["-m", "slimtune", "validate", str(config)], hub, hf_home, tmp_path)
    assert done.returncode == 0, done.stderr
    assert any(r.startswith("GET /api/models/HuggingFaceTB/SmolLM2-135M-Instruct/") for r in hub.requests)


def test_evaluate_and_generate_take_a_hub_model_id(hub, model_files, hf_home, tmp_path):
    """docs/cloud.md: every command that takes a model takes a hub id, evaluate and generate too."""
    hub.add("org/commands", model_files)
    evaluated = slimtune(
        ["-m", "slimtune", "evaluate", "--model", "org/commands@main", "--data", str(EMOTION_DATA)]
        + ["--template", EMOTION_TEMPLATE, "--max-rows", "2", "--metrics", "perplexity"],
        hub,
        hf_home,
        tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "2 rows" in evaluated.stdout
    generated = slimtune(
        ["-m", "slimtune", "generate", "--model", "org/commands", "--prompt", "hi", "--max-new-tokens", "2"],
        hub,
        hf_home,
        tmp_path,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert any(r.startswith("GET /org/commands/resolve/") for r in hub.requests)
    missing = slimtune(
        ["-m", "slimtune", "generate", "--model", "org/nothing", "--prompt", "hi"], hub, hf_home, tmp_path
    )
    assert "org/nothing" in failure(missing)
