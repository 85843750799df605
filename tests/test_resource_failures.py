"""Out of memory and a full disk during a pass: exit code 2, a message that names what ran out and what to
change, no traceback, and nothing partial in the cache or output_dir. Failures are injected where the
libraries would raise them (the training step, the weights writer, the publish copy). Also the memory
estimate that refuses a run before any pass, and its override."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
import yaml
from workflows import emotion_data_config

from slimtune.cli.main import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def write_config(folder: Path, model: Path, **top) -> Path:
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [emotion_data_config(40, max_seq_len=96, answer_only=False)],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 4,
                "alpha": 8,
                "train_data_config": "emotion",
                "training_args": {"max_steps": 4, "per_device_train_batch_size": 4, "save_steps": 2},
            },
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
        "cache_dir": str(folder / "cache"),
        "output_dir": str(folder / "out"),
        **top,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def assert_nothing_partial(folder: Path, complete_passes: int) -> None:
    cache = folder / "cache"
    entries = sorted((cache / "entries").glob("*")) if (cache / "entries").exists() else []
    assert len(entries) == complete_passes
    for entry in entries:
        info = json.loads((entry / "entry.json").read_text())
        files = {
            p.relative_to(entry / "output").as_posix() for p in (entry / "output").rglob("*") if p.is_file()
        }
        assert files == set(info["files"])
    assert not list((cache / "tmp").glob("*")), "a failed attempt was left in cache/tmp"
    for checkpoint in (cache / "work").glob("*/checkpoints/checkpoint-*"):
        assert (checkpoint / "trainer_state.json").is_file(), f"half-written checkpoint {checkpoint}"
    out = folder / "out"
    assert not (out / "model").exists()
    assert not (out.exists() and [p for p in out.iterdir() if p.name.startswith(".")]), "temp folder in out/"


def run_failing(config: Path, capsys, *extra: str) -> str:
    code = main(["run", "--config", str(config), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_training_out_of_memory_is_named_with_what_to_change(tiny, tmp_path, capsys, monkeypatch):
    import torch
    import transformers

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.Trainer, "training_step", oom)
    err = run_failing(write_config(tmp_path, tiny), capsys)
    assert "passes.lora (LoRA) ran out of memory" in err
    assert "per_device_train_batch_size (now 4" in err
    assert "max_seq_len of data config `emotion` (now 96)" in err
    assert "activation_checkpointing" in err
    assert_nothing_partial(tmp_path, complete_passes=0)


def test_cpu_allocator_failure_in_merge_is_out_of_memory(tiny, tmp_path, capsys, monkeypatch):
    from peft.tuners.tuners_utils import BaseTuner

    def fail(*args, **kwargs):  # what torch's CPU allocator raises when malloc fails
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(BaseTuner, "merge_and_unload", fail)
    err = run_failing(write_config(tmp_path, tiny), capsys)
    assert "passes.merge (MergeAdapterWeights) ran out of memory" in err
    assert "save_dtype" in err
    assert_nothing_partial(tmp_path, complete_passes=1)  # the LoRA entry is complete and kept


def test_full_disk_while_writing_weights(tiny, tmp_path, capsys, monkeypatch):
    from transformers import modeling_utils

    def half_then_full(tensors, filename, metadata=None):  # writes part of the file, as a full disk does
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(modeling_utils, "safe_save_file", half_then_full)
    err = run_failing(write_config(tmp_path, tiny), capsys)
    assert "passes.merge (MergeAdapterWeights): the disk is full writing" in err
    assert "free there now" in err and "free at least" in err
    assert "--cache-dir" in err
    assert_nothing_partial(tmp_path, complete_passes=1)


def test_full_disk_in_a_checkpoint_leaves_no_half_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    import transformers

    def full(self, model, trial=None):
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 10)
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
            "data/0: file write failed"
        )

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", full)
    monkeypatch.setattr("slimtune.engine.resources.free_bytes", lambda path: 1024)  # the disk is full
    err = run_failing(write_config(tmp_path, tiny), capsys)
    assert "passes.lora (LoRA): the disk is full" in err
    assert_nothing_partial(tmp_path, complete_passes=0)


def test_full_disk_while_publishing_leaves_no_partial_model(tiny, tmp_path, capsys, monkeypatch):
    from slimtune.engine import runner

    copied = []

    def copy_then_full(src, dst):
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        copied.append(dst)
        runner.shutil.copy2(src, dst)

    monkeypatch.setattr(runner, "_copy_file", copy_then_full)
    err = run_failing(write_config(tmp_path, tiny), capsys)
    assert f"publishing the model to {tmp_path / 'out' / 'model'}: the disk is full" in err
    assert_nothing_partial(tmp_path, complete_passes=3)


class _LittleMemory:
    total = available = 256 * 2**20


def test_memory_estimate_refuses_before_any_pass_and_can_be_overridden(tiny, tmp_path, capsys, monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: _LittleMemory())
    config = write_config(tmp_path, tiny)
    err = run_failing(config, capsys)
    assert "passes.lora: LoRA training (micro-batch" in err
    # the micro-batch stays as configured (4); rows are as long as the longest one (at most max_seq_len 96)
    assert (
        re.search(r"activations for 4 x \d+ tokens", err) and "but only 0.2 GiB of memory is available" in err
    )
    assert "skip_memory_check: true" in err and "--no-memory-check" in err
    assert not (tmp_path / "cache" / "entries").exists(), "the refusal came after a pass ran"

    assert main(["run", "--config", str(config), "--no-memory-check"]) == 0  # builder's own check skipped too
    assert (tmp_path / "out" / "model" / "model.onnx").is_file()
    # every pass is cached now: a re-run needs no memory for them and is not refused
    assert main(["run", "--config", str(config)]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert all(p["cache_hit"] for p in record["passes"])


def test_skip_memory_check_is_a_config_key_in_both_schemas(tiny, tmp_path, monkeypatch, capsys):
    import psutil

    from slimtune.config.load import load_config
    from slimtune.engine.memory_check import check_memory

    current = load_config(write_config(tmp_path, tiny, skip_memory_check=True))
    assert current.config.skip_memory_check is True
    old = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del old["skip_memory_check"]
    old["engine"] = {"skip_memory_check": True, "cache_dir": old.pop("cache_dir")}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert main(["validate", str(tmp_path / "old.yaml")]) == 0, capsys.readouterr().err
    assert load_config(tmp_path / "old.yaml").config.skip_memory_check is True

    monkeypatch.setattr(psutil, "virtual_memory", lambda: _LittleMemory())
    check_memory(current, tiny, "cpu")  # skipped: no error
    current.config.skip_memory_check = False
    with pytest.raises(Exception, match="needs about"):
        check_memory(current, tiny, "cpu")


def test_what_counts_as_out_of_memory_or_a_full_disk(tmp_path):
    from slimtune.engine.resources import named_error
    from slimtune.errors import UserError

    def name(err):
        return named_error(err, what="passes.x (X)", memory_advice="Advice.", watched=[tmp_path])

    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError / torch.cuda.OutOfMemoryError, by name
        pass

    cuda = OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 1862.65 GiB. GPU 0 has a total capacity of "
        "139.80 GiB of which 139.29 GiB is free. Including non-PyTorch memory, this process "
        "has 518.00 MiB memory in use. Of the allocated memory 0 bytes is allocated"
    )
    assert str(name(cuda)).startswith(
        "passes.x (X) ran out of memory (OutOfMemoryError: CUDA out of memory. Tried to allocate 1862.65 GiB."
    )
    assert str(name(cuda)).endswith("memory in use.). Advice.")
    assert "ran out of memory" in str(name(MemoryError()))
    try:  # wrapped, as a pass that catches and re-raises does
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.onnx"))
        except OSError as inner:
            raise UserError("ModelBuilder failed: OSError ...") from inner
    except UserError as wrapped:
        assert f"the disk is full writing {tmp_path / 'model.onnx'}" in str(name(wrapped))
    rust = Exception(
        "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
        '"No space left on device" })'
    )  # safetensors' own error type
    assert "the disk is full" in str(name(rust))
    assert name(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert name(OSError(errno.EACCES, "Permission denied")) is None
    assert (
        name(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")) is None
    )  # disk has room
