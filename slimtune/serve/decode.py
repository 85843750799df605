"""The served model: a folder opened once, stepped one token at a time by each request.

Both kinds give a `Session` (the logits after what was appended; append more ids), so that sampling,
stop strings, time limits and cancellation live in one loop (`generate`) whatever the runtime. An ONNX
Runtime GenAI folder may carry LoRA adapters (`.onnx_adapter` files, loaded with `og.Adapters`), chosen per
request; a Hugging Face folder is served as it is (slower: fp32 torch).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slimtune.errors import UserError
from slimtune.models.kind import model_kind


class Session(Protocol):
    def logits(self) -> Any:
        """Next-token logits (1-D numpy array) after everything appended so far."""
        ...

    def append(self, ids: list[int]) -> None: ...


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: every token
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (OpenAI's)


@dataclass
class Outcome:
    finish_reason: str  # stop (EOS or a stop string), length (max_tokens), cancelled, timeout
    completion_tokens: int
    text: str


class ServedModel:
    """A model folder opened for serving: its tokenizer, context length, EOS ids and adapters by name."""

    def __init__(
        self, folder: str | Path, adapters: dict[str, Path] | None = None, threads: int | None = None
    ):
        self.folder = Path(folder)
        self.kind = model_kind(self.folder)
        adapters = adapters or {}
        if adapters:  # before the model loads: a wrong adapter is reported in a second, not after a minute
            from slimtune.serve.adapters import check_adapters

            check_adapters(self.folder, self.kind, adapters)
        if self.kind == "onnx":
            from slimtune.models.onnx_genai import OnnxGenaiModel

            opened = OnnxGenaiModel(self.folder, threads=threads, default_adapter=False)
            self._og, self._model = opened._og, opened.model
            self.context_length = opened.context_length
            self._adapters = self._load_adapters(adapters) if adapters else None
            genai = json.loads((self.folder / "genai_config.json").read_text())["model"]
            self.pad_token_id = genai.get("pad_token_id")
        elif self.kind == "hf":
            self.pad_token_id = None  # served one request at a time
            from slimtune.models.hf import HfModel

            opened = HfModel(self.folder, threads=threads)
            self._model = opened.model
            config = json.loads((self.folder / "config.json").read_text())
            self.context_length = int(config.get("max_position_embeddings") or 2048)
        else:
            raise UserError(
                f"--model {self.folder}: neither an ONNX Runtime GenAI folder (genai_config.json) nor a Hugging "
                "Face folder (config.json)"
            )
        self.tokenizer = opened.tokenizer
        self.eos_token_ids = opened.eos_token_ids
        self.adapter_names = sorted(adapters)
        self._lock = threading.Lock()  # the tokenizer is shared by request threads

    def _load_adapters(self, adapters: dict[str, Path]) -> Any:
        loaded = self._og.Adapters(self._model)
        for name, path in adapters.items():
            try:
                loaded.load(str(path), name)
            except Exception as err:  # onnxruntime_genai raises RuntimeError for every load problem
                raise UserError(
                    f"--adapter {name}={path}: onnxruntime_genai could not load it: {err}"
                ) from err
        return loaded

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        with self._lock:
            return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def batchable(self, prompt_ids: list[int]) -> bool:
        """Whether this prompt may share a batch: an ONNX model (the generator takes a padded batch of prompts),
        and a prompt whose last id is not the pad id (the generator would take it for padding)."""
        return self.kind == "onnx" and self.pad_token_id is not None and prompt_ids[-1] != self.pad_token_id

    def batch_generator(self, prompts: list[list[int]], max_new: int, adapter: str | None = None) -> Any:
        """ONNX Runtime GenAI's generator over a batch of prompts, padded on the right with the pad id (its
        layout: each row's logits are those after its own last prompt id)."""
        import numpy as np

        og, width = self._og, max(len(p) for p in prompts)
        padded = np.full((len(prompts), width), self.pad_token_id, dtype=np.int32)
        for i, ids in enumerate(prompts):
            padded[i, : len(ids)] = ids
        params = og.GeneratorParams(self._model)
        # greedy over the logits handed back each step: the rows are sampled by slimtune, not by the generator
        params.set_search_options(max_length=width + max_new, batch_size=len(prompts), do_sample=False)
        generator = og.Generator(self._model, params)
        if adapter:
            generator.set_active_adapter(self._adapters, adapter)
        generator.append_tokens(padded)
        return generator

    def session(self, prompt_ids: list[int], capacity: int, adapter: str | None = None) -> Session:
        if self.kind == "onnx":
            return _OnnxSession(self, prompt_ids, capacity, adapter)
        return _TorchSession(self._model, prompt_ids)


class _OnnxSession:
    def __init__(self, served: ServedModel, prompt_ids: list[int], capacity: int, adapter: str | None):
        og = served._og
        params = og.GeneratorParams(served._model)
        params.set_search_options(max_length=capacity)
        self.generator = og.Generator(served._model, params)
        if adapter:
            self.generator.set_active_adapter(served._adapters, adapter)
        self.generator.append_tokens(prompt_ids)

    def logits(self) -> Any:
        return self.generator.get_logits().reshape(-1)

    def append(self, ids: list[int]) -> None:
        self.generator.append_tokens(ids)


class _TorchSession:
    def __init__(self, model: Any, prompt_ids: list[int]):
        self.model = model
        self.out = None
        self.append(prompt_ids)

    def logits(self) -> Any:
        return self.out.logits[0, -1].float().numpy()

    def append(self, ids: list[int]) -> None:
        import torch

        step: dict[str, Any] = {}
        if self.out is not None:  # transformers >= 5.2x names the KV cache `cache`, earlier `past_key_values`
            cache = getattr(self.out, "cache", None)
            step = {"cache": cache} if cache is not None else {"past_key_values": self.out.past_key_values}
        with torch.inference_mode():
            self.out = self.model(input_ids=torch.tensor([ids]), use_cache=True, **step)


def pick(logits: Any, sampling: Sampling, rng: Any) -> int:
    """The next token: the argmax at temperature 0 (or top_k 1), otherwise drawn after top-k and top-p."""
    import numpy as np

    if sampling.logit_bias:
        logits = np.array(logits, dtype=np.float64)
        for token, bias in sampling.logit_bias.items():
            logits[token] += bias
    if sampling.temperature == 0 or sampling.top_k == 1:
        return int(np.argmax(logits))
    scaled = np.asarray(logits, dtype=np.float64) / sampling.temperature
    candidates = np.arange(scaled.shape[0])
    if 0 < sampling.top_k < scaled.shape[0]:
        candidates = np.argpartition(-scaled, sampling.top_k)[: sampling.top_k]
    weights = np.exp(scaled[candidates] - scaled[candidates].max())
    weights /= weights.sum()
    if sampling.top_p < 1:
        order = np.argsort(-weights)
        keep = order[: int(np.searchsorted(np.cumsum(weights[order]), sampling.top_p)) + 1]
        candidates, weights = candidates[keep], weights[keep] / weights[keep].sum()
    return int(rng.choice(candidates, p=weights))


@dataclass
class Row:
    """One request of a batch: its prompt, sampling and limits; `emit` and `cancel` as `generate` takes them."""

    prompt_ids: list[int]
    sampling: Sampling
    deadline: float = math.inf
    stop_text: str | None = None
    emit: Callable[[str], None] | None = None
    cancel: threading.Event | None = None


class _Answer:
    """One answer as it is decoded: the next token picked from the logits (sampling, EOS, stop strings, time
    limit, cancellation), its text handed to `emit` as it becomes final (text that may begin a stop string is
    held back until it is known not to)."""

    def __init__(self, served: ServedModel, row: Row):
        import numpy as np

        self.served, self.row, self.sampling = served, row, row.sampling
        self.stops = [s for s in [*row.sampling.stop, row.stop_text] if s]
        self.rng = np.random.default_rng(row.sampling.seed)
        self.new: list[int] = []
        self.text, self.shown = "", 0  # the answer's text so far; how much of it went to `emit`
        # incremental decoding: new[prefix:read] gives context, new[read:] is not in `text` yet
        self.prefix, self.read = 0, 0
        self.reason = "length"

    def next(self, logits: Any) -> int | None:
        """The token to append after `logits`, or None once the answer has ended (`reason` says why)."""
        row, served = self.row, self.served
        if row.cancel is not None and row.cancel.is_set():
            self.reason = "cancelled"
            return None
        if time.monotonic() > row.deadline:
            self.reason = "timeout"
            return None
        token = pick(logits, self.sampling, self.rng)
        if token in served.eos_token_ids:
            self.reason = "stop"
            return None
        new = self.new
        new.append(token)
        # decoding a short window (as vLLM does), not the whole answer each step: a tokenizer may render a
        # token differently by what precedes it, and a character split over tokens waits for its other bytes
        known = served.decode(new[self.prefix : self.read])
        window = served.decode(new[self.prefix :])
        if len(window) > len(known) and not window.endswith("\ufffd"):
            self.text += window[len(known) :]
            self.prefix, self.read = self.read, len(new)
            cut = _first_stop(self.text, self.stops)
            if cut is not None:
                self.text, self.reason = self.text[:cut], "stop"
                return None
            safe = len(self.text) - _held_back(self.text, self.stops)
            if row.emit is not None and safe > self.shown:
                row.emit(self.text[self.shown : safe])
            self.shown = max(self.shown, safe)
        if len(new) >= self.sampling.max_tokens:
            return None
        return token

    def outcome(self) -> Outcome:
        served, new, ended = self.served, self.new, self.reason in ("cancelled", "timeout")
        if self.read < len(new) and not ended:  # a last character's bytes never came
            self.text += served.decode(new[self.prefix :])[len(served.decode(new[self.prefix : self.read])) :]
            cut = _first_stop(self.text, self.stops)
            if cut is not None:
                self.text, self.reason = self.text[:cut], "stop"
        if self.row.emit is not None and len(self.text) > self.shown and not ended:
            self.row.emit(self.text[self.shown :])
        return Outcome(self.reason, len(new), self.text)


def generate(
    served: ServedModel,
    prompt_ids: list[int],
    sampling: Sampling,
    *,
    adapter: str | None = None,
    emit: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    deadline: float = math.inf,
    stop_text: str | None = None,
) -> Outcome:
    """Sample up to `sampling.max_tokens` ids after `prompt_ids`, handing text to `emit` as it becomes final.
    Stops at EOS, a stop string (`stop_text`, a chat turn's end marker, counts as one), `cancel`, or
    `deadline` (time.monotonic)."""
    answer = _Answer(served, Row(prompt_ids, sampling, deadline, stop_text, emit, cancel))
    session = served.session(prompt_ids, len(prompt_ids) + sampling.max_tokens, adapter)
    while (token := answer.next(session.logits())) is not None:
        session.append([token])
    return answer.outcome()


def generate_batch(
    served: ServedModel,
    rows: Sequence[Row],
    finished: Callable[[int, Outcome], None],
    adapter: str | None = None,
) -> None:
    """Generate several answers as one batch of ONNX Runtime GenAI's generator (`batch_size` rows, the prompts
    padded on the right), each row sampled here with its own settings, as `generate` samples one: the
    generator is handed logits that allow only the token picked. `finished(i, outcome)` is called as soon as
    row i ends; its place in the batch is then stepped with EOS until every row has ended (the generator's
    batch cannot shrink)."""
    import numpy as np

    answers = [_Answer(served, row) for row in rows]
    generator = served.batch_generator(
        [row.prompt_ids for row in rows], max(r.sampling.max_tokens for r in rows), adapter
    )
    live = set(range(len(rows)))
    eos = min(served.eos_token_ids, default=served.pad_token_id)  # what an ended row is stepped with
    while live:
        logits = generator.get_logits()
        width = logits.shape[-1]
        logits = logits.reshape(len(rows), width)
        chosen = np.full((len(rows), width), -np.inf, dtype=np.float32)
        for i in range(len(rows)):
            token = answers[i].next(logits[i]) if i in live else None
            if token is None and i in live:
                live.discard(i)
                finished(i, answers[i].outcome())
            chosen[i, eos if token is None else token] = 0.0
        if not live:
            break
        generator.set_logits(chosen.reshape(len(rows), 1, width))
        generator.generate_next_token()


def label_scores(
    served: ServedModel, prompt_ids: list[int], labels: Sequence[str], adapter: str | None = None
) -> dict[str, float]:
    """Each label's summed log-probability after the prompt (its ids as the evaluator encodes them): the
    answer restricted to the label set, as `likelihood` evaluation scores it."""
    import numpy as np

    scores = {}
    for label in labels:
        ids = served.encode(label, add_special_tokens=False)
        session = served.session(prompt_ids, len(prompt_ids) + len(ids), adapter)
        total = 0.0
        for k, token in enumerate(ids):
            logits = np.asarray(session.logits(), dtype=np.float64)
            shifted = logits - logits.max()
            total += float(shifted[token] - np.log(np.exp(shifted).sum()))
            if k + 1 < len(ids):
                session.append([token])
        scores[label] = total
    return scores


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` may be the start of a stop string."""
    longest = 0
    for stop in stops:
        for keep in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-keep:]):
                longest = keep
                break
    return longest


def check_model_folder(folder: Path) -> None:
    """A clear error before anything loads: the folder exists and is a kind that can be served."""
    from slimtune.models.runtime import runnable_kind

    if not folder.is_dir():
        raise UserError(f"--model {folder}: no such folder")
    runnable_kind(folder, "serve the merged model, or an ONNX base with --adapter NAME=FILE.onnx_adapter")
