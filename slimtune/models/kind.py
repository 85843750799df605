"""What kind of model a path holds, told by its files: the one place that decides it.

An ONNX Runtime GenAI folder holds genai_config.json, a PEFT adapter adapter_config.json, a Hugging Face folder
config.json, and a GGUF model is a .gguf file or a folder holding exactly one (what GGUFExport writes: the
file, its Modelfile, the tokenizer files). Reads file names only; `loading.model_ref` builds a ModelRef from the
answer. As an input model a .gguf file is converted to a Hugging Face folder (models/store.py); as a stage or
a `--model` to run, it is run by llama.cpp (models/llama_cpp.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

GENAI_CONFIG = "genai_config.json"
ADAPTER_CONFIG = "adapter_config.json"
HF_CONFIG = "config.json"
FolderKind = Literal["onnx", "adapter", "hf", "gguf"]


def model_kind(path: str | Path) -> FolderKind | None:
    """onnx, adapter, hf or gguf for a model on disk; None for anything else (or nothing)."""
    path = Path(path)
    if path.is_file():
        return "gguf" if path.suffix.lower() == ".gguf" else None
    if is_onnx_genai_folder(path):
        return "onnx"
    if is_adapter_folder(path):
        return "adapter"
    if (path / HF_CONFIG).is_file():
        return "hf"
    if path.is_dir() and len(list(path.glob("*.gguf"))) == 1:
        return "gguf"
    return None


def gguf_file(path: str | Path) -> Path | None:
    """The .gguf file of a GGUF model: the path itself, or the one .gguf file in the folder."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    return found[0] if len(found) == 1 else None


def is_onnx_genai_folder(path: str | Path) -> bool:
    """True for a folder that onnxruntime_genai can load (it holds genai_config.json)."""
    return Path(path, GENAI_CONFIG).is_file()


def is_adapter_folder(path: str | Path) -> bool:
    """True for a PEFT adapter folder (it holds adapter_config.json)."""
    return Path(path, ADAPTER_CONFIG).is_file()
