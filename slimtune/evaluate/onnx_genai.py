"""A small wrapper over onnxruntime_genai: load a model folder, greedy-generate with optional streaming."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from slimtune.errors import ModelError, UserError

GENAI_CONFIG = "genai_config.json"


def is_onnx_genai_folder(path: str | Path) -> bool:
    """True for a folder that onnxruntime_genai can load (it holds genai_config.json)."""
    return Path(path, GENAI_CONFIG).is_file()


def answer_end(text: str) -> int | None:
    """Where a one-line answer ends: the first newline after some non-blank text, or None if there is none yet.

    A model trained on a template whose answer is a single line (a label) may go on after it when it does not
    emit EOS; cutting here keeps the answer only. Leading newlines (the template's own) are not an end.
    """
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return None if end < 0 or start == len(text) else end


class StreamCutter:
    """Forwards streamed text pieces to `callback`, stopping after the first line when `one_line` is set."""

    def __init__(self, callback: Callable[[str], None] | None, one_line: bool):
        self.callback, self.one_line = callback, one_line
        self.text = ""
        self.done = False

    def feed(self, piece: str) -> bool:
        """Take one piece; returns True once the answer is complete (nothing more should be generated)."""
        if self.done or not piece:
            return self.done
        before = len(self.text)
        self.text += piece
        end = answer_end(self.text) if self.one_line else None
        if end is not None:
            self.text, self.done = self.text[:end], True
        if self.callback and len(self.text) > before:
            self.callback(self.text[before:])
        return self.done


class OnnxGenaiModel:
    """An ONNX Runtime GenAI model folder (what ModelBuilder writes)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not is_onnx_genai_folder(folder):
            raise ModelError(f"{folder} is not an ONNX Runtime GenAI model folder (no {GENAI_CONFIG})")
        import onnxruntime_genai as og

        self.folder = folder
        self._og = og
        try:
            self.model = og.Model(str(folder))
        except Exception as err:  # onnxruntime_genai raises plain RuntimeError for every load problem
            raise ModelError(f"onnxruntime_genai could not load {folder}: {err}") from err
        self.tokenizer = og.Tokenizer(self.model)
        self.eos_token_ids = {int(t) for t in self.tokenizer.eos_token_ids}
        config = json.loads((folder / GENAI_CONFIG).read_text())
        self.context_length = int(config["model"].get("context_length") or config["search"]["max_length"])

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def generate(
        self,
        prompt: str,
        max_new_tokens: int,
        stream_callback: Callable[[str], None] | None = None,
        stop_at_newline: bool = False,
    ) -> str:
        """Greedy completion of `prompt` (the prompt itself is not returned). Stops at EOS, after
        `max_new_tokens`, or with `stop_at_newline` at the end of the first non-blank line."""
        og = self._og
        input_ids = self.encode(prompt)
        room = self.context_length - len(input_ids)
        if room <= 0:
            raise UserError(
                f"the prompt has {len(input_ids)} tokens; {self.folder} takes at most {self.context_length}"
            )
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(input_ids) + min(max_new_tokens, room), do_sample=False)
        generator = og.Generator(self.model, params)
        generator.append_tokens(input_ids)
        stream = self.tokenizer.create_stream()
        cutter = StreamCutter(stream_callback, stop_at_newline)
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self.eos_token_ids:
                break
            if cutter.feed(stream.decode(token)):
                break
        return cutter.text
