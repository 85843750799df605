"""What a model folder's files say about its size and shape, without loading any weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def fp32_weight_bytes(folder: str | Path) -> int:
    """Bytes the model's weights take in fp32: from safetensors headers, else from file sizes and the dtype."""
    folder = Path(folder)
    total = 0
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += 4 * count
    if total:
        return total
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    scale = 2 if ("16" in dtype) else 1
    return scale * sum(
        f.stat().st_size for pattern in ("*.bin", "*.pt", "*.pth") for f in folder.glob(pattern)
    )


def parameter_count(folder: str | Path) -> int:
    return fp32_weight_bytes(folder) // 4


def model_shape(folder: str | Path) -> dict[str, Any]:
    """hidden, intermediate, layers, heads, kv_heads, vocab from config.json ({} when unknown)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    if not hidden:
        return {}
    return {
        "hidden": hidden,
        "intermediate": config.get("intermediate_size") or config.get("n_inner") or 4 * hidden,
        "layers": config.get("num_hidden_layers") or config.get("n_layer") or 1,
        "heads": config.get("num_attention_heads") or config.get("n_head") or 1,
        "kv_heads": config.get("num_key_value_heads") or config.get("num_attention_heads") or 1,
        "vocab": config.get("vocab_size") or 32000,
    }
