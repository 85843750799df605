"""MergeAdapterWeights: fold a LoRA / QLoRA / DoRA adapter into its base and save a plain model folder."""

from slimtune.models.shape import parameter_count
from slimtune.passes.memory import LIBRARIES_BYTES, Estimate, MemoryQuery
from slimtune.passes.merge.params import MergeParams
from slimtune.passes.registry import PassSpec, register_pass

__all__ = ["MergeParams"]


def merge_estimate(query: MemoryQuery) -> Estimate | None:
    count = parameter_count(query.model)
    if not count:
        return None
    weights = int(count * (4 if query.params.save_dtype in ("auto", "float32") else 2))
    parts = {"model": weights, "saving": weights, "libraries": LIBRARIES_BYTES}
    advice = "Set the merge's save_dtype to bfloat16 or float16, or free memory"
    return Estimate(query.name, query.type, sum(parts.values()), parts, "cpu", advice)


def out_of_memory_advice(query: MemoryQuery) -> str:
    return (
        "The merge holds the base model in full precision: free memory, use a larger machine, or set the "
        "pass's save_dtype to float16 / bfloat16."
    )


register_pass(
    PassSpec(
        "MergeAdapterWeights",
        MergeParams,
        "slimtune.passes.merge.run:run",
        version=1,
        summary="merge the adapter into the base weights",
        input_kinds=("adapter",),
        memory=merge_estimate,
        memory_advice=out_of_memory_advice,
    )
)
