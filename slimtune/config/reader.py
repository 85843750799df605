"""Reading config files: JSON or YAML, with the line of every key kept for error messages."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from slimtune.errors import ConfigError, ConfigIssue, UserError

Path_ = tuple  # a key path: ("passes", "lora", "r") or ("data_configs", 0, "name")

COMMENT_KEYS = ("//", "$comment")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[Path_, int]]:
    """The parsed mapping and {key path: 1-based line}. Parse errors are user errors with the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        data = path.read_bytes()
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); save the "
            "config as UTF-8"
        ) from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    data = _parse_yaml(text, path) if is_yaml else _parse_json(text, path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a mapping of sections, got {type(data).__name__}")
    for key in COMMENT_KEYS:  # JSON has no comments; these top-level keys hold them
        data.pop(key, None)
    bad = _not_unicode(data)
    if bad is not None:
        raise UserError(
            f"{path}: {bad} holds an escaped lone surrogate (such as \\ud800), which is not a character; "
            "write the character itself, or a surrogate pair"
        )
    lines, duplicates = _key_lines(text)
    if duplicates:  # JSON and YAML parsers keep the last value and drop the others without a word
        raise ConfigError(duplicates, str(path))
    return data, lines


def _not_unicode(node: Any, path: tuple = ()) -> str | None:
    """Where a string (key or value) holds a lone surrogate (JSON and YAML escapes can write one), else None."""
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return f"the value of {dotted(path)}" if path else "the config"
        return None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(key, str) and _not_unicode(key) is not None:
            return f"a key under {dotted(path)}" if path else "a top-level key"
        found = _not_unicode(value, (*path, key if isinstance(key, (str, int)) else str(key)))
        if found:
            return found
    return None


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        hint = ""
        if path.suffix.lower() not in (".json", ""):
            hint = " (name the file .yaml to write YAML)"
        raise UserError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}{hint}") from None


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{path}{where}: invalid YAML: {problem}") from None


def _key_lines(text: str) -> tuple[dict[Path_, int], list[ConfigIssue]]:
    """Line of each key, read from YAML's node marks (JSON is YAML too; empty if that fails), and the keys
    given twice in one mapping."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except Exception:  # noqa: BLE001 - line numbers are a nicety; the parse above decides validity
        return {}, []
    lines: dict[Path_, int] = {}
    duplicates: list[ConfigIssue] = []

    def walk(node: Any, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, key.value)
                line = key.start_mark.line + 1
                if sub in lines and key.value != "<<":
                    duplicates.append(
                        ConfigIssue(dotted(sub), f"given twice (also on line {lines[sub]}); keep one", line)
                    )
                else:
                    lines[sub] = line
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return lines, duplicates


def interpolate_env(data: Any, file: str | None = None) -> tuple[Any, set[str]]:
    """Replace `${NAME}` in strings with environment values. Returns the new data and the values used
    (secrets to keep out of logs and records). A name that is not set is a config error."""
    used: set[str] = set()
    missing: list[ConfigIssue] = []

    def sub(value: Any, path: Path_) -> Any:
        if isinstance(value, dict):
            return {k: sub(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:

            def repl(match: re.Match) -> str:
                name = match.group(1)
                if name not in os.environ:
                    missing.append(ConfigIssue(dotted(path), f"environment variable {name} is not set"))
                    return match.group(0)
                used.add(os.environ[name])
                return os.environ[name]

            return _ENV.sub(repl, value)
        return value

    from slimtune import redact

    out = sub(data, ())
    # before anything can fail: an error message quoting a value must not show a secret
    redact.remember(used | redact.secret_values(data) | redact.secret_values(out))
    if missing:
        raise ConfigError(missing, file)
    return out, {v for v in used if v}


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
