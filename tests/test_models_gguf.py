"""GGUF header checks and errors, on small GGUF files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimtune.errors import ModelError, ResourceError
from slimtune.models.gguf import check_free_space, convert_gguf, inspect_gguf


def write_gguf(path: Path, architecture: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_name("tiny test model")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_inspect_reads_the_header(tmp_path):
    info = inspect_gguf(write_gguf(tmp_path / "tiny.gguf", "llama"))
    assert info.architecture == "llama" and info.parameters == 32 and info.name == "tiny test model"
    assert info.float32_bytes == 128


def test_unsupported_architecture_names_it_and_the_file(tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", "notanarch")
    with pytest.raises(ModelError, match=r"odd\.gguf: GGUF architecture 'notanarch' is not supported.*llama"):
        convert_gguf(path, tmp_path / "out")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"this is not gguf" * 4)
    with pytest.raises(ModelError, match="fake.gguf is not a readable GGUF file"):
        inspect_gguf(path)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        inspect_gguf(tmp_path / "absent.gguf")


def test_not_enough_disk_space(tmp_path):
    with pytest.raises(ResourceError, match="not enough disk space .*SLIMTUNE_HOME"):
        check_free_space(tmp_path, 1 << 60)
