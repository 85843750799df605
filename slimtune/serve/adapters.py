"""Checks an ONNX Runtime adapter file against the base it is served on, before onnxruntime_genai loads it.

A base can take adapters only when it was exported with LoRA inputs (graph inputs whose names hold `lora`);
otherwise onnxruntime_genai fails at the first request with an obscure message. Checked here: the file exists
and is an `.onnx_adapter`, and the base's decoder graph has LoRA inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimtune.errors import UserError
from slimtune.models.kind import GENAI_CONFIG


def parse_adapter_args(values: list[str] | None) -> dict[str, Path]:
    """NAME=PATH pairs from --adapter, checked: names unique and usable in a model id (no ':')."""
    out: dict[str, Path] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(
                f"--adapter {value!r}: write NAME=PATH, e.g. --adapter tone=adapters/tone.onnx_adapter"
            )
        if ":" in name or "/" in name:
            raise UserError(f"--adapter {value!r}: the name may not hold ':' or '/'")
        if name in out:
            raise UserError(f"--adapter {name!r} is given twice")
        out[name] = Path(path)
    return out


def lora_inputs(base: Path) -> list[str]:
    """Names of the decoder graph's LoRA inputs (read from the graph, without its weights)."""
    import onnx

    genai = json.loads((base / GENAI_CONFIG).read_text())
    graph = onnx.load(str(base / genai["model"]["decoder"]["filename"]), load_external_data=False).graph
    return [i.name for i in graph.input if "lora" in i.name.lower()]


def check_adapters(base: Path, kind: str | None, adapters: dict[str, Path]) -> None:
    if kind != "onnx":
        raise UserError(
            f"--adapter: adapters are served on an ONNX Runtime GenAI base; {base} is not one (merge the "
            "adapter into the model, or export the base with ModelBuilder)"
        )
    for path in adapters.values():
        check_adapter(base, path)


def check_adapter(base: Path, adapter: Path) -> None:
    if not adapter.is_file():
        raise UserError(f"--adapter {adapter}: no such file")
    if adapter.suffix != ".onnx_adapter":
        raise UserError(
            f"--adapter {adapter}: not an ONNX Runtime adapter file (.onnx_adapter); a PEFT adapter folder is "
            "merged (MergeAdapterWeights) or exported to .onnx_adapter first"
        )
    if not lora_inputs(base):
        raise UserError(
            f"--adapter {adapter}: the base {base} was exported without LoRA inputs, so no adapter can be "
            "applied to it; export the base with its adapter kept separate"
        )
