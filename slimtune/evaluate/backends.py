"""One interface over every model kind the evaluator meets: a Hugging Face folder (base or merged), a base model
with a PEFT adapter (applied, not merged), and an ONNX Runtime GenAI folder.

Every backend speaks token ids. Text is encoded once, with the Hugging Face tokenizer files present in every
folder (the model builder copies them), so prompts are laid out exactly as in training and the same ids reach
every stage; ONNX GenAI gets ids through `generator.append_tokens`, never strings.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from slimtune.errors import ModelError, UserError
from slimtune.evaluate.onnx_genai import GENAI_CONFIG, is_onnx_genai_folder
from slimtune.models.ref import ModelRef

GENERATOR_ROOM = 128  # ONNX generators are sized in steps of this many tokens (KV cache buffers)
StopFn = Callable[[list[int]], bool]  # new ids so far -> stop now


@dataclass
class Timing:
    """One greedy generation, timed: ids start when the prompt ids are handed over."""

    new_ids: list[int]
    prompt_tokens: int
    ttft_s: float  # until the first new token is known (prompt processing included)
    total_s: float


class Backend(Protocol):
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

    def token_logprobs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """For each (context_ids, continuation_ids): the summed log-probability of the continuation."""
        ...

    def perplexity(self, sequences: Sequence[list[int] | str]) -> float: ...

    def threads(self) -> int:
        """Intra-op threads the model runs with."""
        ...


def open_model(ref: ModelRef, *, threads: int | None = None) -> Backend:
    """The backend for a model reference. `threads`: intra-op threads (None: ONNX Runtime uses one per
    physical core, torch keeps its current setting)."""
    if ref.kind == "onnx":
        return OnnxBackend(ref.path, threads=threads)
    if ref.kind == "adapter":
        if not ref.base_path:
            raise ModelError(f"adapter {ref.path}: no base model folder given (ModelRef.base_path)")
        return HfBackend(ref.base_path, adapter_path=ref.path, threads=threads)
    if ref.kind == "hf":
        return HfBackend(ref.path, threads=threads)
    raise UserError(f"unknown model kind {ref.kind!r}; one of hf, adapter, onnx")


def load_tokenizer(*folders: str | Path):
    """The Hugging Face tokenizer of the first folder that holds one."""
    from transformers import AutoTokenizer

    for folder in folders:
        if any(Path(folder, name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    raise ModelError(
        f"no tokenizer files (tokenizer.json) in {', '.join(map(str, folders))}; the evaluator encodes "
        "with the Hugging Face tokenizer so that prompts match training"
    )


def _quantize_base_like_training(model: Any, adapter_path: str | Path) -> None:
    """An adapter trained on an int4-quantized base (LoRA quantization_aware) is evaluated on that base."""
    from slimtune.models.ref import ModelMeta

    meta = ModelMeta.load(adapter_path)
    grid = meta.quantized_base if meta else None
    if grid and grid.get("scheme") == "int4":
        from slimtune.models.fake_quant import fake_quantize_model_int4

        fake_quantize_model_int4(model, int(grid.get("block_size", 32)))


def _eos_ids(*candidates: Any) -> set[int]:
    out: set[int] = set()
    for value in candidates:
        if value is None:
            continue
        out.update(int(v) for v in (value if isinstance(value, (list, tuple, set)) else [value]))
    return out


class _GreedyDecoding:
    """Generation and timing for a backend that implements `_greedy` (one token at a time, so the first
    token's time can be marked)."""

    def generate_ids(
        self, prompt_ids: list[int], max_new_tokens: int, *, stop: StopFn | None = None
    ) -> list[int]:
        return self._greedy(prompt_ids, max_new_tokens, stop, ignore_eos=False)

    def timed_generate(self, prompt_ids: list[int], new_tokens: int) -> Timing:
        marks: list[float] = []
        start = time.perf_counter()
        ids = self._greedy(
            prompt_ids, new_tokens, None, ignore_eos=True, on_first=lambda: marks.append(time.perf_counter())
        )
        end = time.perf_counter()
        return Timing(ids, len(prompt_ids), marks[0] - start, end - start)


class HfBackend(_GreedyDecoding):
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

        from slimtune.models.loading import load_causal_lm

        if threads:
            torch.set_num_threads(threads)
        self.kind = "adapter" if adapter_path else "hf"
        self.batch_size = batch_size
        model = load_causal_lm(path)
        if adapter_path:
            import peft

            _quantize_base_like_training(model, adapter_path)
            from slimtune.library_warnings import peft_calls

            try:
                with peft_calls():
                    model = peft.PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
            except (OSError, ValueError, KeyError) as err:
                raise ModelError(f"peft could not apply the adapter {adapter_path} to {path}: {err}") from err
        self.model = model.eval()
        self.tokenizer = load_tokenizer(*([adapter_path] if adapter_path else []), path)
        gen = getattr(self.model, "generation_config", None)
        self.eos_token_ids = _eos_ids(self.tokenizer.eos_token_id, getattr(gen, "eos_token_id", None))
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
                if len(new) >= max_new_tokens or (stop is not None and stop(new)):
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

    def perplexity(self, sequences: Sequence[list[int] | str]) -> float:
        from slimtune.evaluate.perplexity import perplexity_of

        return perplexity_of(self, sequences)["perplexity"]


def _log_softmax(logits) -> Any:
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class OnnxBackend(_GreedyDecoding):
    """An ONNX Runtime GenAI folder. Scoring appends a context once and each continuation after it, reading
    the logits of the appended tokens, then rewinds to the context (one prompt pass for all labels)."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        import onnxruntime_genai as og

        folder = Path(path)
        if not is_onnx_genai_folder(folder):
            raise ModelError(f"{folder} is not an ONNX Runtime GenAI model folder (no {GENAI_CONFIG})")
        self.kind = "onnx"
        self._og = og
        self.folder = folder
        genai = json.loads((folder / GENAI_CONFIG).read_text())
        options = genai["model"]["decoder"].get("session_options", {})
        configured = options.get("intra_op_num_threads")
        # set explicitly, so that the recorded count is the one used (ONNX Runtime's default: physical cores)
        self._threads = int(threads or configured or _physical_cores())
        config = og.Config(str(folder))
        if self._threads != configured:
            overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": self._threads}}}}
            config.overlay(json.dumps(overlay))
        try:
            self.model = og.Model(config)
        except Exception as err:  # onnxruntime_genai raises plain RuntimeError for every load problem
            raise ModelError(f"onnxruntime_genai could not load {folder}: {err}") from err
        self.tokenizer = load_tokenizer(folder)
        self.context_length = int(genai["model"].get("context_length") or genai["search"]["max_length"])
        self.eos_token_ids = _eos_ids(self.tokenizer.eos_token_id, genai["model"].get("eos_token_id"))
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
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (context, _) in enumerate(pairs):
            groups.setdefault(tuple(context), []).append(index)
        out = [0.0] * len(pairs)
        for context, members in groups.items():
            if not context:
                raise UserError("token_logprobs: the context needs at least one token")
            longest = max(len(pairs[i][1]) for i in members)
            generator = self._generator(len(context) + longest)
            generator.append_tokens(list(context))
            first = _log_softmax(generator.get_logits().reshape(-1))  # predicts the continuation's 1st token
            for i in members:
                continuation = list(pairs[i][1])
                if not continuation:
                    continue
                total = float(first[continuation[0]])
                if len(continuation) > 1:
                    generator.append_tokens(continuation[:-1])
                    logits = generator.get_output("logits").reshape(-1, first.shape[-1])[
                        -(len(continuation) - 1) :
                    ]
                    rows = _log_softmax(logits)
                    total += float(sum(rows[k, continuation[k + 1]] for k in range(len(continuation) - 1)))
                    generator.rewind_to(len(context))
                out[i] = total
        return out

    def perplexity(self, sequences: Sequence[list[int] | str]) -> float:
        from slimtune.evaluate.perplexity import perplexity_of

        return perplexity_of(self, sequences)["perplexity"]


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1
