"""`slimtune generate`: stream a greedy completion from an ONNX GenAI folder, a Hugging Face folder or a GGUF
model (llama.cpp; its task metadata read from the file when no slimtune.json is beside it).

`--input '{"phrase": "..."}'` formats the row with the template recorded in the folder's slimtune.json, up to
the answer column (rendered as the user turn of the tokenizer's chat template when slimtune.json says the model
was trained that way), and encodes it as the evaluator does (`encode_prompt`): the model gets the very ids
evaluation gives it. When the model was trained as a classifier (slimtune.json has a label set), generation
also stops at the end of the first non-blank line: the answer is one line, and a small model that has not
learnt to emit EOS would otherwise ramble on until --max-new-tokens. `--prompt` text (a literal backslash-n is a
newline, as in --template) is wrapped as a user turn (after `--system` when given) of the chat template for a
model whose slimtune.json says it was trained on chat, and generation stops at the end of the assistant's
turn; otherwise, or with `--raw`, it is encoded as given with the tokenizer's own special tokens. For a chat
model, `--input '{"messages": [...]}'` is the conversation up to its last assistant turn.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError, UserError
from slimtune.models.kind import model_kind
from slimtune.models.loading import command_model, local_model_folder
from slimtune.models.ref import MODEL_META, ModelMeta, ModelRef


def generate_command(args) -> int:
    folder = command_model(args.model)  # a storage URL or hub id: downloaded
    if not folder.is_dir() and model_kind(folder) != "gguf":
        raise UserError(f"--model {folder}: no such folder (or .gguf file)")
    if folder.is_dir():
        folder = local_model_folder(folder)  # an MLflow model: the Hugging Face folder inside it
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.input is not None:
        row, meta = read_row(folder, args.input)  # a bad row is reported before the model loads
    else:
        meta = load_meta(folder)
        chat = meta is not None and (meta.chat_template or bool(meta.messages_col))
        if getattr(args, "system", None) and (getattr(args, "raw", False) or not chat):
            raise UserError(
                "--system adds a system turn through the chat template: "
                + (
                    "not with --raw"
                    if chat
                    else f"{folder} was not trained on chat (its {MODEL_META} says so)"
                )
            )
    from slimtune.models.runtime import open_model, runnable_kind

    kind = runnable_kind(folder, "generate from the merged model (MergeAdapterWeights output)")

    model = open_model(
        ModelRef(str(folder), kind), adapter=_adapter_file(folder, getattr(args, "adapter", None))
    )
    stop_text = None
    if args.input is not None:
        prompt, one_line = encode_row(row, meta, model.tokenizer), bool(meta.labels)
        chat = meta.chat_template or bool(meta.messages_col)
    else:
        prompt, one_line = prompt_ids(model.tokenizer, meta, args), False
        chat = prompt_is_chat(meta, args)
    if chat:
        from slimtune.data.chat import turn_end

        stop_text = turn_end(model.tokenizer)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    model.generate(
        prompt, args.max_new_tokens, stream_callback=write, stop_at_newline=one_line, stop_text=stop_text
    )
    write("\n")
    return 0


def _adapter_file(folder: Path, adapter: str | None) -> Path | None:
    """--adapter: a file, or the name of one the ExtractAdapters pass wrote beside the base."""
    if adapter is None:
        return None
    from slimtune.models.onnx_adapters import ADAPTERS_DIR

    named = folder / ADAPTERS_DIR / f"{adapter}.onnx_adapter"
    return named if not Path(adapter).is_file() and named.is_file() else Path(adapter)


def load_meta(path: Path) -> ModelMeta | None:
    """The folder's slimtune.json; for a GGUF model, else the metadata GGUFExport carried in the file."""
    if model_kind(path) == "gguf":
        from slimtune.models.gguf import model_meta

        return model_meta(path)
    return ModelMeta.load(path)


def prompt_is_chat(meta: ModelMeta | None, args: Any) -> bool:
    """--prompt goes through the chat template when the model was trained on chat and --raw is not given."""
    trained_on_chat = meta is not None and (meta.chat_template or bool(meta.messages_col))
    return trained_on_chat and not getattr(args, "raw", False)


def prompt_ids(tokenizer: Any, meta: ModelMeta | None, args: Any) -> str | list[int]:
    """The --prompt text (\\n read as a newline) wrapped as a user turn for a chat model (the chat template
    carries its own special tokens, so none are added), or as given (encoded with the tokenizer's own)."""
    from slimtune.data.template import unescape_cli

    text = unescape_cli(args.prompt)
    if not prompt_is_chat(meta, args):
        return text
    from slimtune.data.chat import wrap_prompt

    wrapped = wrap_prompt(tokenizer, text, system=unescape_cli(args.system) if args.system else None)
    return tokenizer(wrapped, add_special_tokens=False)["input_ids"]


def prompt_ids_from_row(folder: str | Path, row_text: str, tokenizer: Any) -> tuple[list[int], bool]:
    """(prompt ids, one_line): the row encoded with the recorded template up to its answer column."""
    row, meta = read_row(Path(folder), row_text)
    return encode_row(row, meta, tokenizer), bool(meta.labels)


def encode_row(row: dict[str, Any], meta: ModelMeta, tokenizer: Any) -> list[int]:
    """The ids the evaluator gives the model for `row`: the template's own prompt, laid out as in training."""
    from slimtune.data.template import Template
    from slimtune.data.tokenize import encode_prompt

    pre = meta.pre_process()
    return encode_prompt(tokenizer, Template(pre, tokenizer), row, pre.add_special_tokens)


def read_row(folder: Path, row_text: str) -> tuple[dict[str, Any], ModelMeta]:
    """The --input row and the folder's slimtune.json, checked: the row has every column the prompt needs."""
    try:
        row = json.loads(row_text)
    except json.JSONDecodeError as err:
        raise UserError(f"--input is not valid JSON ({err.msg} at char {err.pos}): {row_text!r}") from err
    if not isinstance(row, dict):
        raise UserError(f'--input must be a JSON object such as \'{{"phrase": "..."}}\', got {row_text!r}')
    meta = load_meta(folder)
    if meta is None:
        raise UserError(
            f"--input needs the template the model was trained with, but {folder} has no {MODEL_META} "
            "(it is written by `slimtune run`); use --prompt with the full prompt text instead"
        )
    check_row(folder, row, meta)
    return row, meta


def check_row(folder: Path, row: dict[str, Any], meta: ModelMeta) -> None:
    """The row has every column the recorded prompt needs (the server's predict route checks rows so too)."""
    row_text = json.dumps(row, ensure_ascii=False)
    if meta.messages_col:
        messages = row.get(meta.messages_col)
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
        ):
            raise UserError(
                f'--input for this chat model is {{"{meta.messages_col}": [{{"role": "user", "content": '
                f'"..."}}, ...]}}; got {row_text!r}'
            )
        return
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
