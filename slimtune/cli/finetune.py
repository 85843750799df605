"""`slimtune finetune --model M --data FILE`: the one-line start.

Writes a config with the settings that learn a task on the default model (SPEC.md: answer-only loss, LoRA
r 16 / alpha 32 on every linear layer, lr 3e-4, one epoch, a 20% held-out split; here also quantization-aware
LoRA sent straight to the int4 ModelBuilder), saves it as OUTPUT_DIR/config.yaml and runs it as `slimtune run`
would: same checks, cache, evaluation of every stage and exit codes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from slimtune.config.resolve import resolve_folder
from slimtune.errors import UserError

EPILOG = """\
examples:
  # a JSONL/CSV/Parquet file with a text column and a label column (phrase/tone, text/label, review/sentiment):
  # the template is inferred, the label is the column with few distinct values
  slimtune finetune --model smollm2-135m-instruct --data emotions.jsonl

  # say how a row becomes text; the last field is the answer the model learns
  slimtune finetune --model smollm2-135m-instruct --data reviews.csv \\
      --template '### Review: {review}\\n### Sentiment:\\n{sentiment}'

  # chat data: a `messages` column of {role, content} lists, rendered with the model's chat template
  slimtune finetune --model ./my-model --data chats.jsonl --chat

  # a quick try on a GPU: 20 optimiser steps
  slimtune finetune --model smollm2-135m-instruct --data emotions.jsonl --device cuda --max-steps 20

OUTPUT_DIR/config.yaml is the config that ran: edit it and re-run with `slimtune run --config`.
"""

DATA_NAME = "train"
MAX_LABELS = 50  # a column with more distinct values than this is text, not a label
# (prompt column, answer column) pairs whose names say which is which
KNOWN_PAIRS = [
    ("prompt", "completion"),
    ("prompt", "response"),
    ("instruction", "output"),
    ("instruction", "response"),
    ("question", "answer"),
    ("input", "output"),
]
TRAINING_ARGS = {"learning_rate": 3e-4, "num_train_epochs": 1, "logging_steps": 10, "seed": 0}


def register(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on one data file with defaults that learn a task, export int4 ONNX, evaluate",
        description="Fine-tune MODEL on FILE (LoRA: answer-only loss, r 16 / alpha 32 on every linear layer,\n"
        "lr 3e-4, one epoch, trained on the int4 grid), export an int4 ONNX model for ONNX Runtime GenAI and\n"
        "evaluate every stage on a 20% held-out split. The config that ran is written to OUTPUT_DIR/config.yaml.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a known model name, a Hugging Face folder or a GGUF file")
    p.add_argument("--data", required=True, help="training rows: .jsonl, .json, .csv or .parquet")
    p.add_argument("--template", help="text template over the columns; its last field is the answer")
    p.add_argument("--chat", action="store_true", help="render rows with the model's chat template")
    p.add_argument("--output-dir", default="slimtune-output", help="where model/, run.json, config.yaml go")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where training runs")
    p.add_argument(
        "--max-steps", type=int, help="stop training after this many optimiser steps (a quick try)"
    )
    p.add_argument("--cache-dir", default=".slimtune-cache", help="pass outputs, reused by later runs")
    p.add_argument(
        "--no-memory-check",
        action="store_true",
        help="run even when a pass's memory estimate exceeds the memory available",
    )
    p.set_defaults(func=_finetune)


def _finetune(args) -> int:
    from slimtune.config.load import load_config
    from slimtune.engine.runner import run_workflow

    data = Path(args.data).expanduser()
    if not data.is_file():
        raise UserError(f"--data {args.data}: file not found")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {args.max_steps}")
    rows, columns = _peek(data)
    pre, note = infer_pre_process(rows, columns, args.template, args.chat, data)
    print(f"template: {note}")
    out = Path(args.output_dir).expanduser().resolve()
    config = build_config(args, data.resolve(), pre, out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    command = "slimtune " + " ".join(shlex.quote(a) for a in _argv())
    write_config(path, config, command)
    print(f"config: {path}")
    loaded = load_config(path)
    return run_workflow(loaded, verbose=args.verbose)


def _argv() -> list[str]:
    argv = sys.argv[1:]
    return argv[argv.index("finetune") :] if "finetune" in argv else ["finetune", *argv]


def _peek(data: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every row (to count distinct values) and the column names."""
    from slimtune.config.schema import DataConfig, LoadDatasetConfig
    from slimtune.data.load import builder_for
    from slimtune.data.user_script import load_data

    load = LoadDatasetConfig(data_name=builder_for(data), data_files=str(data.resolve()))
    rows = load_data(DataConfig(name=DATA_NAME, load_dataset_config=load))
    return rows.to_list(), list(rows.column_names)


def infer_pre_process(
    rows: list[dict[str, Any]], columns: list[str], template: str | None, chat: bool, file: Path | str
) -> tuple[dict[str, Any], str]:
    """(pre_process_data_config, what was chosen, in words). With --template that; a `messages` column is
    chat; otherwise a known (prompt, answer) column pair, or a text column and a label column: the label is
    the column with the fewest distinct values (at most MAX_LABELS, and at most half the rows), the text
    the column with the longest values among the others."""
    pre: dict[str, Any] = {
        "strategy": "line-by-line",
        "pad_to_max_len": False,
        "loss_on_answer_only": True,
    }
    if template:
        from slimtune.data.template import unescape_cli

        return {
            **pre,
            "text_template": unescape_cli(template),
            "chat_template": chat,
        }, "as given (--template)"
    if "messages" in columns:
        return {**pre, "messages_col": "messages"}, "the model's chat template over column `messages`"
    prompt, answer, why = _pair(rows, columns)
    if prompt is None:
        raise UserError(
            f"{file}: cannot tell which column is the text and which the answer from the columns "
            f"{', '.join(columns) or '(none)'}; give --template, e.g. --template "
            f"'### Text: {{{columns[0] if columns else 'text'}}}\\n### Answer:\\n{{ANSWER_COLUMN}}', or a "
            "`messages` column for chat data"
        )
    text = f"### {_title(prompt)}: {{{prompt}}}\n### {_title(answer)}:\n{{{answer}}}"
    ignored = [c for c in columns if c not in (prompt, answer)]
    note = f"{text!r} ({why}{'; ignored: ' + ', '.join(ignored) if ignored else ''})"
    if chat:
        note += ", rendered with the model's chat template"
    return {**pre, "text_template": text, "chat_template": chat}, note


def _pair(rows: list[dict[str, Any]], columns: list[str]) -> tuple[str | None, str | None, str]:
    names = {c.lower(): c for c in columns}
    for prompt, answer in KNOWN_PAIRS:
        if prompt in names and answer in names:
            return names[prompt], names[answer], f"columns {prompt} -> {answer}"
    scalar = [c for c in columns if all(isinstance(r.get(c), (str, int, bool)) for r in rows)]
    distinct = {c: len({str(r[c]) for r in rows}) for c in scalar}
    labels = [c for c in scalar if distinct[c] <= MAX_LABELS and distinct[c] * 2 <= len(rows)]
    if not labels:
        return None, None, ""
    label = min(labels, key=lambda c: (distinct[c], columns.index(c)))
    texts = [c for c in scalar if c != label and all(isinstance(r[c], str) for r in rows)]
    if not texts:
        return None, None, ""
    text = max(texts, key=lambda c: (sum(len(r[c]) for r in rows), -columns.index(c)))
    return text, label, f"text column {text}, label column {label} with {distinct[label]} distinct values"


def _title(column: str) -> str:
    return column.replace("_", " ").strip().capitalize() or column


def build_config(args: Any, data: Path, pre: dict[str, Any], out: Path) -> dict[str, Any]:
    model = Path(args.model).expanduser()
    training_args = dict(TRAINING_ARGS)
    if args.max_steps:
        training_args["max_steps"] = args.max_steps
    accelerator = {"device": "gpu" if args.device == "cuda" else "cpu"}
    config: dict[str, Any] = {
        "input_model": {
            "type": "HfModel",
            "model_path": str(model.resolve()) if model.exists() else args.model,
        },
        "data_configs": [
            {
                "name": DATA_NAME,
                "load_dataset_config": {"data_files": str(data)},
                "pre_process_data_config": pre,
            }
        ],
        "systems": {
            "trainer": {"type": "LocalSystem", "accelerators": [accelerator]},
            # the int4 model is built for, and evaluated on, the CPU: what a laptop runs
            "runtime": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            },
        },
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 16,
                "alpha": 32,
                "quantization_aware": "int4",  # trained on the int4 grid the builder uses: no merge
                "quantization_block_size": 32,
                "train_data_config": DATA_NAME,
                "eval_dataset_size": 0.2,
                "training_args": training_args,
            },
            "builder": {"type": "ModelBuilder", "precision": "int4", "int4_block_size": 32},
        },
        "host": "trainer",
        "target": "runtime",
        "cache_dir": resolve_folder(args.cache_dir),  # a folder, or a shared cache's URL
        "output_dir": str(out),
    }
    if getattr(args, "no_memory_check", False):
        config["skip_memory_check"] = True
    return config


def write_config(path: Path, config: dict[str, Any], command: str) -> None:
    import yaml

    from slimtune.files import write_text_atomic

    header = (
        f"# {command}\n"
        "# Written by slimtune finetune: the config that ran. Re-run it (the cache reuses what is unchanged):\n"
        f"#   slimtune run --config {shlex.quote(str(path))}\n"
    )
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)
    write_text_atomic(path, header + body)
