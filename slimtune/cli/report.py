"""`slimtune report RUN_DIR`: render report.md and report.html from run.json again."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="render the reports of a run folder")
    p.add_argument("run_dir")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from slimtune.report.render import report_command

    return report_command(args)
