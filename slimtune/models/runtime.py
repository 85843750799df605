"""One interface over every model kind that is run rather than trained: a Hugging Face folder (base or merged),
a base model with a PEFT adapter (applied, not merged), an ONNX Runtime GenAI folder, and a GGUF model (llama.cpp).

Every opened model speaks token ids. Text is encoded once, with the Hugging Face tokenizer files present in
every folder, so `slimtune generate` and the evaluator hand the same ids to every kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from slimtune.errors import ModelError, UserError
from slimtune.models.decoding import StopFn, Timing
from slimtune.models.kind import model_kind
from slimtune.models.ref import ModelRef


class OpenedModel(Protocol):
    kind: str
    tokenizer: Any  # a transformers tokenizer
    eos_token_ids: set[int]

    def generate_ids(
        self, prompt_ids: list[int], max_new_tokens: int, *, stop: StopFn | None = None
    ) -> list[int]:
        """Greedy new ids after `prompt_ids`, EOS excluded; stops at EOS, `max_new_tokens` or `stop`."""
        ...

    def timed_generate(self, prompt_ids: list[int], new_tokens: int) -> Timing:
        """Exactly `new_tokens` greedy tokens (EOS ignored), with time to first token and total time."""
        ...

    def generate(
        self,
        prompt: str | list[int],
        max_new_tokens: int,
        stream_callback: Callable[[str], None] | None = None,
        stop_at_newline: bool = False,
        stop_text: str | None = None,
    ) -> str:
        """The greedy completion decoded, streamed piece by piece to `stream_callback`."""
        ...

    def token_logprobs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """For each (context_ids, continuation_ids): the summed log-probability of the continuation."""
        ...

    def threads(self) -> int:
        """Intra-op threads the model runs with."""
        ...


def runnable_kind(folder: Path, adapter_advice: str) -> str:
    """onnx, hf or gguf for a model that can be run as it is; a clear error for a PEFT adapter (with
    `adapter_advice`: what to do instead) and for anything else."""
    kind = model_kind(folder)
    if kind == "adapter":
        raise UserError(f"{folder} is a PEFT adapter; {adapter_advice}")
    if kind not in ("onnx", "hf", "gguf"):
        raise ModelError(
            f"{folder} is neither an ONNX GenAI folder (genai_config.json), a Hugging Face folder "
            "(config.json) nor a GGUF model (a .gguf file or a folder holding one)"
        )
    return kind


def open_model(
    ref: ModelRef, *, threads: int | None = None, adapter: str | Path | None = None
) -> OpenedModel:
    """The opened model for a model reference. `threads`: intra-op threads (None: ONNX Runtime uses one per
    physical core, torch keeps its current setting). `adapter`: an .onnx_adapter file on an ONNX base."""
    if ref.kind == "onnx":
        from slimtune.models.onnx_genai import OnnxGenaiModel

        return OnnxGenaiModel(ref.path, threads=threads, adapter=adapter)
    if adapter is not None:
        raise UserError(
            f"--adapter {adapter}: adapters (.onnx_adapter) apply to an ONNX base; {ref.path} is not one"
        )
    if ref.kind == "gguf":
        from slimtune.models.llama_cpp import LlamaCppModel

        return LlamaCppModel(ref.path, threads=threads)
    from slimtune.models.hf import HfModel

    if ref.kind == "adapter":
        if not ref.base_path:
            raise ModelError(f"adapter {ref.path}: no base model folder given (ModelRef.base_path)")
        return HfModel(ref.base_path, adapter_path=ref.path, threads=threads)
    if ref.kind == "hf":
        return HfModel(ref.path, threads=threads)
    raise UserError(f"unknown model kind {ref.kind!r}; one of hf, adapter, onnx, gguf")
