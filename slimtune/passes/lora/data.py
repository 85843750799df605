"""The LoRA pass's data: load, split (or a separate eval data config), template, tokenize."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimtune.passes.context import PassContext
from slimtune.passes.lora.params import LoRAParams


@dataclass
class TaskInfo:
    """What the model folder remembers about the task (slimtune.json)."""

    template: str | None
    answer_column: str | None
    labels: list[str] | None
    chat_template: bool
    add_special_tokens: bool
    longest: int | None = None  # tokens of the longest row (line-by-line), before truncation
    messages_col: str | None = None
    loss_on_answer_only: bool = False


def prepare_datasets(ctx: PassContext, params: LoRAParams, tokenizer: Any):
    """(train samples, eval samples or None, TaskInfo)."""
    from slimtune.data.split import label_column_for, split_indices, write_heldout
    from slimtune.data.template import Template
    from slimtune.data.tokenize import answer_only, row_token_lengths, tokenize_rows
    from slimtune.data.user_script import load_data

    train_config = ctx.data_config(params.train_data_config)
    pre = train_config.pre_process_data_config
    rows = load_data(train_config)
    template = Template(pre, tokenizer, columns=rows.column_names)
    label_column = label_column_for(rows, template.answer_column)
    labels = sorted(set(map(str, rows[label_column]))) if label_column else None
    if template.messages_col:  # conversations whose last assistant turns are labels (few distinct values)
        from slimtune.evaluate.text_metrics import answers_are_labels

        answers = [a for a in (template.answer(row) for row in rows) if a]
        labels = sorted(set(answers)) if answers_are_labels(answers) else None
    context = model_context(ctx.input.path)
    lengths = None
    if pre.strategy == "line-by-line" and len(rows):
        lengths = _located(row_token_lengths, train_config)(rows, pre, tokenizer, template)
    check_answers_fit(
        rows,
        pre,
        tokenizer,
        template,
        train_config,
        context,
        log=ctx.log,
        metrics=ctx.metrics,
        lengths=lengths,
    )

    eval_samples = None
    if params.eval_data_config:
        eval_config = ctx.data_config(params.eval_data_config)
        eval_rows = load_data(eval_config)
        eval_pre = eval_config.pre_process_data_config
        eval_template = Template(eval_pre, tokenizer, columns=eval_rows.column_names)
        eval_samples = _located(tokenize_rows, eval_config)(eval_rows, eval_pre, tokenizer, eval_template)
    elif params.eval_dataset_size:
        train_idx, eval_idx = split_indices(
            rows, params.eval_dataset_size, label_column, seed=pre.random_seed
        )
        rows, eval_rows = rows.select(train_idx), rows.select(eval_idx)
        eval_samples = tokenize_rows(eval_rows, pre, tokenizer, template)
        # evaluation of every stage reads these rows from the output (never computes the split again)
        recorded = write_heldout(ctx.output_dir, params.train_data_config, train_idx, eval_idx)
        ctx.metrics["eval_split"] = {**recorded, "eval_rows": len(eval_idx)}
    train_samples = _located(tokenize_rows, train_config)(rows, pre, tokenizer, template)
    info = TaskInfo(
        pre.text_template,
        template.answer_column,
        labels,
        template.chat,
        pre.add_special_tokens,
        longest=max(lengths) if lengths else None,
        messages_col=template.messages_col,
        loss_on_answer_only=answer_only(pre, template),
    )
    return train_samples, eval_samples, info


TOO_MANY_CUT = 0.5  # share of rows losing their answer above which max_seq_len plainly does not fit the data


def check_answers_fit(
    rows: Any,
    pre: Any,
    tokenizer: Any,
    template: Any,
    data_config: Any,
    context: int | None = None,
    log=print,
    metrics: dict | None = None,
    lengths: list[int] | None = None,
) -> None:
    """With one row per sample and a template that ends with the answer, a row longer than max_seq_len loses
    its answer to truncation: the model learns the row without it (or, with the loss on the answer only,
    nothing). Refused when a row is longer than the model's whole context (`context` tokens: no max_seq_len
    could keep it) or when more than half of the rows would lose their answer; a few are named in a warning
    (and counted in `metrics["answers_cut"]`, which a failed run's diagnosis reads)."""
    from slimtune.data.load import line_of_row
    from slimtune.data.tokenize import row_token_lengths
    from slimtune.errors import DataError

    if pre.strategy != "line-by-line" or not template.answer_column or not len(rows):
        return
    if lengths is None:
        lengths = _located(row_token_lengths, data_config)(rows, pre, tokenizer, template)
    files = data_config.load_dataset_config.data_files
    file = files if isinstance(files, str) else str(files)
    beyond = [i for i, n in enumerate(lengths) if context and n > context]
    if beyond:
        first = beyond[0]
        raise DataError(
            f"row {first + 1} has {lengths[first]} tokens, more than the model's whole context "
            f"({context} tokens, max_position_embeddings){f' ({len(beyond)} rows like it)' if len(beyond) > 1 else ''}"
            f": no max_seq_len keeps it whole, and its answer {{{template.answer_column}}} would be cut off. "
            "Shorten or remove it",
            file=file,
            line=line_of_row(file, first + 1),
        )
    too_long = [i for i, n in enumerate(lengths) if n > pre.max_seq_len]
    if not too_long:
        return
    first, longest = too_long[0], max(lengths[i] for i in too_long)
    line = line_of_row(file, first + 1)
    what = (
        f"{len(too_long)} of {len(rows)} rows are longer than max_seq_len {pre.max_seq_len} (the first: row "
        f"{first + 1}, {lengths[first]} tokens; the longest {longest}), so their answer {{{template.answer_column}}} "
        "would be cut off"
    )
    fix = f"raise max_seq_len (data config `{data_config.name}`), or shorten or remove the long rows"
    if len(too_long) > TOO_MANY_CUT * len(rows):
        raise DataError(f"{what}. Refused: {fix}", file=file, line=line)
    log(f"      warning: {f'{file}:{line}' if line else file}: {what}; {fix}")
    if metrics is not None:
        metrics["answers_cut"] = {
            "rows": len(too_long),
            "of": len(rows),
            "max_seq_len": pre.max_seq_len,
            "longest": longest,
        }


def model_context(folder: str) -> int | None:
    """max_position_embeddings from a model folder's config.json (None when it does not say)."""
    import json
    from pathlib import Path

    try:
        value = json.loads(Path(folder, "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


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
