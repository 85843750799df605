"""A data config's own pre- and post-processing functions, from its `user_script` (as Olive's data configs
name them: `pre_process_data_config.type` / `post_process_data_config.type`).

    pre_process(rows: datasets.Dataset, **params) -> datasets.Dataset (or a list of row dicts)
        runs on the loaded rows (after load_dataset_config's filters and max_samples), before the template
    post_process(outputs: list[str], **params) -> list[str]
        runs on the model's answers before they are compared with the labels (accuracy, metric_func)

`params` are the section's other keys (or its `params` mapping). See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slimtune.config.schema import BUILTIN_PRE_PROCESS, DataConfig
from slimtune.errors import DataError, UserError
from slimtune.user_code import call, load_function

if TYPE_CHECKING:
    import datasets


def load_data(data: DataConfig) -> datasets.Dataset:
    """The rows of a data config: loaded (`load_rows`), then through its pre_process function if it names one."""
    from slimtune.data.load import load_rows

    rows = load_rows(data.load_dataset_config)
    pre = data.pre_process_data_config
    if pre.type is None or pre.type in BUILTIN_PRE_PROCESS:
        return rows
    where = f"data config `{data.name}`: pre_process_data_config.type = {pre.type}"
    function = load_function(_script(data, where), pre.type, where, data.script_dir)
    out = call(function, where, rows, **pre.params)
    return _as_rows(out, where)


def post_processor(data: DataConfig | None) -> Callable[[list[str]], list[str]] | None:
    """The data config's post-processing of model answers, or None when it has none."""
    if data is None or data.post_process_data_config is None:
        return None
    post = data.post_process_data_config
    where = f"data config `{data.name}`: post_process_data_config.type = {post.type}"
    function = load_function(_script(data, where), post.type, where, data.script_dir)

    def post_process(outputs: list[str]) -> list[str]:
        out = call(function, where, list(outputs), **post.params)
        if not isinstance(out, (list, tuple)) or len(out) != len(outputs):
            raise UserError(
                f"{where}: must return a list of {len(outputs)} answers (one per output), got "
                f"{type(out).__name__}{f' of {len(out)}' if isinstance(out, (list, tuple)) else ''}"
            )
        return [str(o) for o in out]

    return post_process


def _script(data: DataConfig, where: str) -> str:
    if not data.user_script:
        raise UserError(f"{where}: names a function, but the data config has no user_script")
    return data.user_script


def _as_rows(out: Any, where: str) -> datasets.Dataset:
    import datasets

    if isinstance(out, list) and all(isinstance(r, dict) for r in out):
        out = datasets.Dataset.from_list(out)
    if not isinstance(out, datasets.Dataset):
        raise UserError(
            f"{where}: must return a datasets.Dataset or a list of row dicts, got {type(out).__name__}"
        )
    if len(out) == 0:
        raise DataError(f"{where}: returned no rows")
    return out
