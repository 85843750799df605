"""The LoRA pass's data: load, split (or a separate eval data config), template, tokenize."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimtune.engine.context import PassContext
from slimtune.passes.lora import LoRAParams


@dataclass
class TaskInfo:
    """What the model folder remembers about the task (slimtune.json)."""

    template: str | None
    answer_column: str | None
    labels: list[str] | None
    chat_template: bool
    add_special_tokens: bool


def prepare_datasets(ctx: PassContext, params: LoRAParams, tokenizer: Any):
    """(train samples, eval samples or None, TaskInfo)."""
    from slimtune.data.load import load_rows
    from slimtune.data.split import label_column_for, split_rows
    from slimtune.data.template import Template
    from slimtune.data.tokenize import tokenize_rows

    train_config = ctx.data_config(params.train_data_config)
    pre = train_config.pre_process_data_config
    rows = load_rows(train_config.load_dataset_config)
    template = Template(pre, tokenizer, columns=rows.column_names)
    label_column = label_column_for(rows, template.answer_column)
    labels = sorted(set(map(str, rows[label_column]))) if label_column else None

    eval_samples = None
    if params.eval_data_config:
        eval_config = ctx.data_config(params.eval_data_config)
        eval_rows = load_rows(eval_config.load_dataset_config)
        eval_pre = eval_config.pre_process_data_config
        eval_template = Template(eval_pre, tokenizer, columns=eval_rows.column_names)
        eval_samples = _located(tokenize_rows, eval_config)(eval_rows, eval_pre, tokenizer, eval_template)
    elif params.eval_dataset_size:
        rows, eval_rows = split_rows(rows, params.eval_dataset_size, label_column, seed=pre.random_seed)
        eval_samples = tokenize_rows(eval_rows, pre, tokenizer, template)
        ctx.metrics["eval_split"] = {"train_rows": len(rows), "eval_rows": len(eval_rows)}
    train_samples = _located(tokenize_rows, train_config)(rows, pre, tokenizer, template)
    info = TaskInfo(pre.text_template, template.answer_column, labels, template.chat, pre.add_special_tokens)
    return train_samples, eval_samples, info


def _located(tokenize, data_config):
    """`tokenize` whose data errors name the data config and its file when they do not name a place."""
    from slimtune.errors import DataError

    def call(*args):
        try:
            return tokenize(*args)
        except DataError as err:
            if err.file is not None:
                raise
            files = data_config.load_dataset_config.data_files
            raise DataError(
                f"data config `{data_config.name}`: {err}",
                file=files if isinstance(files, str) else str(files),
            ) from None

    return call
