"""Hugging Face models, loaded: a folder, optionally with a PEFT adapter, optionally on a quantized base.

`load_causal_lm` is the one place a causal LM is loaded from a folder (training, merging, generation and
evaluation all call it), and `bnb_4bit_config` the one place the bitsandbytes 4-bit config is built. `HfModel`
wraps a loaded model for generation and scoring in token ids (see models/runtime.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError, UserError
from slimtune.models.decoding import GreedyDecoding, StopFn, eos_ids
from slimtune.models.loading import check_model_folder

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def bnb_4bit_config(grid: dict[str, Any]):
    """The bitsandbytes 4-bit config for a grid as ModelMeta.quantized_base records it (scheme bnb-4bit)."""
    import torch
    import transformers

    return transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=grid.get("quant_type") or "nf4",
        bnb_4bit_use_double_quant=bool(grid.get("double_quant")),
        bnb_4bit_compute_dtype=getattr(torch, grid.get("compute_dtype") or "bfloat16"),
    )


def load_causal_lm(
    path: str | Path,
    dtype: Any = "float32",
    device: str | None = "cpu",
    trust_remote_code: bool = False,
    *,
    allow_pickle: bool = False,
    adapter: str | Path | None = None,
    quantized_base: dict[str, Any] | None = None,
    dequantize: bool = False,
    **load_kwargs: Any,
):
    """A causal LM from a checked local folder, loaded from safetensors (pickled weights only if allowed).

    `quantized_base` puts the base on a grid, as ModelMeta.quantized_base records it: scheme `bnb-4bit` loads
    it in 4 bits through bitsandbytes on the CUDA device LOCAL_RANK (with `dequantize`, then back to floats:
    the image a QLoRA adapter learned beside), scheme `int4` fake-quantizes it onto ONNX Runtime's int4 grid.
    `adapter`: a PEFT adapter folder applied on top (not merged, not trainable). `device`: where the model is
    moved (None: where loading put it). `load_kwargs`: further from_pretrained arguments (attn_implementation,
    revision, variant; use_safetensors=False is allow_pickle).
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(path)
    allow_pickle = allow_pickle or load_kwargs.pop("use_safetensors", None) is False
    check_model_folder(folder, allow_pickle=allow_pickle)
    if isinstance(dtype, str) and dtype != "auto":
        if dtype not in _DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))} or auto")
        dtype = getattr(torch, _DTYPES[dtype])
    if trust_remote_code:
        log.warning("loading %s with trust_remote_code=True: Python code in that folder will run", folder)
        load_kwargs["trust_remote_code"] = True
    scheme = (quantized_base or {}).get("scheme")
    if scheme == "bnb-4bit":
        load_kwargs["quantization_config"] = bnb_4bit_config(quantized_base)
        load_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=dtype,
        use_safetensors=None if allow_pickle else True,
        local_files_only=True,
        **load_kwargs,
    )
    if scheme == "bnb-4bit" and dequantize:
        model = model.dequantize()
    if scheme == "int4":
        from slimtune.models.fake_quant import fake_quantize_model_int4

        fake_quantize_model_int4(model, int(quantized_base.get("block_size", 32)))
    if device is not None and (scheme != "bnb-4bit" or dequantize):
        model = model.to(device)
    if adapter:
        import peft

        from slimtune.library_warnings import peft_calls

        try:
            with peft_calls():
                model = peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"peft could not apply the adapter {adapter} to {folder}: {err}") from err
    return model


def load_tokenizer(*folders: str | Path):
    """The Hugging Face tokenizer of the first folder that holds one (ONNX GenAI folders do: the builder
    copies it), so every kind of model encodes prompts exactly as training did."""
    from transformers import AutoTokenizer

    for folder in folders:
        if any(Path(folder, name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    raise ModelError(
        f"no tokenizer files (tokenizer.json) in {', '.join(map(str, folders))}; slimtune encodes "
        "with the Hugging Face tokenizer so that prompts match training"
    )


def int4_grid_of(adapter: str | Path) -> dict[str, Any] | None:
    """The int4 grid an adapter was trained against (LoRA quantization_aware), from its slimtune.json: it is
    run on the base quantized the same way, which is how ModelBuilder will run it."""
    from slimtune.models.ref import ModelMeta

    meta = ModelMeta.load(adapter)
    grid = meta.quantized_base if meta else None
    return grid if grid and grid.get("scheme") == "int4" else None


class HfModel(GreedyDecoding):
    """A transformers causal LM in fp32 on CPU; with `adapter_path`, the PEFT adapter applied (not merged)."""

    def __init__(
        self,
        path: str | Path,
        *,
        adapter_path: str | Path | None = None,
        threads: int | None = None,
        batch_size: int = 16,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.kind = "adapter" if adapter_path else "hf"
        self.batch_size = batch_size
        grid = int4_grid_of(adapter_path) if adapter_path else None
        model = load_causal_lm(path, adapter=adapter_path, quantized_base=grid)
        self.model = model.eval()
        self.tokenizer = load_tokenizer(*([adapter_path] if adapter_path else []), path)
        gen = getattr(self.model, "generation_config", None)
        self.eos_token_ids = eos_ids(self.tokenizer.eos_token_id, getattr(gen, "eos_token_id", None))
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def _greedy(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        stop: StopFn | None,
        ignore_eos: bool,
        on_first: Callable[[], None] | None = None,
    ) -> list[int]:
        import torch

        new: list[int] = []
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
            while True:
                token = int(out.logits[0, -1].argmax())
                if on_first is not None and not new:
                    on_first()
                if token in self.eos_token_ids and not ignore_eos:
                    break
                new.append(token)
                if (stop is not None and stop(new)) or len(new) >= max_new_tokens:
                    break
                # transformers >= 5.2x calls the KV cache `cache` (`past_key_values` is deprecated); earlier
                # 5.x releases know only `past_key_values`
                if getattr(out, "cache", None) is not None:
                    step = {"cache": out.cache}
                else:
                    step = {"past_key_values": out.past_key_values}
                out = self.model(input_ids=torch.tensor([[token]]), use_cache=True, **step)
        return new

    def token_logprobs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Right-padded batches (longest first, so batches hold similar lengths); one forward per batch."""
        import torch

        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out = [0.0] * len(pairs)
        with torch.inference_mode():
            for begin in range(0, len(order), self.batch_size):
                chunk = order[begin : begin + self.batch_size]
                seqs = [list(pairs[i][0]) + list(pairs[i][1]) for i in chunk]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for row, seq in enumerate(seqs):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                logprobs = torch.log_softmax(
                    self.model(input_ids=ids, attention_mask=mask).logits.float(), -1
                )
                for row, i in enumerate(chunk):
                    context, continuation = pairs[i]
                    if not continuation:
                        continue
                    if not context:
                        raise UserError("token_logprobs: the context needs at least one token")
                    positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
                    targets = torch.tensor(continuation)
                    out[i] = float(logprobs[row, positions, targets].sum())
        return out
