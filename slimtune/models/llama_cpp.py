"""A GGUF model (what GGUFExport writes, or any .gguf file), run by llama.cpp through llama-cpp-python.

The third runtime beside transformers and ONNX Runtime GenAI: `slimtune generate`, `slimtune evaluate` and the
evaluation of a run's stages open it through `models.runtime.open_model`. It speaks token ids like the others:
prompts are encoded with the Hugging Face tokenizer files GGUFExport copies beside the .gguf file (or, for a
bare .gguf file, the tokenizer transformers reads out of it), so every kind gets the very same ids, and ids reach
llama.cpp through `llama_decode` batches, never strings. Logits are asked for only where they are read: the
last prompt token while generating (as llama.cpp's own tools do), every appended token while scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError, UserError
from slimtune.models.decoding import GreedyDecoding, StopFn, eos_ids, logprobs_by_context, physical_cores
from slimtune.models.kind import gguf_file

MAX_CONTEXT = 4096  # tokens of KV cache; a model trained on fewer gets its own length
BATCH = 512  # tokens per llama_decode call (llama.cpp's default n_batch)


def llama_cpp_missing() -> str | None:
    """Why llama.cpp cannot run here (None when it can)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return (
            "llama-cpp-python is not installed; install slimtune's gguf extra (`SLIMTUNE_EXTRAS=gguf make "
            "setup`, which builds it from source with CPU options that work on this machine)"
        )
    return None


class LlamaCppModel(GreedyDecoding):
    """A .gguf file (or a folder holding one) loaded by llama.cpp on the CPU."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        file = gguf_file(path)
        if file is None:
            raise ModelError(f"{path} is neither a .gguf file nor a folder holding exactly one")
        missing = llama_cpp_missing()
        if missing:
            raise UserError(f"{path} is a GGUF model, run by llama.cpp: {missing}")
        import llama_cpp
        from llama_cpp import Llama

        self.kind = "gguf"
        self.path = file
        self._lib = llama_cpp
        self._threads = int(threads or physical_cores())
        try:
            self.llm = Llama(
                model_path=str(file),
                n_ctx=min(_trained_context(file), MAX_CONTEXT),
                n_batch=BATCH,
                n_threads=self._threads,
                n_threads_batch=self._threads,
                logits_all=False,
                verbose=False,
            )
        except (
            ValueError,
            RuntimeError,
        ) as err:  # llama-cpp-python raises ValueError for a file it cannot load
            raise ModelError(f"llama.cpp could not load {file}: {err}") from err
        self.context_length = int(self.llm.n_ctx())
        self.n_vocab = int(self.llm.n_vocab())
        self._batch = llama_cpp.llama_batch_init(BATCH, 0, 1)
        self.tokenizer = _tokenizer(Path(path), file)
        self.eos_token_ids = eos_ids(self.tokenizer.eos_token_id, self.llm.token_eos())

    def __del__(self):
        batch = getattr(self, "_batch", None)
        if batch is not None:
            self._batch = None
            try:
                self._lib.llama_batch_free(batch)
            except (AttributeError, TypeError):  # interpreter shutdown: the library is already unloaded
                pass

    def threads(self) -> int:
        return self._threads

    def _decode(self, tokens: Sequence[int], start: int, *, every: bool) -> Any:
        """Feed `tokens` at positions start.. (the KV cache past `start` is dropped first); the logits of
        every fed token (`every`) or of the last one, as rows of a float32 array."""
        import numpy as np

        lib, ctx, batch = self._lib, self.llm.ctx, self._batch
        if start + len(tokens) > self.context_length:
            raise UserError(
                f"{start + len(tokens)} tokens do not fit in {self.path}'s context of {self.context_length}"
            )
        lib.llama_memory_seq_rm(lib.llama_get_memory(ctx), -1, start, -1)
        rows = []
        for begin in range(0, len(tokens), BATCH):
            chunk = tokens[begin : begin + BATCH]
            last_chunk = begin + BATCH >= len(tokens)
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = int(token)
                batch.pos[i] = start + begin + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = every or (last_chunk and i == len(chunk) - 1)
            status = lib.llama_decode(ctx, batch)
            if status != 0:
                raise ModelError(f"llama.cpp could not decode {len(chunk)} tokens of {self.path} ({status})")
            wanted = range(len(chunk)) if every else ([len(chunk) - 1] if last_chunk else [])
            for i in wanted:
                pointer = lib.llama_get_logits_ith(ctx, i)
                rows.append(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())
        return np.stack(rows)

    def _greedy(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        stop: StopFn | None,
        ignore_eos: bool,
        on_first: Callable[[], None] | None = None,
    ) -> list[int]:
        room = self.context_length - len(prompt_ids)
        if room <= 0 or not prompt_ids:
            raise UserError(
                f"the prompt has {len(prompt_ids)} tokens; {self.path} takes 1 to {self.context_length}"
            )
        max_new_tokens = min(max_new_tokens, room)
        logits = self._decode(prompt_ids, 0, every=False)[-1]
        new: list[int] = []
        while True:
            token = int(logits.argmax())
            if on_first is not None and not new:
                on_first()
            if token in self.eos_token_ids and not ignore_eos:
                break
            new.append(token)
            if (stop is not None and stop(new)) or len(new) >= max_new_tokens:
                break
            logits = self._decode([token], len(prompt_ids) + len(new) - 1, every=False)[-1]
        return new

    def token_logprobs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """Each context is fed once; each continuation after it (the cache past the context dropped)."""
        fed = [0]

        def feed_context(context: list[int], longest: int):
            fed[0] = len(context)
            return self._decode(context, 0, every=False)[-1]

        return logprobs_by_context(pairs, feed_context, lambda ids: self._decode(ids, fed[0], every=True))


def _trained_context(file: Path) -> int:
    """The context length the model was trained with, from the file's metadata (MAX_CONTEXT if unsaid)."""
    from gguf import GGUFReader

    fields = GGUFReader(file).fields
    architecture = fields.get("general.architecture")
    length = fields.get(f"{architecture.contents()}.context_length") if architecture else None
    return int(length.contents()) if length is not None else MAX_CONTEXT


def _tokenizer(path: Path, file: Path):
    """The Hugging Face tokenizer beside the file (GGUFExport copies it), else the one inside the file."""
    from slimtune.models.hf import load_tokenizer

    folder = path if path.is_dir() else file.parent
    try:
        return load_tokenizer(folder)
    except ModelError:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
