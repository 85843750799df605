"""Errors users can act on, and the exit codes they map to.

Anything that is not a `SlimtuneError` is a bug in slimtune (exit code 1, traceback shown).
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2
EXIT_GOALS = 3


class SlimtuneError(Exception):
    """Base class of errors caused by input: config, data, model, arguments. Exit code 2."""

    exit_code = EXIT_USER


class UserError(SlimtuneError):
    """A single problem with what the user gave us."""


class DataError(UserError):
    """A problem with a data file: names the file and, where known, the line and the column."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, column: str | None = None
    ):
        where = file or ""
        if line is not None:
            where += f":{line}"
        if column is not None:
            where = f"{where} (column {column!r})" if where else f"column {column!r}"
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.line, self.column = file, line, column


class ModelError(UserError):
    """A problem with a model folder or file."""


class ResourceError(UserError):
    """Out of memory, disk full and the like: says what ran out and what to change."""


class PassFailed(UserError):
    """A pass could not produce its output with these parameters (the builder rejected an option
    combination, or failed inside). A search records it against the candidate and goes on."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file. `path` is the dotted key path as the user wrote it."""

    path: str
    message: str
    line: int | None = None

    def render(self, file: str | None = None) -> str:
        where = f"{file}:{self.line}: " if file and self.line else (f"{file}: " if file else "")
        line = f" (line {self.line})" if self.line and not file else ""
        return f"{where}{self.path or '<root>'}{line}: {self.message}"


class ConfigError(UserError):
    """Every problem found in one config, reported together."""

    def __init__(self, issues: list[ConfigIssue], file: str | None = None):
        self.issues = issues
        self.file = file
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        lines = [f"{file or 'config'}: {count}"] + [f"  - {i.render()}" for i in issues]
        super().__init__("\n".join(lines))
