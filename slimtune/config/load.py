"""From a config file to a validated, migrated, path-resolved run description; every problem at once."""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from slimtune.config.base import Strict
from slimtune.config.migrate import Migration, migrate
from slimtune.config.reader import Path_, dotted, interpolate_env, read_config_file
from slimtune.config.schema import RunConfig
from slimtune.errors import ConfigError, ConfigIssue
from slimtune.search.space import PassSpace, Point, split_search_values


@dataclass
class PassPlan:
    name: str  # the key under `passes`
    type: str
    params: Strict  # at the search space's default point when the pass is searched
    version: int
    space: PassSpace | None = None  # set when the pass has search values or alternatives
    host: str | None = None  # the system that runs this pass (`host` on the pass; else the run's host)

    @property
    def searched(self) -> bool:
        return self.space is not None and self.space.searched

    def at(self, point: Point, base_dir: Path) -> PassPlan:
        """This pass with its searched parameters set to `point` (validated, paths resolved)."""
        from slimtune.config.resolve import resolve_pass_params
        from slimtune.passes.registry import get_pass

        assert self.space is not None
        spec = get_pass(self.space.alternatives[point.alternative].type)
        params = spec.params.model_validate(self.space.params_at(point))
        resolve_pass_params(params, base_dir)
        return PassPlan(self.name, spec.type, params, spec.version, host=self.host)


@dataclass
class LoadedConfig:
    file: Path | None
    raw: dict[str, Any]  # as written (before ${ENV} interpolation: holds no secrets)
    migrated: dict[str, Any]  # current form, paths as written
    config: RunConfig  # validated, paths resolved
    passes: list[PassPlan]
    notes: list[str]  # key mappings applied
    warnings: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    @property
    def base_dir(self) -> Path:
        return self.file.parent if self.file else Path.cwd()


def load_config(path: str | Path) -> LoadedConfig:
    path = Path(path)
    raw, lines = read_config_file(path)
    return load_config_dict(raw, base_dir=path.parent, file=path, lines=lines)


def load_config_dict(
    raw: dict[str, Any],
    *,
    base_dir: Path | None = None,
    file: Path | None = None,
    lines: dict[Path_, int] | None = None,
) -> LoadedConfig:
    lines = lines or {}
    label = str(file) if file else None
    try:
        data, secrets = interpolate_env(raw, label)
    except ConfigError as err:  # give each unset ${NAME} the line it is on
        raise ConfigError([with_line(i, lines) for i in err.issues], label) from None
    migrated, m = migrate(data)
    issues = list(m.issues)
    config, model_issues = _validate_model(RunConfig, migrated, (), m)
    issues += model_issues
    plans: list[PassPlan] = []
    if isinstance(migrated.get("passes"), dict):
        plans, pass_issues = _validate_passes(migrated["passes"], bool(migrated.get("search_strategy")), m)
        issues += pass_issues
    issues += _cross_references(migrated, m)
    if config is not None and config.search_strategy:
        issues += _search_issues(config.search_strategy, plans, m)
    if issues:
        located = [with_line(i, lines) for i in _dedupe(issues)]
        located.sort(key=lambda i: (i.line is None, i.line or 0))  # file order; stable within a line
        raise ConfigError(located, label)
    from slimtune.config.resolve import resolve_paths
    from slimtune.config.user_scripts import resolve_user_scripts

    warnings = resolve_paths(config, plans, base_dir or Path.cwd())
    script_issues = resolve_user_scripts(config, base_dir or Path.cwd())
    if script_issues:
        raise ConfigError([with_line(i, lines) for i in script_issues], label)
    return LoadedConfig(file, raw, migrated, config, plans, m.notes, warnings, secrets)


def _validate_model(model: type[BaseModel], data: Any, prefix: Path_, m: Migration):
    try:
        return model.model_validate(data), []
    except ValidationError as err:
        return None, [issue for e in err.errors() for issue in _issues(model, data, prefix, e, m)]


def _validate_passes(
    passes: dict[str, Any], searching: bool, m: Migration
) -> tuple[list[PassPlan], list[ConfigIssue]]:
    """Each pass's parameters, validated by the pass's own model. A pass given as a list of alternative
    configs, or with search values, gets a search space; every value in it is validated here, so a bad
    value stops the run before anything is trained."""
    plans, issues = [], []
    for name, entry in passes.items():
        path = ("passes", name)
        if isinstance(entry, list):
            if not entry:
                issues.append(ConfigIssue(dotted(m.original(path)), "an empty list of alternatives"))
                continue
            found = [_alternative(alt, (*path, i), searching, m) for i, alt in enumerate(entry)]
        else:
            found = [_alternative(entry, path, searching, m)]
        for _, problems in found:
            issues += problems
        if any(alt is None for alt, _ in found):
            continue
        alternatives = [alt for alt, _ in found]
        kinds = {get_pass_spec(a.type).output_kind for a in alternatives}
        # exports that end the chain may differ in kind: a search weighs ONNX int4 against GGUF candidates
        final_exports = kinds <= {"onnx", "gguf"} and name == list(passes)[-1]
        if len(kinds) > 1 and not final_exports:
            issues.append(
                ConfigIssue(
                    dotted(m.original(path)),
                    f"alternatives produce different kinds of model ({', '.join(sorted(kinds))}); "
                    "alternatives must be interchangeable",
                )
            )
            continue
        space = PassSpace(alternatives)
        if isinstance(entry, dict) and entry.get("disable_search"):
            space = PassSpace([_collapsed(alternatives[0])])
        if space.searched and not searching:
            issues.append(
                ConfigIssue(
                    dotted(m.original(path)),
                    "has search values, but `search_strategy` is off: add "
                    '`"search_strategy": {"sampler": "exhaustive"}` or give single values',
                )
            )
            continue
        spec = get_pass_spec(alternatives[0].type)
        params = spec.params.model_validate(space.params_at(space.default()))
        host = next(
            (e.get("host") for e in (entry if isinstance(entry, list) else [entry]) if e.get("host")), None
        )
        plans.append(
            PassPlan(name, spec.type, params, spec.version, space if space.searched else None, host=host)
        )
    return plans, issues


def _search_issues(strategy: Any, plans: list[PassPlan], m: Migration) -> list[ConfigIssue]:
    """A search must be able to finish: the exhaustive sampler needs finite spaces, the others a limit."""
    continuous = [p.name for p in plans if p.searched and p.space.points() is None]
    where = dotted(m.original(("search_strategy", "sampler")))
    if continuous and strategy.sampler in ("exhaustive", "sequential"):
        return [
            ConfigIssue(
                where,
                f"`{strategy.sampler}` tries every point, but passes {', '.join(continuous)} search a continuous "
                "range: give the range a `step`, or use the `random` or `tpe` sampler with `max_iter`",
            )
        ]
    if continuous and strategy.max_iter is None and strategy.max_time is None:
        return [
            ConfigIssue(
                where,
                f"passes {', '.join(continuous)} search a continuous range: set `max_iter` or `max_time` "
                "so that the search ends",
            )
        ]
    return []


def get_pass_spec(type_name: str):
    from slimtune.passes.registry import get_pass

    return get_pass(type_name)


def _alternative(entry: Any, path: Path_, searching: bool, m: Migration):
    """(the Alternative, or None when it has problems; the problems) for one pass config."""
    from slimtune.passes.registry import all_passes
    from slimtune.search.space import Alternative

    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        return None, []  # RunConfig validation reports it
    spec = get_pass_spec(entry["type"])
    if spec is None:
        known = sorted(all_passes())
        close = difflib.get_close_matches(entry["type"], known, n=2, cutoff=0.5)
        hint = f"; did you mean {' / '.join(close)}?" if close else f"; known passes: {', '.join(known)}"
        issue = ConfigIssue(dotted(m.original((*path, "type"))), f"unknown pass type {entry['type']!r}{hint}")
        return None, [issue]
    params = {k: v for k, v in entry.items() if k not in ("type", "disable_search", "host")}
    fixed, dims, problems = split_search_values(params, search_defaults(spec.params), searching)
    issues = [ConfigIssue(dotted(m.original((*path, *where))), text) for where, text in problems]
    if issues:
        return None, issues
    alternative = Alternative(spec.type, fixed, dims)
    default = alternative.default_values()
    _, errs = _validate_model(spec.params, {**fixed, **default}, path, m)
    for issue in errs:  # name the search value when the failing key is searched
        key = issue.path.rsplit(".", 1)[-1]
        issues.append(
            ConfigIssue(issue.path, f"search value {default[key]!r}: {issue.message}", issue.line)
            if key in default
            else issue
        )
    for key, dim in dims.items():  # every other value of each searched parameter, one at a time
        values = dim.grid()
        others = values[1:] if values is not None else [dim.high]
        for value in others:
            _, errs = _validate_model(spec.params, {**fixed, **default, key: value}, path, m)
            issues += [ConfigIssue(i.path, f"search value {value!r}: {i.message}", i.line) for i in errs]
    return (None if issues else alternative), issues


def _collapsed(alternative):
    from slimtune.search.space import Alternative

    return Alternative(alternative.type, {**alternative.fixed, **alternative.default_values()})


def search_defaults(params_model: type[BaseModel]) -> dict[str, list[Any]]:
    """A pass's own search values per parameter (`search_defaults` in a field's json_schema_extra)."""
    found = {}
    for name, info in params_model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("search_defaults"):
            found[name] = list(extra["search_defaults"])
    return found


def _cross_references(cfg: dict[str, Any], m: Migration) -> list[ConfigIssue]:
    """Names that point at other sections (systems, data configs, evaluators) must exist. Works on the
    migrated dict so that these are reported together with every other problem."""
    issues: list[ConfigIssue] = []

    def names(section: str, key: str | None = None) -> list[str]:
        value = cfg.get(section)
        if isinstance(value, dict):
            return [str(k) for k in value]
        if isinstance(value, list):
            return [str(v.get(key)) for v in value if isinstance(v, dict) and v.get(key) is not None]
        return []

    def check(path: Path_, value: Any, known: list[str], what: str) -> None:
        if isinstance(value, str) and value not in known:
            close = difflib.get_close_matches(value, known, n=1, cutoff=0.5)
            hint = (
                f"; did you mean `{close[0]}`?"
                if close
                else f"; defined: {', '.join(known)}"
                if known
                else f"; no {what} is defined"
            )
            issues.append(
                ConfigIssue(dotted(m.original(path)), f"names {what} `{value}`, which is not defined{hint}")
            )

    systems, data_names, evaluators = names("systems"), names("data_configs", "name"), names("evaluators")
    for key in ("host", "target"):
        check((key,), cfg.get(key), systems, "system")
    check(("evaluator",), cfg.get("evaluator"), evaluators, "evaluator")
    for name, evaluator in (
        (cfg.get("evaluators") or {}).items() if isinstance(cfg.get("evaluators"), dict) else ()
    ):
        metrics = evaluator.get("metrics") if isinstance(evaluator, dict) else None
        for i, metric in enumerate(metrics if isinstance(metrics, list) else []):
            if isinstance(metric, dict):
                check(
                    ("evaluators", name, "metrics", i, "data_config"),
                    metric.get("data_config"),
                    data_names,
                    "data config",
                )
    passes = cfg.get("passes")
    for name, entry in passes.items() if isinstance(passes, dict) else ():
        alternatives = enumerate(entry) if isinstance(entry, list) else [(None, entry)]
        for i, alt in alternatives:
            if not isinstance(alt, dict):
                continue
            path = ("passes", name) if i is None else ("passes", name, i)
            check((*path, "host"), alt.get("host"), systems, "system")
            spec = get_pass_spec(alt["type"]) if isinstance(alt.get("type"), str) else None
            for key in spec.data_fields if spec is not None else ():
                check((*path, key), alt.get(key), data_names, "data config")
    return issues


# ---------------------------------------------------------------- error messages


def _issues(model: type[BaseModel], data: Any, prefix: Path_, error: dict, m: Migration) -> list[ConfigIssue]:
    """Usually one issue per pydantic error. A validator of a free-form mapping (e.g. LoRA's training_args)
    reports several keys in one message as `FIELD.KEY: problem; FIELD.KEY2: problem`: split it so each key
    is named by its full path and gets its own line number."""
    loc = _data_path(data, error["loc"])
    if error["type"] == "value_error" and loc and isinstance(loc[-1], str):
        field_name = loc[-1]
        parts = re.split(rf"(?:^|; ){re.escape(field_name)}\.([^\s:]+): ", _strip_value_error(error["msg"]))
        if len(parts) > 1 and parts[0] == "":
            return [
                ConfigIssue(dotted(m.original((*prefix, *loc, key))), text)
                for key, text in zip(parts[1::2], parts[2::2], strict=True)
            ]
    return [_issue(model, data, prefix, error, m)]


def _strip_value_error(message: str) -> str:
    return message[len("Value error, ") :] if message.startswith("Value error, ") else message


def _issue(model: type[BaseModel], data: Any, prefix: Path_, error: dict, m: Migration) -> ConfigIssue:
    loc = _data_path(data, error["loc"])
    path = m.original((*prefix, *loc))
    kind = error["type"]
    if kind == "extra_forbidden":
        section = _model_at(model, loc[:-1])
        message = "unknown key" + _suggest(str(loc[-1]), section)
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = _strip_value_error(error["msg"])
        if "input" in error and kind not in ("value_error",) and not isinstance(error["input"], (dict, list)):
            message += f" (got {error['input']!r})"
    return ConfigIssue(dotted(path), message)


def _data_path(data: Any, loc: tuple) -> Path_:
    """pydantic locations name union branches ('str', 'SearchStrategy'); keep only keys that are in the data."""
    out: list = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
        elif last and isinstance(part, str) and isinstance(node, dict):
            out.append(part)  # a missing key
    return tuple(out)


def _model_at(model: type[BaseModel], loc: Path_) -> type[BaseModel] | None:
    """The config section model at a location (following fields, list items and dict values)."""
    current: Any = model
    skip = False  # the next part is a list index or a dict key
    for part in loc:
        if skip:
            skip = False
            continue
        if (
            not (isinstance(current, type) and issubclass(current, BaseModel))
            or part not in current.model_fields
        ):
            return None
        annotation = current.model_fields[part].annotation
        skip = typing.get_origin(annotation) in (list, dict)
        current = _inner_model(annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _old_form_keys(section: type[BaseModel]) -> list[str]:
    """Old-schema wrappers and sections that the migration unpacks here: a misspelling of one (`confg`,
    `engin`) is never a valid key, but it is what the user meant."""
    from slimtune.config import schema
    from slimtune.passes.registry import all_passes

    wrappers = {
        schema.RunConfig: ["engine"],
        schema.InputModel: ["config", "hf_config"],
        schema.System: ["config"],
        schema.DataConfig: ["params_config"],
        schema.LoadDatasetConfig: ["params", "params_config"],
        schema.PreProcessDataConfig: ["params", "params_config", "dataset_type"],
        schema.DataloaderConfig: ["params", "params_config"],
    }
    if section in wrappers:
        return wrappers[section]
    return ["config"] if any(spec.params is section for spec in all_passes().values()) else []


def _suggest(key: str, section: type[BaseModel] | None) -> str:
    if section is None:
        return ""
    known = section.known_keys() if issubclass(section, Strict) else {k: k for k in section.model_fields}
    candidates = {**{k: k for k in _old_form_keys(section)}, **known}
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    if not close:
        close = [k for k in known if key.lower() in k.lower() or k.lower() in key.lower()][:3]
    if not close:
        return f"; valid keys here: {', '.join(sorted(set(known.values())))}"
    names: dict[
        str, str
    ] = {}  # one entry per current key: `corpus_strategy` / `strategy`, not also `strategy`
    for c in close:
        current = candidates[c]
        if current != c:
            names[current] = f"`{c}` / `{current}`"
        else:
            names.setdefault(c, f"`{c}`")
    return f"; did you mean {' or '.join(names.values())}?"


def with_line(issue: ConfigIssue, lines: dict[Path_, int]) -> ConfigIssue:
    parts: list = []
    for token in issue.path.replace("[", ".[").split("."):
        if token.startswith("[") and token.endswith("]") and token[1:-1].isdigit():
            parts.append(int(token[1:-1]))
        elif token:
            parts.append(token)
    for cut in range(len(parts), 0, -1):
        line = lines.get(tuple(parts[:cut]))
        if line:
            return ConfigIssue(issue.path, issue.message, line)
    return issue


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return list(dict.fromkeys(issues))
