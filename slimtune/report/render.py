"""Write report.md and report.html beside run.json; `slimtune report RUN_DIR` renders them again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimtune.errors import UserError
from slimtune.files import write_text_atomic

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
    write_text_atomic(markdown_path, markdown)
    write_text_atomic(html_path, html)
    return markdown_path, html_path


def report_command(args) -> int:
    run_dir = Path(args.run_dir)
    markdown_path, html_path = write_reports(run_dir, load_record(run_dir))
    print(markdown_path)
    print(html_path)
    return 0
