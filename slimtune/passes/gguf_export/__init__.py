"""GGUFExport: a merged model (or base + adapter, merged on the way) to a .gguf file for llama.cpp / Ollama,
converted by llama.cpp's own converter and quantized by llama.cpp's quantizer (docs/gguf.md)."""

from slimtune.models.shape import fp32_weight_bytes
from slimtune.passes.gguf_export.params import GGUFExportParams
from slimtune.passes.memory import LIBRARIES_BYTES, Estimate, MemoryQuery
from slimtune.passes.registry import PassSpec, register_pass

__all__ = ["GGUFExportParams"]


def gguf_estimate(query: MemoryQuery) -> Estimate | None:
    """The converter reads tensors lazily, one at a time; the quantizer maps its input and holds a few rows
    of tensors. The peak is a merge on the way (an adapter input: the base model in fp32, twice while saving),
    else the libraries and the largest tensors, bounded here by one copy of the fp32 weights."""
    weights = fp32_weight_bytes(query.model)
    if not weights:
        return None
    parts = {"fp32 weights": weights, "libraries": LIBRARIES_BYTES}
    advice = "Free memory or export on a larger machine"
    return Estimate(query.name, query.type, sum(parts.values()), parts, "cpu", advice)


def out_of_memory_advice(query: MemoryQuery) -> str:
    return (
        "Free memory or export on a larger machine; with an adapter as input, put a MergeAdapterWeights pass "
        "with save_dtype bfloat16 before GGUFExport (the merge on the way holds the base in fp32)."
    )


register_pass(
    PassSpec(
        "GGUFExport",
        GGUFExportParams,
        "slimtune.passes.gguf_export.run:run",
        version=1,
        summary="GGUF export for llama.cpp / Ollama",
        input_kinds=("hf", "adapter"),
        output_kind="gguf",
        memory=gguf_estimate,
        memory_advice=out_of_memory_advice,
        devices=("cpu", "cuda"),
        libraries=("llama-cpp-python",),  # its converter and quantizer make the file
        example={"quant_type": "q8_0"},
    )
)
