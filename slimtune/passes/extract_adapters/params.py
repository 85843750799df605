"""ExtractAdapters parameters: Olive's names where Olive has them (make_inputs, dynamic_lora_r, optional_inputs,
save_format), accepted with the one value slimtune implements."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slimtune.config.base import Strict


class ExtractAdaptersParams(Strict):
    adapter_name: str = Field(
        "adapter",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="name of the input adapter's file: adapters/NAME.onnx_adapter",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="more PEFT adapters trained on the same base (name -> folder), exported for the same int4 "
        "base; each must adapt the same modules",
    )
    quantize: Literal["int4", "none"] = Field(
        "int4", description="int4: the base's MatMuls to int4 (MatMulNBits), the LoRA path stays fp32"
    )
    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="int4 block size")
    make_inputs: Literal[True] = Field(True, description="Olive's option: LoRA weights become graph inputs")
    dynamic_lora_r: Literal[True] = Field(True, description="Olive's option: the rank is a free dimension")
    optional_inputs: Literal[True] = Field(
        True, description="Olive's option: the inputs default to empty (rank 0), so the base runs alone"
    )
    save_format: Literal["onnx_adapter"] = Field(
        "onnx_adapter", description="Olive's option: the adapter file format"
    )
