"""MergeAdapterWeights' work: load the base in full precision, apply the adapter, merge, save safetensors."""

from __future__ import annotations

import shutil
from pathlib import Path

from slimtune.errors import UserError
from slimtune.models.ref import ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.merge.params import MergeParams

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def run(ctx: PassContext, params: MergeParams) -> ModelRef:
    if ctx.input.kind != "adapter" or not ctx.input.base_path:
        raise UserError("MergeAdapterWeights needs an adapter and its base model: put a LoRA pass before it")
    import torch
    import transformers
    from peft import PeftModel

    from slimtune.models.hf import load_causal_lm

    base, adapter = Path(ctx.input.base_path), Path(ctx.input.path)
    grid = ctx.meta.quantized_base or {}
    if grid.get("scheme") == "int4":
        ctx.log(
            "      warning: this adapter was trained against the int4 grid (quantization_aware); merged into "
            "the float base it loses accuracy. Send it to ModelBuilder unmerged instead."
        )
    load_kwargs = ctx.load_kwargs()
    config_kwargs = {k: v for k, v in load_kwargs.items() if k != "use_safetensors"}
    config = transformers.AutoConfig.from_pretrained(base, **config_kwargs)
    if params.save_dtype == "auto":
        # a QLoRA base was 4-bit only while training: the merge happens on the full-precision weights
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
    else:
        dtype = getattr(torch, params.save_dtype)
    if grid.get("scheme") == "bnb-4bit":
        model = dequantized_qlora_base(base, grid, dtype, load_kwargs, ctx.log)
    else:
        model = load_causal_lm(base, dtype, device=None, **load_kwargs)
    from slimtune.library_warnings import peft_calls

    with peft_calls():
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model = model.to(dtype)
    model.save_pretrained(ctx.output_dir, safe_serialization=True)
    # tokenizer and generation settings: from the adapter folder (saved by LoRA), else from the base
    for name in TOKENIZER_FILES:
        source = adapter / name if (adapter / name).exists() else base / name
        if source.exists():
            shutil.copy2(source, ctx.output_dir / name)
    if (base / "generation_config.json").exists():
        shutil.copy2(base / "generation_config.json", ctx.output_dir / "generation_config.json")
    ctx.metrics["dtype"] = str(dtype).replace("torch.", "")
    return ModelRef(str(ctx.output_dir), "hf")


def dequantized_qlora_base(base: Path, grid: dict, dtype, load_kwargs: dict, log):
    """The base a QLoRA adapter was trained against: quantized to 4 bits exactly as in training, then
    dequantized, so the merge adds the adapter to the weights it learned beside (not to the originals).
    Rebuilding the 4-bit image needs bitsandbytes on CUDA; without them the merge uses the original
    full-precision weights and says so."""
    import importlib.util

    import torch

    from slimtune.models.hf import load_causal_lm

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        log(
            "      note: QLoRA adapter merged into the full-precision base weights (rebuilding the 4-bit base "
            "it was trained against needs bitsandbytes on CUDA)"
        )
        return load_causal_lm(base, dtype, device=None, **load_kwargs)
    compute = getattr(torch, grid.get("compute_dtype", "bfloat16"))
    model = load_causal_lm(base, compute, device=None, quantized_base=grid, dequantize=True, **load_kwargs)
    log(f"      QLoRA: base rebuilt in {grid.get('quant_type', 'nf4')} and dequantized before the merge")
    return model.to("cpu", torch.float32)
