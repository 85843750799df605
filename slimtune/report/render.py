"""Write report.md and report.html beside run.json; `slimtune report RUN_DIR` renders them again."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from slimtune.errors import UserError

RECORD_NAME = "run.json"


def load_record(run_dir: Path) -> dict[str, Any]:
    """The run record of a run folder; a missing, unreadable or invalid file is a user error naming it."""
    path = Path(run_dir) / RECORD_NAME
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such folder; pass the output_dir of a slimtune run")
    if not path.is_file():
        raise UserError(f"{path}: not found; is {run_dir} the output_dir of a finished slimtune run?")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}); re-run `slimtune run` to write it again"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read it ({err})") from err
    if not isinstance(record, dict):
        raise UserError(
            f"{path}: expected a JSON object (a slimtune run record), found {type(record).__name__}"
        )
    return record


def write_reports(run_dir: Path, record: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Render report.md and report.html into `run_dir` from `record` (default: run_dir/run.json).

    Each file is written beside its final name and renamed into place, so a reader never sees half a report.
    """
    from slimtune.report.html import render_html
    from slimtune.report.markdown import render_markdown

    run_dir = Path(run_dir)
    if record is None:
        record = load_record(run_dir)
    else:  # the engine's record as run.json holds it (paths as strings, tuples as lists), so both renders agree
        record = json.loads(json.dumps(record, default=str))
    markdown_path, html_path = run_dir / "report.md", run_dir / "report.html"
    markdown, html = render_markdown(record), render_html(record)  # both rendered before either is written
    _write_atomic(markdown_path, markdown)
    _write_atomic(html_path, html)
    return markdown_path, html_path


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def report_command(args) -> int:
    run_dir = Path(args.run_dir)
    markdown_path, html_path = write_reports(run_dir, load_record(run_dir))
    print(markdown_path)
    print(html_path)
    return 0
