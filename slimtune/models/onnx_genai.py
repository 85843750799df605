"""An ONNX Runtime GenAI model folder (what ModelBuilder writes), opened for generation and scoring.

The one wrapper over onnxruntime_genai: `slimtune generate` and the evaluator both use it. It speaks token ids,
encoded with the Hugging Face tokenizer files the builder copies into the folder, so prompts are laid out
exactly as in training; ids reach the model through `generator.append_tokens`, never strings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError, UserError
from slimtune.models.decoding import GreedyDecoding, StopFn, eos_ids, logprobs_by_context, physical_cores
from slimtune.models.hf import load_tokenizer
from slimtune.models.kind import GENAI_CONFIG, is_onnx_genai_folder

# providers whose models are built anywhere and run on the CPU where the provider is absent:
# genai_config provider name -> (what users call it, onnxruntime_genai's availability check)
FALLBACK_TO_CPU = {"dml": ("DirectML", "is_dml_available"), "webgpu": ("WebGPU", "is_webgpu_available")}
GENERATOR_ROOM = 128  # ONNX generators are sized in steps of this many tokens (KV cache buffers)


class OnnxGenaiModel(GreedyDecoding):
    """An ONNX Runtime GenAI folder. Scoring appends a context once and each continuation after it, reading
    the logits of the appended tokens, then rewinds to the context (one prompt pass for all labels)."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        adapter: str | Path | None = None,
        default_adapter: bool = True,
    ):
        folder = Path(path)
        if not is_onnx_genai_folder(folder):
            raise ModelError(f"{folder} is not an ONNX Runtime GenAI model folder (no {GENAI_CONFIG})")
        import onnxruntime_genai as og

        self.kind = "onnx"
        self._og = og
        self.folder = folder
        genai = json.loads((folder / GENAI_CONFIG).read_text())
        options = genai["model"]["decoder"].get("session_options", {})
        configured = options.get("intra_op_num_threads")
        # set explicitly, so that the recorded count is the one used (ONNX Runtime's default: physical cores)
        self._threads = int(threads or configured or physical_cores())
        config = og.Config(str(folder))
        self.note: str | None = None  # how this run differs from the model's target, for the records
        provider = next(iter((options.get("provider_options") or [{}])[0]), "cpu")
        if provider in FALLBACK_TO_CPU and not getattr(og, FALLBACK_TO_CPU[provider][1])():
            # a DirectML / WebGPU model is built on any OS; where its provider is absent it runs on the CPU
            config.clear_providers()
            self.note = (
                f"built for {FALLBACK_TO_CPU[provider][0]}, which is not available here: run on the CPU "
                "(accuracy as on the target; latency is the CPU's)"
            )
        if self._threads != configured:
            overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": self._threads}}}}
            config.overlay(json.dumps(overlay))
        try:
            self.model = og.Model(config)
        except Exception as err:  # onnxruntime_genai raises plain RuntimeError for every load problem
            raise ModelError(f"onnxruntime_genai could not load {folder}: {err}") from err
        # an .onnx_adapter applied to every generation (checked against the base first); a base exported with
        # its adapter apart (ExtractAdapters) gets that adapter unless another is named: it is the trained model
        self._adapters = None
        from slimtune.models.onnx_adapters import check_adapter_file
        from slimtune.models.onnx_adapters import default_adapter as own_adapter

        if adapter is None and default_adapter:
            adapter = own_adapter(folder)
        self.adapter = Path(adapter) if adapter is not None else None
        if adapter is not None:
            check_adapter_file(folder, Path(adapter))
            self._adapters = og.Adapters(self.model)
            self._adapters.load(str(adapter), "adapter")
        self.tokenizer = load_tokenizer(folder)
        self.context_length = int(genai["model"].get("context_length") or genai["search"]["max_length"])
        self.eos_token_ids = eos_ids(self.tokenizer.eos_token_id, genai["model"].get("eos_token_id"))
        self._generators: dict[bool, tuple[Any, int]] = {}
        self.generator_setup_ms: float | None = None

    def threads(self) -> int:
        return self._threads

    def _generator(self, length: int, ignore_eos: bool = False):
        """A generator rewound to empty, with room for `length` tokens. Creating one costs ~15 ms in
        onnxruntime_genai 0.18 whatever the model size, so one is kept (per EOS mode) and rewound;
        `rewind_to(0)` gives the same ids and logits as a fresh one (checked in tests)."""
        if length > self.context_length:
            raise UserError(f"{length} tokens do not fit in {self.folder}'s context of {self.context_length}")
        cached = self._generators.get(ignore_eos)
        if cached is not None and cached[1] >= length:
            cached[0].rewind_to(0)
            return cached[0]
        og = self._og
        capacity = min(
            self.context_length, max(GENERATOR_ROOM, -(-length // GENERATOR_ROOM) * GENERATOR_ROOM)
        )
        start = time.perf_counter()
        params = og.GeneratorParams(self.model)
        # min_length == max_length keeps EOS from ending a timed run, so each run decodes as many tokens
        params.set_search_options(
            max_length=capacity, min_length=capacity if ignore_eos else 0, do_sample=False
        )
        generator = og.Generator(self.model, params)
        if self._adapters is not None:
            generator.set_active_adapter(self._adapters, "adapter")
        self.generator_setup_ms = (time.perf_counter() - start) * 1000
        self._generators[ignore_eos] = (generator, capacity)
        return generator

    def _greedy(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        stop: StopFn | None,
        ignore_eos: bool,
        on_first: Callable[[], None] | None = None,
    ) -> list[int]:
        room = self.context_length - len(prompt_ids)
        if room <= 0:
            raise UserError(
                f"the prompt has {len(prompt_ids)} tokens; {self.folder} takes at most {self.context_length}"
            )
        max_new_tokens = min(max_new_tokens, room)
        generator = self._generator(len(prompt_ids) + max_new_tokens, ignore_eos)
        generator.append_tokens(prompt_ids)
        new: list[int] = []
        while len(new) < max_new_tokens and not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if on_first is not None and not new:
                on_first()
            if token in self.eos_token_ids and not ignore_eos:
                break
            new.append(token)
            if stop is not None and stop(new):
                break
        return new

    def token_logprobs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        state: dict[str, Any] = {}

        def feed_context(context: list[int], longest: int):
            state["generator"] = generator = self._generator(len(context) + longest)
            state["context"] = len(context)
            generator.append_tokens(context)
            return generator.get_logits().reshape(-1)

        def feed_after(ids: list[int]):
            generator = state["generator"]
            generator.append_tokens(ids)
            logits = generator.get_output("logits")
            rows = logits.reshape(-1, logits.shape[-1])[-len(ids) :]
            generator.rewind_to(state["context"])
            return rows

        return logprobs_by_context(pairs, feed_context, feed_after)
