"""Which training checkpoints a resumed LoRA run may start from: only complete ones."""

from __future__ import annotations

import json

from slimtune.passes.lora.train import complete_checkpoints


def checkpoint(folder, step, *, state=True, weights=True, state_text=None):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / "adapter_model.safetensors").write_bytes(b"w")
    (path / "optimizer.pt").write_bytes(b"o")
    if state:
        (path / "trainer_state.json").write_text(state_text or json.dumps({"global_step": step}))
    return path


def test_only_complete_checkpoints_in_step_order(tmp_path):
    checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 4)
    checkpoint(tmp_path, 12, state=False)  # killed while saving: trainer_state.json is written last
    checkpoint(tmp_path, 14, state_text='{"global_step": 1')  # killed while writing trainer_state.json
    checkpoint(tmp_path, 2, weights=False)  # killed while rotation deleted it file by file
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-10"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-4"]  # the rest removed
