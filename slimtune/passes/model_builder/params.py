"""ModelBuilder: export to ONNX with onnxruntime-genai's model builder (int4 / int8 / fp16 / bf16 / fp32)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from slimtune.config.base import Strict


class ModelBuilderParams(Strict):
    precision: Literal["int4", "int8", "fp16", "bf16", "fp32"] = Field(
        "int4", description="weights precision"
    )
    execution_provider: Literal["cpu", "cuda", "dml", "webgpu"] | None = Field(
        None, description="target provider; default taken from the target system's accelerators"
    )
    int4_block_size: Literal[16, 32, 64, 128, 256] | None = Field(
        None,
        description="quantization block size (builder default 32)",
        json_schema_extra={"search_defaults": [32, 64, 128]},
    )
    int4_accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None,
        description="MatMulNBits compute: 1 fp32, 2 fp16, 3 bf16, 4 int8 (builder default 4 on CPU)",
        json_schema_extra={"search_defaults": [1, 4]},
    )
    int4_algo_config: str | None = Field(
        None,
        description="int4 algorithm: default, rtn, k_quant, rtn_last, k_quant_last, k_quant_mixed ...",
        json_schema_extra={"search_defaults": ["default", "k_quant_mixed"]},
    )
    int4_is_symmetric: bool | None = Field(None, description="symmetric int4 (builder default true)")
    int4_op_types_to_quantize: list[str] | None = Field(None, description="e.g. [MatMul, Gather]")
    exclude_embeds: bool | None = Field(None, description="keep the embedding in higher precision")
    exclude_lm_head: bool | None = Field(None, description="keep the output head in higher precision")
    enable_cuda_graph: bool | None = None
    adapter_path: str | None = Field(
        None, description="export base + this unmerged adapter (LoRA weights as inputs)"
    )
    extra_options: dict[str, Any] = Field(default_factory=dict, description="passed to the builder as given")
    session_options: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="added to genai_config.json's decoder session_options: ONNX Runtime session settings "
        "(intra_op_num_threads, graph_optimization_level, enable_cpu_mem_arena) or config keys such as "
        '"session.intra_op.allow_spinning": "0" (threads sleep between operators: faster where other programs '
        "keep the cores busy, slower on an idle machine; docs/benchmarks.md, CPU decode)",
    )
    metadata_only: bool = Field(False, description="write genai_config.json and tokenizer files only")

    @field_validator("extra_options")
    @classmethod
    def _filename_stays_inside(cls, value: dict[str, Any]) -> dict[str, Any]:
        """`filename` is the one option that names a file the builder writes, inside the pass's output folder:
        a path there would write the model elsewhere."""
        name = value.get("filename")
        if name is not None and (
            not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
        ):
            raise ValueError(
                f"extra_options.filename: must be a plain file name such as model.onnx (it is written inside "
                f"the pass's output folder), got {name!r}"
            )
        return value
