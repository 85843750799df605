"""ModelBuilder: export to ONNX with onnxruntime-genai's model builder (int4 / int8 / fp16 / bf16 / fp32)."""

from slimtune.models.shape import fp32_weight_bytes
from slimtune.passes.memory import Estimate, MemoryQuery
from slimtune.passes.model_builder.params import ModelBuilderParams
from slimtune.passes.registry import PassSpec, register_pass

__all__ = ["ModelBuilderParams"]

# Peak memory of a build: a multiple of the fp32 weights plus the libraries (torch, transformers, onnx: 0.4 GB).
# Measured on the default model (SmolLM2-135M, 538 MB fp32, 2 CPU cores): peak RSS 1.15 GB for fp32, 1.79 GB
# for int4, 2.01 GB for int8; this estimate gives 2.1 GB.
MEMORY_FACTOR = 3.0
MEMORY_OVERHEAD = 512 * 2**20


def builder_estimate(query: MemoryQuery) -> Estimate | None:
    """None when the pass's extra_options.ignore_memory_check says so (Olive's switch for this pass)."""
    if str(query.params.extra_options.get("ignore_memory_check", "")).lower() in ("true", "1", "yes"):
        return None
    weights = fp32_weight_bytes(query.model)
    if query.params.adapter_path:
        weights += fp32_weight_bytes(query.params.adapter_path)
    if not weights:
        return None
    parts = {f"{MEMORY_FACTOR:g} x fp32 weights": int(MEMORY_FACTOR * weights), "libraries": MEMORY_OVERHEAD}
    advice = "Free memory or build on a larger machine (or set this pass's extra_options.ignore_memory_check: true)"
    return Estimate(query.name, query.type, sum(parts.values()), parts, "cpu", advice)


def out_of_memory_advice(query: MemoryQuery) -> str:
    return "Free memory or build on a larger machine (the build holds about 3x the fp32 weights)."


register_pass(
    PassSpec(
        "ModelBuilder",
        ModelBuilderParams,
        "slimtune.passes.model_builder.run:run",
        version=1,
        summary="ONNX export for onnxruntime-genai",
        input_kinds=("hf", "adapter"),
        output_kind="onnx",
        memory=builder_estimate,
        memory_advice=out_of_memory_advice,
        example={"precision": "int4"},
    )
)
