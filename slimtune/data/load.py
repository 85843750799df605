"""Load rows the way Olive's HuggingfaceContainer does (`datasets.load_dataset`), with readable errors.

datasets' own errors on bad files are hard to act on ("An error occurred while generating the dataset"), so
local text files are checked first: UTF-8, and for JSON each line (JSON lines) or the whole array. The check
names the file, the line and the column. Loading is quiet and writes nothing next to the user's data: the
datasets cache goes to a temporary folder that is removed once the rows are in memory.
"""

from __future__ import annotations

import glob
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from slimtune.config.resolve import is_remote
from slimtune.config.schema import LoadDatasetConfig
from slimtune.errors import DataError, UserError

if TYPE_CHECKING:
    import datasets

LOCAL_BUILDERS = ("json", "csv", "parquet", "text")
SUFFIX_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
}
VALIDATE_MAX_BYTES = 256 << 20  # larger files are checked only when datasets fails on them


def builder_for(path: str | Path) -> str:
    """The datasets builder for a data file or URL, from its suffix (json when unknown)."""
    if isinstance(path, str) and "://" in path:
        path = urlsplit(path).path
    return SUFFIX_BUILDERS.get(Path(path).suffix.lower(), "json")


def load_rows(load: LoadDatasetConfig) -> datasets.Dataset:
    """The rows of one data config's `load_dataset_config`: loaded, filtered by `col_filters`, cut to
    `max_samples`. Raises DataError (bad file) or UserError (unsupported source)."""
    if load.data_name not in LOCAL_BUILDERS:
        _reject_remote(
            load.data_name,
            "load_dataset_config.data_name",
            "a hub data set needs the network; download it and give its files in data_files",
        )
    if load.data_files is None:
        raise UserError(
            f"load_dataset_config.data_files is missing: data_name {load.data_name!r} reads local "
            "files; give a path, a list of paths or a mapping {'train': ..., 'test': ...}"
        )
    files = _expand(load.data_files, load.storage_options)
    if load.split.split("[")[0] not in files:
        given = "a path or list gives only the split 'train'" if list(files) == ["train"] else "splits given"
        raise UserError(
            f"load_dataset_config.split {load.split!r} is not in data_files ({given}: "
            f"{sorted(files)}); use a mapping like {{'{load.split}': 'file.json'}}"
        )
    paths = files[load.split.split("[")[0]]
    with _named_by_url(paths):
        for path in paths:
            check_file(path, load.data_name)
        rows = _load(load, files, paths)
        if len(rows) == 0:
            raise DataError("the data set has no rows", file=_where(paths))
        if load.col_filters:
            rows = _filter(rows, load.col_filters, paths)
    if load.max_samples:
        rows = rows.select(range(min(load.max_samples, len(rows))))
    return rows


@contextmanager
def _named_by_url(paths: list[str]):
    """A problem in a downloaded file names its URL (token masked), not its place in the download cache."""
    try:
        yield
    except DataError as err:
        from slimtune.storage.download import origin_of

        for path in paths:
            url = origin_of(path)
            if url and path in str(err):
                err.args = (str(err).replace(path, url),)
                err.file = url if err.file == path else err.file
        raise


def _reject_remote(
    value: Any, key: str, hint: str = "copy the data to a local file and give its path"
) -> None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None) or value
    raise UserError(f"{key}: remote data ({kind}) is not implemented yet; {hint}")


def _expand(data_files: Any, storage_options: dict | None = None) -> dict[str, list[str]]:
    """data_files as {split: [local paths]}: globs expanded, remote files and folders downloaded into the cache
    (slimtune.storage.download), Azure ML datastore and job output resources read from their storage."""
    if isinstance(data_files, (str, list)) or hasattr(data_files, "type"):
        data_files = {"train": data_files}
    out: dict[str, list[str]] = {}
    for split, value in data_files.items():
        key = "load_dataset_config.data_files" + (f".{split}" if len(data_files) > 1 else "")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise UserError(f"{key} is an empty list")
        out[split] = []
        for item in values:
            remote = remote_source(item, storage_options)
            if remote is not None:
                from slimtune.storage.download import fetch_all

                out[split] += [str(p) for p in fetch_all(*remote)]
                continue
            if not isinstance(item, (str, Path)) or is_remote(str(item)):
                _reject_remote(item, key)
            item = str(Path(item).expanduser())
            if any(ch in item for ch in "*?["):
                matches = sorted(glob.glob(item, recursive=True))
                if not matches:
                    raise DataError("no file matches this pattern", file=item)
                out[split] += matches
            else:
                out[split].append(item)
    return out


def remote_source(item: Any, storage_options: dict | None = None) -> tuple[str, dict | None] | None:
    """(URL, storage options) for a data_files item slimtune fetches: a storage URL, or an Azure ML datastore or
    job output resource (its URI, with its workspace); None for a local path."""
    from slimtune.storage import is_remote_url

    if hasattr(item, "type") and item.type in ("azureml_datastore", "azureml_job_output"):
        from slimtune.storage.azureml import resource_uri

        uri, client = resource_uri(item)
        return uri, {**(storage_options or {}), "azureml_client": client}
    if isinstance(item, str) and is_remote_url(item):
        return item, storage_options
    return None


def check_file(path: str, data_name: str) -> None:
    """Missing, empty, non-UTF-8 and (JSON) malformed files raise DataError with the place of the problem."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", file=path)
    if p.is_dir():
        raise DataError(
            "is a folder; give the data files inside it (a glob like folder/*.json works)", file=path
        )
    size = p.stat().st_size
    if size == 0:
        raise DataError("the file is empty (no rows)", file=path)
    if data_name == "parquet" or size > VALIDATE_MAX_BYTES:
        return
    text = decode_utf8(p.read_bytes(), path)
    if not text.strip():
        raise DataError("the file holds only whitespace (no rows)", file=path)
    if data_name == "json":
        check_json(text, path)


def decode_utf8(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {err.start} (line {line}, "
            f"character {column}); re-save the file as UTF-8",
            file=path,
            line=line,
        ) from None


def check_json(text: str, path: str) -> None:
    """A JSON array of objects, or JSON lines (one object per non-blank line)."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"invalid JSON: {err.msg} (character {err.colno})", file=path, line=err.lineno
            ) from None
        bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
        if bad is not None:
            raise DataError(
                f"item {bad} of the JSON array is {type(data[bad]).__name__}, not an object "
                "(one row per object)",
                file=path,
            )
        if not data:
            raise DataError("the JSON array is empty (no rows)", file=path)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            multi = (
                " (a JSON object over several lines? use JSON lines or a JSON array)" if number == 1 else ""
            )
            raise DataError(
                f"invalid JSON line: {err.msg} (character {err.colno}){multi}", file=path, line=number
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                f"a JSON line must be an object (one row), got {type(row).__name__}", file=path, line=number
            )


@contextmanager
def quiet_datasets():
    """No progress bars or info logs from datasets while loading."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors are reported as DataError
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _load(load: LoadDatasetConfig, files: dict[str, list[str]], paths: list[str]) -> datasets.Dataset:
    import datasets

    try:
        with quiet_datasets(), tempfile.TemporaryDirectory(prefix="slimtune-datasets-") as cache:
            return datasets.load_dataset(
                load.data_name,
                name=load.subset,
                data_files=files,
                split=load.split,
                cache_dir=cache,
                keep_in_memory=True,
            )
    except (DataError, UserError):
        raise
    except Exception as err:  # noqa: BLE001 - datasets / pyarrow / pandas raise many kinds
        if "corresponds to no data" in str(err):  # datasets' words for a file without rows (a header only)
            raise DataError("the data set has no rows", file=_where(paths)) from None
        cause = err.__cause__ or err.__context__ or err
        detail = f"{type(cause).__name__}: {cause}".strip().rstrip(":")
        if (
            len(paths) == 1
            and load.data_name == "json"
            and Path(paths[0]).stat().st_size > VALIDATE_MAX_BYTES
        ):
            check_json(decode_utf8(Path(paths[0]).read_bytes(), paths[0]), paths[0])
        raise DataError(f"could not read as {load.data_name}: {detail}", file=_where(paths)) from err


def _filter(rows: datasets.Dataset, filters: dict[str, Any], paths: list[str]) -> datasets.Dataset:
    for column in filters:
        if column not in rows.column_names:
            raise DataError(
                f"col_filters names column {column!r}, which the data does not have; columns: "
                f"{', '.join(rows.column_names)}",
                file=_where(paths),
                column=column,
            )
    columns = {c: rows[c] for c in filters}
    keep = [i for i in range(len(rows)) if all(columns[c][i] == v for c, v in filters.items())]
    if not keep:
        raise DataError(f"no row matches col_filters {filters}", file=_where(paths))
    return rows.select(keep)


def _where(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"


def line_of_row(file: str, number: int) -> int | None:
    """The line of the `number`-th row of a JSON lines file (blank lines skipped); None for other files."""
    path = Path(file)
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json") or not path.is_file():
        return None
    seen = 0
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for line_number, line in enumerate(handle, 1):
            stripped = line.strip()
            if line_number == 1 and stripped.startswith("["):
                return None  # a JSON array: rows are not lines
            if stripped:
                seen += 1
                if seen == number:
                    return line_number
    return None
