"""`slimtune generate`: stream a greedy completion from an ONNX GenAI folder or a Hugging Face folder.

`--input '{"phrase": "..."}'` formats the row with the template recorded in the folder's slimtune.json, up to
the answer column (rendered as the user turn of the tokenizer's chat template when slimtune.json says the model
was trained that way). When the model was trained as a classifier (slimtune.json has a label set), generation
also stops at the end of the first non-blank line: the answer is one line, and a small model that has not
learnt to emit EOS would otherwise ramble on until --max-new-tokens.
"""

from __future__ import annotations

import json
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError, UserError
from slimtune.evaluate.onnx_genai import OnnxGenaiModel, StreamCutter, is_onnx_genai_folder
from slimtune.models.ref import MODEL_META, ModelMeta


def generate_command(args) -> int:
    folder = Path(args.model)
    if not folder.is_dir():
        raise UserError(f"--model {folder}: no such folder")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.input is not None:
        prompt, one_line = prompt_from_row(folder, args.input)
    else:
        prompt, one_line = args.prompt, False

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if is_onnx_genai_folder(folder):
        OnnxGenaiModel(folder).generate(
            prompt, args.max_new_tokens, stream_callback=write, stop_at_newline=one_line
        )
    elif Path(folder, "config.json").is_file():
        generate_hf(folder, prompt, args.max_new_tokens, stream_callback=write, stop_at_newline=one_line)
    elif Path(folder, "adapter_config.json").is_file():
        raise UserError(
            f"{folder} is a PEFT adapter; generate from the merged model (MergeAdapterWeights output)"
        )
    else:
        raise ModelError(
            f"{folder} is neither an ONNX GenAI folder (genai_config.json) nor a Hugging Face folder "
            "(config.json)"
        )
    write("\n")
    return 0


def prompt_from_row(folder: Path, row_text: str) -> tuple[str, bool]:
    """(prompt, one_line): the row formatted with the recorded template up to its answer column."""
    try:
        row = json.loads(row_text)
    except json.JSONDecodeError as err:
        raise UserError(f"--input is not valid JSON ({err.msg} at char {err.pos}): {row_text!r}") from err
    if not isinstance(row, dict):
        raise UserError(f'--input must be a JSON object such as \'{{"phrase": "..."}}\', got {row_text!r}')
    meta = ModelMeta.load(folder)
    if meta is None:
        raise UserError(
            f"--input needs the template the model was trained with, but {folder} has no {MODEL_META} "
            "(it is written by `slimtune run`); use --prompt with the full prompt text instead"
        )
    if not meta.template or not meta.answer_column:
        raise UserError(
            f"{folder / MODEL_META} records no text template with an answer column; --input cannot "
            "format a row for this model, use --prompt"
        )
    marker = "{" + meta.answer_column + "}"
    if marker not in meta.template:
        raise ModelError(f"{folder / MODEL_META}: template {meta.template!r} does not contain {marker}")
    head = meta.template.split(marker)[0]
    # `{a.b}` / `{a[0]}` read column `a`
    fields = list(
        dict.fromkeys(
            name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(head) if name
        )
    )
    missing = [name for name in fields if name not in row]
    if missing:
        raise UserError(
            f"--input lacks column(s) {', '.join(missing)}; the template {head!r} needs "
            f"{', '.join(fields)} (got {', '.join(row) or 'none'})"
        )
    try:
        prompt = head.format(**row)
    except (KeyError, IndexError, AttributeError, ValueError) as err:
        raise UserError(f"--input: cannot format the template {head!r} with {row}: {err}") from err
    if meta.chat_template:  # trained with the template's prompt as the user turn of the chat template
        prompt = _chat_prompt(folder, prompt.rstrip())
    elif meta.add_special_tokens:  # training samples started with BOS: so must the prompt
        prompt = _bos_text(folder) + prompt
    return prompt, bool(meta.labels)


def _bos_text(folder: Path) -> str:
    """The BOS token as text (both tokenizers read special tokens written in the text)."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return ""
    bos = config.get("bos_token")
    if isinstance(bos, dict):
        bos = bos.get("content")
    return bos if isinstance(bos, str) else ""


def _chat_prompt(folder: Path, user: str) -> str:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise ModelError(
            f"{folder / MODEL_META} says the model was trained with a chat template, but the "
            f"tokenizer in {folder} has none"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
    )


def generate_hf(
    folder: str | Path,
    prompt: str,
    max_new_tokens: int,
    stream_callback: Callable[[str], None] | None = None,
    stop_at_newline: bool = False,
) -> str:
    """Greedy completion with transformers, streamed through a TextStreamer."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    except (OSError, ValueError) as err:
        raise ModelError(f"transformers could not load {folder}: {err}") from err
    cutter = StreamCutter(stream_callback, stop_at_newline)

    class _Streamer(transformers.TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            cutter.feed(text)

    class _StopAfterAnswer(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> Any:
            return torch.full((input_ids.shape[0],), cutter.done, dtype=torch.bool, device=input_ids.device)

    inputs = tokenizer(prompt, return_tensors="pt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            streamer=_Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
            stopping_criteria=transformers.StoppingCriteriaList([_StopAfterAnswer()]),
        )
    return cutter.text
