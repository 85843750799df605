"""Checks of a validated config that need more than one section at a time, and of the data it names.

`check_before_run` is every check before the weights load, for `slimtune run` and `slimtune validate`.
`check_plan` is light (no torch, transformers or datasets: `slimtune validate --config-only` stops there);
`check_data` loads every data config a pass or metric uses and runs each row through its template, so a bad file
is reported, with its place, before any model is loaded or any pass starts. What needs the tokenizer (rows
longer than max_seq_len) is checked when the pass tokenizes, still before the weights load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimtune.config.load import LoadedConfig
from slimtune.data.load import line_of_row
from slimtune.errors import ConfigError, ConfigIssue, DataError, UserError
from slimtune.models.kind import is_adapter_folder

EXECUTION_PROVIDERS = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "DmlExecutionProvider": "dml",
    "WebGpuExecutionProvider": "webgpu",
}


def check_before_run(loaded: LoadedConfig) -> Any:
    """Every check `slimtune run` makes before it loads any weights, and `slimtune validate` makes the same (one
    function, so the two never disagree): the config across sections, systems, remote inputs, every row of the
    data through its template, the input model (headers only), the device each pass needs, and the memory each
    pass that is not cached will need. Reads data files, config.json and weight headers; imports torch only to
    ask whether CUDA is there when a system asks for a GPU. Returns `preflight.Ready`."""
    from slimtune.engine import preflight
    from slimtune.engine.memory_check import check_memory

    check_plan(loaded)
    check_storage_folders(loaded)
    preflight.check_systems(loaded)  # what this version cannot run (Azure, remote stores) is said first
    preflight.check_remote_inputs(loaded)
    check_data(loaded)
    model = preflight.check_input_model(loaded)
    device, ep = preflight.device_for(loaded)
    preflight.check_pass_devices(loaded, device)
    if model is not None:
        check_memory(loaded, model, device, cached=_cached_passes(loaded) | _hosted_elsewhere(loaded))
    return preflight.Ready(model, device, ep)


def check_storage_folders(loaded: LoadedConfig) -> None:
    """A cache_dir or output_dir on object storage: its bucket or container exists and these credentials may read
    it (found now, not when the first entry is uploaded after the training)."""
    from slimtune.storage.errors import check_reachable, storage_error
    from slimtune.storage.fs import StorageError, connect, filesystem

    for key in ("cache_dir", "output_dir"):
        url = getattr(loaded.config, key)
        if "://" not in url:
            continue
        connection = connect(url)
        check_reachable(connection, url)  # an unknown host or a refused connection at once
        root = connection.path.split("?", 1)[0].strip("/").split("/", 1)[0]
        try:
            filesystem(connection, url).info(root)
        except FileNotFoundError:
            problem = f"the bucket or container {root!r} does not exist; create it"
            raise StorageError(url, f"{key}: {problem}") from None
        except Exception as err:
            raise storage_error(err, url, connection) from None


def _hosted_elsewhere(loaded: LoadedConfig) -> set[str]:
    """Passes that alone run on another machine's system (`host` on the pass): that machine's memory, not
    this one's, is what they need."""
    from slimtune.systems import hosted_elsewhere

    return {p.name for p in loaded.passes if hosted_elsewhere(loaded.config, p.host)}


def _cached_passes(loaded: LoadedConfig) -> set[str]:
    """Passes whose output the cache holds (they need no memory). Nothing, without computing keys, when the
    cache has no entries (so that a check of a first run writes nothing)."""
    entries = Path(loaded.config.cache_dir) / "entries"
    remote = "://" in loaded.config.cache_dir  # a shared cache: its mirror, then the remote manifests
    if not remote and (not entries.is_dir() or not any(entries.iterdir())):
        return set()
    from slimtune.engine.chain import cached_passes, open_session

    return cached_passes(open_session(loaded), loaded.passes)


# ---------------------------------------------------------------- the plan (light)


def check_plan(loaded: LoadedConfig) -> None:
    """Every cross-section problem at once, as config issues with their lines."""
    issues: list[ConfigIssue] = []
    issues += _passes_issues(loaded)
    issues += _directory_issues(loaded)
    issues += _provider_issues(loaded)
    issues += _baseline_issues(loaded)
    issues += _publish_issues(loaded)
    if issues:
        raise ConfigError(_located(loaded, issues), str(loaded.file) if loaded.file else None)


def _passes_issues(loaded: LoadedConfig) -> list[ConfigIssue]:
    from slimtune.passes.registry import get_pass

    if not loaded.passes:
        return [
            ConfigIssue(
                _original(loaded, ("passes",)),
                "no passes: there is nothing to run; add at least one pass (`slimtune passes` lists them)",
            )
        ]
    model = loaded.config.input_model
    kind = "onnx" if model.type == "ONNXModel" else "adapter" if model.adapter_path else "hf"
    issues = []
    for plan in loaded.passes:
        spec = get_pass(plan.type)
        if spec is None:
            continue
        if kind not in spec.input_kinds:
            wanted = " or ".join(spec.input_kinds)
            hint = " (put a LoRA pass before it)" if "adapter" in spec.input_kinds and kind == "hf" else ""
            issues.append(
                ConfigIssue(
                    _original(loaded, ("passes", plan.name)),
                    f"{plan.type} needs {_a(wanted)} model, but gets {_a(kind)} model{hint}",
                )
            )
            break  # what follows gets a model of a kind we no longer know
        adapter = getattr(plan.params, "adapter_path", None)
        if adapter and not is_adapter_folder(adapter):
            what = "does not exist" if not Path(adapter).exists() else "holds no adapter_config.json"
            issues.append(
                ConfigIssue(
                    _original(loaded, ("passes", plan.name, "adapter_path")),
                    f"adapter folder {adapter} {what} (a PEFT adapter folder is expected)",
                )
            )
        kind = spec.output_kind
    return issues


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


PUBLISHED = ("model", "stages")  # folders of output_dir that a run replaces (engine/runner.finish)


def _directory_issues(loaded: LoadedConfig) -> list[ConfigIssue]:
    cfg = loaded.config
    issues = []
    if "://" in cfg.output_dir or "://" in cfg.cache_dir:
        return _url_issues(loaded)
    for key in ("output_dir", "cache_dir"):
        path = Path(getattr(cfg, key))
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:  # found at the end of a run otherwise, after the training
            issues.append(
                ConfigIssue(
                    _original(loaded, (key,)),
                    f"{blocking} is a file, so {key} {path} cannot be a folder; give a folder path",
                )
            )
    if issues:
        return issues
    output, cache = Path(cfg.output_dir).resolve(), Path(cfg.cache_dir).resolve()
    if output == cache:
        return [
            ConfigIssue(
                _original(loaded, ("output_dir",)),
                f"output_dir and cache_dir are the same folder ({cfg.output_dir}); cleaning the cache would "
                "delete the results: give them different folders",
            )
        ]
    if cache in output.parents:
        return [
            ConfigIssue(
                _original(loaded, ("output_dir",)),
                f"output_dir {output} is inside cache_dir {cache}; `slimtune cache clean` and `cache verify "
                "--remove` would treat the results as cache and delete them: give output_dir a folder outside "
                "cache_dir",
            )
        ]
    replaced = next((output / name for name in PUBLISHED if output / name in (cache, *cache.parents)), None)
    if (
        replaced is not None
    ):  # a cache at output_dir/cache (Olive's sample configs) is fine; these are replaced
        return [
            ConfigIssue(
                _original(loaded, ("cache_dir",)),
                f"cache_dir {cache} is inside output_dir's {replaced.name}/ folder ({replaced}), which every run "
                f"replaces with its published models: the cache would be deleted. Give cache_dir a folder outside "
                f"{replaced} (output_dir/cache is fine)",
            )
        ]
    return []


def _url_issues(loaded: LoadedConfig) -> list[ConfigIssue]:
    """output_dir and cache_dir where one is a storage URL: the same placement rules as for folders (a local
    folder and a URL never overlap)."""
    from pathlib import PurePosixPath

    cfg = loaded.config
    if "://" not in cfg.output_dir or "://" not in cfg.cache_dir:
        return []

    def place(url: str) -> PurePosixPath:
        scheme, rest = url.split("?", 1)[0].split("://", 1)
        return PurePosixPath("/", scheme.lower(), *rest.strip("/").split("/"))

    output, cache = place(cfg.output_dir), place(cfg.cache_dir)
    if output == cache:
        problem, key = (
            f"output_dir and cache_dir are the same place ({cfg.output_dir}); give them different ones",
            "output_dir",
        )
    elif cache in output.parents:
        problem, key = (
            f"output_dir {cfg.output_dir} is inside cache_dir {cfg.cache_dir}; give it a place outside",
            "output_dir",
        )
    elif any(output / name in (cache, *cache.parents) for name in PUBLISHED):
        problem = (
            f"cache_dir {cfg.cache_dir} is inside output_dir's model/ or stages/, which every run replaces"
        )
        key = "cache_dir"
    else:
        return []
    return [ConfigIssue(_original(loaded, (key,)), problem)]


def _provider_issues(loaded: LoadedConfig) -> list[ConfigIssue]:
    issues = []
    for name, system in loaded.config.systems.items():
        for i, accelerator in enumerate(system.accelerators):
            for provider in accelerator.execution_providers or []:
                if provider not in EXECUTION_PROVIDERS:
                    issues.append(
                        ConfigIssue(
                            _original(loaded, ("systems", name, "accelerators", i, "execution_providers")),
                            f"execution provider {provider!r} is not supported; one of "
                            f"{', '.join(EXECUTION_PROVIDERS)}",
                        )
                    )
    return issues


def _baseline_issues(loaded: LoadedConfig) -> list[ConfigIssue]:
    stages = ["input"] + [p.name for p in loaded.passes]
    issues = []
    for name, evaluator in loaded.config.evaluators.items():
        for i, metric in enumerate(evaluator.metrics):
            for j, sub in enumerate(metric.sub_types):
                baseline = sub.goal.baseline if sub.goal else None
                if baseline is not None and baseline not in stages:
                    path = ("evaluators", name, "metrics", i, "sub_types", j, "goal", "baseline")
                    issues.append(
                        ConfigIssue(
                            _original(loaded, path),
                            f"baseline `{baseline}` is not a stage of this run; use `input` or a pass name: "
                            f"{', '.join(stages)}",
                        )
                    )
    return issues


def _publish_issues(loaded: LoadedConfig) -> list[ConfigIssue]:
    names = [p.name for p in loaded.passes]
    return [
        ConfigIssue(
            _original(loaded, ("publish", i)),
            f"`{name}` is not a pass of this run; publish names passes: {', '.join(names)}",
        )
        for i, name in enumerate(loaded.config.publish)
        if name not in names
    ]


def _original(loaded: LoadedConfig, path: tuple) -> str:
    """The key path as the user wrote it: old-form configs keep engine settings under `engine` and
    parameters under `config` wrappers."""
    from slimtune.config.reader import dotted

    node: Any = loaded.raw
    out: list = []
    for part in path:
        if isinstance(node, dict) and part not in node:
            wrapper = "engine" if not out else "config"
            if isinstance(node.get(wrapper), dict) and part in node[wrapper]:
                out.append(wrapper)
                node = node[wrapper]
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return dotted(tuple(out))


def _located(loaded: LoadedConfig, issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Issues with the line of their key (or of the nearest enclosing key) in the config file."""
    if not loaded.file or not Path(loaded.file).is_file():
        return issues
    from slimtune.config.reader import _key_lines

    try:
        lines, _ = _key_lines(Path(loaded.file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return issues
    from slimtune.config.load import with_line

    return [with_line(issue, lines) for issue in issues]


# ---------------------------------------------------------------- the data (loads it)


def check_data(loaded: LoadedConfig) -> None:
    """Load each data config a pass or a metric names, and render every row through its template."""
    from slimtune.data.split import label_column_for
    from slimtune.data.template import Template
    from slimtune.data.user_script import load_data
    from slimtune.passes.registry import get_pass

    cfg = loaded.config
    by_name = {d.name: (i, d) for i, d in enumerate(cfg.data_configs)}
    train_names, eval_names = [], []  # eval_names: (evaluation data, the training data it is scored against)
    for plan in loaded.passes:
        spec = get_pass(plan.type)
        training = spec.training_of(plan.params)
        named = spec.data_names(plan.params).values()
        if training is not None and training.eval_data:
            eval_names.append((training.eval_data, training.data))
        train_names += [n for n in named if training is None or n != training.eval_data]
    for evaluator in cfg.evaluators.values():
        for metric in evaluator.metrics:
            if metric.data_config and metric.type == "accuracy":
                eval_names.append((metric.data_config, train_names[0] if train_names else None))
            elif metric.data_config:
                train_names.append(metric.data_config)

    checked: dict[str, tuple[Any, Any, str]] = {}  # name -> (rows, template, file)
    for name in dict.fromkeys([*train_names, *(e for e, _ in eval_names)]):
        if name not in by_name:
            continue  # validation reported it
        index, data = by_name[name]
        where = f"data_configs[{index}] (`{name}`)"
        file = _file_label(data.load_dataset_config.data_files)
        pre = data.pre_process_data_config
        try:
            rows = load_data(data)
            template = Template(pre, None, rows.column_names, file)
            _render_rows(rows, template, file, answer_only=bool(pre and pre.loss_on_answer_only))
        except DataError as err:
            if err.file is None:
                raise DataError(f"{where}: {err}", file=file) from None
            raise
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        _check_template_options(pre, template, f"data_configs[{index}].pre_process_data_config (`{name}`)")
        checked[name] = (rows, template, file)

    for eval_name, train_name in eval_names:
        if eval_name == train_name or eval_name not in checked or train_name not in checked:
            continue
        train_rows, train_template, _ = checked[train_name]
        column = label_column_for(train_rows, train_template.answer_column)
        eval_rows, eval_template, eval_file = checked[eval_name]
        if column is None or column != eval_template.answer_column or column not in eval_rows.column_names:
            continue
        labels = set(map(str, train_rows[column]))
        for number, value in enumerate(eval_rows[column], 1):
            if str(value) not in labels:
                raise DataError(
                    f"label {str(value)!r} is not among the labels of the training data (`{train_name}`): "
                    f"{', '.join(sorted(labels))}; the model can never learn it (a typo, or a label missing "
                    "from the training data?)",
                    file=eval_file,
                    line=line_of_row(eval_file, number),
                    column=column,
                )


def _check_template_options(pre: Any, template: Any, where: str) -> None:
    from slimtune.data.tokenize import check_options

    try:
        check_options(pre, template)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def _render_rows(rows: Any, template: Any, file: str, answer_only: bool = False) -> None:
    """Every row through the template (chat rows: their messages' shape, and an answer to learn when the loss is
    on the answer only; rendering them needs the tokenizer)."""
    for number, row in enumerate(rows, 1):
        try:
            if template.messages_col:
                messages = template._messages(row)
                if answer_only and not any(m.get("role") == "assistant" for m in messages):
                    raise DataError(
                        f"no assistant message: with loss_on_answer_only the loss is on the assistant's answer, "
                        f"and this row has none (roles: {', '.join(str(m.get('role')) for m in messages)}); end "
                        'each conversation with its {"role": "assistant", "content": ...} answer, or set '
                        "loss_on_answer_only: false"
                    )
            elif not template.chat:
                template.render(row)
        except DataError as err:
            line = line_of_row(file, number)  # shown as file:line; the row number says it for other files
            raise DataError(f"row {number}: {err}", file=file, line=line) from None
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as err:
            # a field expression such as {answer[0]} or {meta.label} that this row cannot satisfy
            line = line_of_row(file, number)
            raise DataError(
                f"row {number}: the template cannot be filled from this row ({type(err).__name__}: {err})",
                file=file,
                line=line,
            ) from None


def _file_label(data_files: Any) -> str:
    if isinstance(data_files, str):
        return data_files
    if isinstance(data_files, list) and len(data_files) == 1:
        return str(data_files[0])
    return json.dumps(data_files) if isinstance(data_files, (list, dict)) else str(data_files)
