"""benchmarks/cpu_decode.py: its bandwidth ceiling (bytes read per token, the formula), its table, and its --quick
path end to end on a tiny model (real exports, real ONNX Runtime GenAI decoding and profile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cpu_decode  # noqa: E402
import decode_limits as limits  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("bench") / "llama")


def test_onnx_bytes_per_token_are_the_matrices_plus_one_row_of_each_table(tiny, tmp_path):
    """Derived from the config alone: int4 block 32 stores half a byte per weight and an fp32 scale per 32;
    the (untied) embedding and the rotary caches are read one row per token, the norms in full."""
    config = json.loads((tiny / "config.json").read_text())
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head = config["head_dim"]
    kv = config["num_key_value_heads"] * head
    matrices = (
        layers * (hidden * hidden * 2 + hidden * kv * 2 + hidden * inter * 3) + config["vocab_size"] * hidden
    )
    norms = (2 * layers + 1) * hidden * 4
    expected = matrices * (0.5 + 4 / 32) + norms + hidden * 4 + 2 * (head // 2) * 4

    path, kind, _ = cpu_decode.export(tiny, cpu_decode.DEFAULT, tmp_path / "int4")
    weights = limits.onnx_weights(path / "model.onnx")
    assert kind == "onnx"
    assert weights["bytes"] == expected
    assert (
        weights["quant"] == f"int4 b32 level 4 x {1 + 7 * layers - 2 * layers}"
    )  # q/k/v fused: 4 per layer + head
    assert weights["kv_element_bytes"] == 4
    per_position = limits.kv_bytes_per_position(config, 4)
    assert per_position == 2 * layers * kv * 4
    per_token, quant = cpu_decode.read_per_token(path, kind, config, new_tokens=32)
    assert per_token == int(expected + per_position * (cpu_decode.PROMPT_TOKENS + 16))
    assert quant == weights["quant"]


def test_gguf_bytes_per_token_count_a_separate_embedding_as_one_row(tmp_path):
    from gguf import GGUFWriter

    def write(name: str, tensors: dict) -> Path:
        path = tmp_path / name
        writer = GGUFWriter(str(path), "llama")
        for key, value in tensors.items():
            writer.add_tensor(key, value)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    embedding = np.ones((100, 8), dtype=np.float32)  # 100 rows of 8: 3,200 bytes
    block = np.ones((8, 8), dtype=np.float16)  # 128 bytes
    untied = write(
        "untied.gguf", {"token_embd.weight": embedding, "output.weight": embedding, "blk.0.w": block}
    )
    tied = write("tied.gguf", {"token_embd.weight": embedding, "blk.0.w": block})
    assert limits.gguf_weights(untied)["bytes"] == 32 + 3200 + 128
    assert limits.gguf_weights(tied)["bytes"] == 3200 + 128
    assert limits.gguf_weights(tied)["kv_element_bytes"] == 2


def test_ceiling_table_and_the_choice_of_the_fastest_accurate_row():
    assert limits.ceiling(20e9, 100e6) == 200
    assert limits.mean_context(34, 128) == 98
    speed = {"prompt_tps": 400.0, "ttft_ms": 80.0}
    rows = {
        "merged": {"accuracy": 0.80, "size": 500 * 2**20},
        "a": {
            "accuracy": 0.795,
            "size": 80 * 2**20,
            "per_token": 100e6,
            "peak_memory": 2**28,
            2: {**speed, "decode_tps": 150.0},
            1: {**speed, "decode_tps": 100.0},
        },
        "b": {
            "accuracy": 0.70,
            "size": 70 * 2**20,
            "per_token": 90e6,
            "peak_memory": 2**28,
            2: {**speed, "decode_tps": 190.0},
            1: {**speed, "decode_tps": 130.0},
        },
        "ceiling of a": {"limit_of": "a", "per_token": 100e6},
    }
    assert limits.fastest_within(rows, 0.80, 1.0, 2) == "a"  # b is faster but 10 points worse
    assert limits.fastest_within(rows, 0.70, 1.0, 2) == "b"
    lines = limits.table(rows, {2: 25e9, 1: 20e9}, [2, 1])
    assert lines[0].startswith("| variant | held-out accuracy |") and len(lines) == 2 + len(rows)
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]  # row a
    assert cells[6] == "150.0" and cells[8] == "60%"  # 150 of 25e9 / 100e6 = 250
    assert cells[12] == "50%"  # 100 of 20e9 / 100e6 = 200
    limit = [c.strip() for c in lines[5].split("|")[1:-1]]
    assert limit[6] == "**250**" and limit[10] == "**200**"
    assert [c.strip() for c in lines[2].split("|")[1:-1]][5:] == ["-"] * 8  # merged: accuracy only


def test_quick_run_on_a_tiny_model(tiny, tmp_path):
    """The smoke path the benchmark offers, end to end: two exports, one session-option variant, accuracy,
    memory, speeds with all cores and one, the bandwidth ceiling and the profile; nothing written to docs."""
    out = tmp_path / "result.json"
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    only = [cpu_decode.DEFAULT, "onnx int4 default, no memory arena", "onnx int4 block 128"]
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "cpu_decode.py"),
            "--quick",
            "--merged",
            str(tiny),
            "--json",
            str(out),
            "--only",
            *only,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    table = result["table"]
    assert set(table) == {cpu_decode.MERGED, *only, f"bandwidth ceiling of {cpu_decode.DEFAULT}"}
    for name in only:
        for threads in {str(os.cpu_count()), "1"}:
            assert table[name][threads]["decode_tps"] > 0 and table[name][threads]["ttft_ms"] > 0
        assert table[name]["peak_memory"] > 0 and 0 <= table[name]["accuracy"] <= 1
    assert table["onnx int4 default, no memory arena"]["accuracy"] == table[cpu_decode.DEFAULT]["accuracy"]
    assert all(bandwidth > 1e8 for bandwidth in result["bandwidth"].values())
    ops = dict((op, share) for op, share, _ in result["profile"]["ops"])
    assert "MatMulNBits (layers)" in ops and 0 < sum(ops.values()) <= 1
    assert "| variant |" in done.stdout and "bandwidth ceiling of" in done.stdout
    assert (ROOT / "docs" / "benchmarks.md").read_text() == docs
