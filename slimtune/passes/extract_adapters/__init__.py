"""ExtractAdapters: one int4 ONNX base exported with LoRA inputs, and the adapters as `.onnx_adapter` files that
ONNX Runtime GenAI applies per request (`slimtune serve --adapter`, `slimtune generate --adapter`)."""

from slimtune.models.shape import fp32_weight_bytes
from slimtune.passes.extract_adapters.params import ExtractAdaptersParams
from slimtune.passes.memory import Estimate, MemoryQuery
from slimtune.passes.registry import PassSpec, register_pass

__all__ = ["ExtractAdaptersParams"]

MEMORY_FACTOR = 4.0  # the fp32 build (about 3x, as ModelBuilder), then the graph loaded again to quantize it
MEMORY_OVERHEAD = 512 * 2**20


def extract_estimate(query: MemoryQuery) -> Estimate | None:
    weights = fp32_weight_bytes(query.model)
    if not weights:
        return None
    parts = {f"{MEMORY_FACTOR:g} x fp32 weights": int(MEMORY_FACTOR * weights), "libraries": MEMORY_OVERHEAD}
    return Estimate(query.name, query.type, sum(parts.values()), parts, "cpu", out_of_memory_advice(query))


def out_of_memory_advice(query: MemoryQuery) -> str:
    return "Free memory or build on a larger machine (the export holds about 4x the fp32 weights)."


register_pass(
    PassSpec(
        "ExtractAdapters",
        ExtractAdaptersParams,
        "slimtune.passes.extract_adapters.run:run",
        version=1,
        summary="int4 ONNX base with LoRA inputs + the adapters as .onnx_adapter files (multi-LoRA serving)",
        input_kinds=("adapter",),
        output_kind="onnx",
        memory=extract_estimate,
        memory_advice=out_of_memory_advice,
    )
)
