"""Rows of a local JSON, JSON lines or CSV data config read without `datasets`, for what must stay light
(`slimtune validate` shows the evaluation a run will do). Anything else (other formats, a pre-processing
function, column filters) gives None: the caller says the choice is made when the run reads the data."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from slimtune.errors import SlimtuneError


class Rows(list):
    """A list of row dicts with the parts of a datasets.Dataset that the split and the templates use."""

    @property
    def column_names(self) -> list[str]:
        return list(dict.fromkeys(key for row in self for key in row))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return [row.get(key) for row in self]
        return super().__getitem__(key)

    def select(self, indices: Any) -> Rows:
        return Rows(list.__getitem__(self, i) for i in indices)


def read_rows(data: Any) -> Rows | None:
    from slimtune.config.schema import BUILTIN_PRE_PROCESS
    from slimtune.data.load import _expand

    load, pre = data.load_dataset_config, data.pre_process_data_config
    if load.data_name not in ("json", "csv") or load.col_filters or load.data_files is None:
        return None
    if pre.type is not None and pre.type not in BUILTIN_PRE_PROCESS:
        return None
    from slimtune.data.fingerprint import names_remote

    if names_remote(data):
        return None  # remote files are fetched by the run, not by what must stay light
    try:
        paths = _expand(load.data_files).get(load.split.split("[")[0]) or []
        rows = Rows(row for path in paths for row in _read(Path(path), load.data_name))
    except (OSError, ValueError, SlimtuneError):
        return None  # the run's own loading reports what is wrong with the file
    if load.max_samples:
        rows = Rows(rows[: load.max_samples])
    return rows if rows and all(isinstance(r, dict) for r in rows) else None


def _read(path: Path, kind: str) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if kind == "csv":
        return list(csv.DictReader(text.splitlines()))
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]
