"""Old Olive schema -> current form. Every key moved or renamed is recorded (shown with --verbose and kept
in run.json), and the original path of every moved key is remembered so errors name what the user wrote.

The table this implements is in docs/config-compatibility.md.
"""

from __future__ import annotations

import copy
from typing import Any

from slimtune.config.reader import Path_, dotted
from slimtune.config.schema import DataloaderConfig, LoadDatasetConfig, LoadKwargs, PreProcessDataConfig
from slimtune.errors import ConfigIssue

_LOAD_KEYS = set(LoadDatasetConfig.model_fields)
_DATALOADER_KEYS = set(DataloaderConfig.model_fields)


class Migration:
    """Notes on what moved where, and the original path of each moved subtree."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.issues: list[ConfigIssue] = []
        self._origin: dict[Path_, Path_] = {}

    def original(self, path: Path_) -> Path_:
        """The path the user wrote for a path in the migrated config."""
        for cut in range(len(path), 0, -1):
            if path[:cut] in self._origin:
                return self._origin[path[:cut]] + path[cut:]
        return path

    def moved(self, old: Path_, new: Path_, why: str = "") -> None:
        source = self.original(old)
        self._origin[new] = source
        self.notes.append(f"{dotted(source)} -> {dotted(new)}" + (f" ({why})" if why else ""))

    def note(self, path: Path_, text: str) -> None:
        self.notes.append(f"{dotted(self.original(path))}: {text}")

    def issue(self, path: Path_, text: str) -> None:
        self.issues.append(ConfigIssue(dotted(self.original(path)), text))


def _flatten(section: dict, key: str, path: Path_, m: Migration) -> None:
    """Move `section[key]`'s entries up into `section` (Olive's `config` / `params` wrappers)."""
    inner = section.pop(key)
    if inner is None:
        return
    if not isinstance(inner, dict):
        m.issue((*path, key), f"must be a mapping, got {type(inner).__name__}")
        return
    for name, value in inner.items():
        if name in section:
            m.issue((*path, key, name), f"also given as {dotted((*path, name))}; keep one")
            continue
        section[name] = value
        m.moved((*path, key, name), (*path, name))


def rename_keys(section: dict, renamed: dict[str, str], path: Path_, m: Migration) -> None:
    for old, new in renamed.items():
        if old in section:
            if new in section:
                m.issue((*path, old), f"old name of `{new}`, which is also given; keep one")
                section.pop(old)  # reported above; left in place it would also be an "unknown key"
                continue
            section[new] = section.pop(old)
            m.moved((*path, old), (*path, new), "renamed")


def migrate(raw: dict[str, Any]) -> tuple[dict[str, Any], Migration]:
    cfg = copy.deepcopy(raw)
    m = Migration()
    eps = _engine(cfg, m)
    if isinstance(cfg.get("systems"), dict):
        for name, system in cfg["systems"].items():
            if isinstance(system, dict):
                _system(system, ("systems", name), m)
    if eps is not None:
        _engine_providers(cfg, eps, m)
    if isinstance(cfg.get("input_model"), dict):
        _input_model(cfg["input_model"], ("input_model",), m)
    if isinstance(cfg.get("data_configs"), list):
        for i, data in enumerate(cfg["data_configs"]):
            if isinstance(data, dict):
                _data_config(data, ("data_configs", i), m)
    if isinstance(cfg.get("passes"), dict):
        for name, entry in cfg["passes"].items():
            if isinstance(entry, dict):
                _pass(entry, ("passes", name), m)
            elif isinstance(entry, list):  # alternatives to search over
                for i, alternative in enumerate(entry):
                    if isinstance(alternative, dict):
                        _pass(alternative, ("passes", name, i), m)
    if isinstance(cfg.get("search_strategy"), dict):
        from slimtune.config.schema import SearchStrategy

        rename_keys(cfg["search_strategy"], SearchStrategy.renamed, ("search_strategy",), m)
    return cfg, m


def _engine(cfg: dict, m: Migration) -> Any:
    if "engine" not in cfg:
        return None
    engine = cfg.pop("engine")
    if not isinstance(engine, dict):
        m.issue(("engine",), f"must be a mapping, got {type(engine).__name__}")
        return None
    eps = engine.pop("execution_providers", None)
    for key, value in engine.items():
        if key in cfg:
            m.issue(("engine", key), f"also given at the top level as `{key}`; keep one")
            continue
        cfg[key] = value
        m.moved(("engine", key), (key,), "engine settings are top-level now")
    return eps


def _system(system: dict, path: Path_, m: Migration) -> None:
    if "config" in system:
        _flatten(system, "config", path, m)
    from slimtune.config.schema import System

    rename_keys(system, System.renamed, path, m)  # Olive's azureml_client_config
    accelerators = system.get("accelerators")
    if isinstance(accelerators, list) and any(isinstance(a, str) for a in accelerators):
        # current Olive rejects bare device names: write the entry form so `config upgrade` output is current
        system["accelerators"] = [{"device": a} if isinstance(a, str) else a for a in accelerators]
        m.note((*path, "accelerators"), 'device names -> [{"device": ...}] entries')


def _engine_providers(cfg: dict, eps: Any, m: Migration) -> None:
    """engine.execution_providers -> the target system's accelerators."""
    systems = cfg.setdefault("systems", {})
    target = cfg.get("target")
    if not isinstance(systems, dict):
        return
    if target is None:
        target = next(iter(systems), "local_system")
        cfg["target"] = target
        if target not in systems:
            gpu = isinstance(eps, list) and any("CUDA" in str(ep) or "Tensorrt" in str(ep) for ep in eps)
            systems[target] = {"type": "LocalSystem", "accelerators": [{"device": "gpu" if gpu else "cpu"}]}
            m.note(("engine", "execution_providers"), f"created system `{target}` to carry the providers")
    system = systems.get(target)
    if not isinstance(system, dict):
        return  # an undefined target is reported (with the nearest name) by the cross-reference check
    accelerators = system.get("accelerators") or ["cpu"]
    entries = []
    for acc in accelerators if isinstance(accelerators, list) else [accelerators]:
        entry = {"device": acc} if isinstance(acc, str) else dict(acc)
        if entry.get("execution_providers") is None:
            entry["execution_providers"] = eps
        entries.append(entry)
    system["accelerators"] = entries
    m.moved(
        ("engine", "execution_providers"),
        ("systems", target, "accelerators", 0, "execution_providers"),
        "providers belong to the target system's accelerators",
    )


def _resource(holder: dict, key: str, path: Path_, m: Migration) -> None:
    value = holder.get(key)
    if isinstance(value, dict) and isinstance(value.get("config"), dict):
        _flatten(value, "config", (*path, key), m)


def _input_model(model: dict, path: Path_, m: Migration) -> None:
    if "config" in model:
        _flatten(model, "config", path, m)
    if model.get("type") == "PyTorchModel":
        model["type"] = "HfModel"
        m.note((*path, "type"), "PyTorchModel -> HfModel")
    _resource(model, "model_path", path, m)
    hf = model.pop("hf_config", None)
    if isinstance(hf, dict):
        hf_path = (*path, "hf_config")
        for key, value in hf.items():
            if key == "model_name":
                if "model_path" not in model:
                    model["model_path"] = value
                    m.moved((*hf_path, key), (*path, "model_path"))
                else:
                    model["model_name"] = value
                    m.moved((*hf_path, key), (*path, "model_name"), "model_path names the weights")
            elif key in ("model_loading_args", "from_pretrained_args"):
                if not isinstance(value, dict):
                    m.issue((*hf_path, key), "must be a mapping")
                    continue
                load = model.setdefault("load_kwargs", {})
                for arg, arg_value in value.items():
                    if arg in load:
                        m.issue(
                            (*hf_path, key, arg), "given twice (model_loading_args and from_pretrained_args)"
                        )
                        continue
                    load[arg] = arg_value
                    m.moved((*hf_path, key, arg), (*path, "load_kwargs", arg))
            elif key == "task":
                model["task"] = value
                m.moved((*hf_path, key), (*path, "task"))
            else:
                model[key] = value  # validation rejects it with a suggestion
                m.moved((*hf_path, key), (*path, key))
    elif hf is not None:
        m.issue((*path, "hf_config"), "must be a mapping")
    if isinstance(model.get("load_kwargs"), dict):  # e.g. torch_dtype -> dtype (transformers 5)
        rename_keys(model["load_kwargs"], LoadKwargs.renamed, (*path, "load_kwargs"), m)


def _data_config(data: dict, path: Path_, m: Migration) -> None:
    for section in (
        "load_dataset_config",
        "pre_process_data_config",
        "dataloader_config",
        "post_process_data_config",
    ):
        block = data.get(section)
        if isinstance(block, dict):
            for wrapper in ("params", "params_config"):
                if wrapper in block:
                    _flatten(block, wrapper, (*path, section), m)
    if isinstance(data.get("params_config"), dict):  # oldest form: one bag of params for every component
        bag = data.pop("params_config")
        for key, value in bag.items():
            section = (
                "load_dataset_config"
                if key in _LOAD_KEYS and key != "max_samples"
                else "dataloader_config"
                if key in _DATALOADER_KEYS
                else "pre_process_data_config"
            )  # unknown keys are rejected there, with a suggestion
            target = data.setdefault(section, {})
            if not isinstance(target, dict):
                continue  # validation reports the section's type
            if key in target:
                m.issue(
                    (*path, "params_config", key), f"also given as {dotted((*path, section, key))}; keep one"
                )
                continue
            target[key] = value
            m.moved((*path, "params_config", key), (*path, section, key))
    load = data.get("load_dataset_config")
    if isinstance(load, dict):
        _resource(load, "data_files", (*path, "load_dataset_config"), m)
    pre = data.get("pre_process_data_config")
    if isinstance(pre, dict):
        pre_path = (*path, "pre_process_data_config")
        if "dataset_type" in pre:
            kind = pre.pop("dataset_type")
            if kind == "corpus":
                m.note((*pre_path, "dataset_type"), "corpus is the only text-generation form; key dropped")
            else:
                m.issue(
                    (*pre_path, "dataset_type"),
                    f"dataset_type {kind!r} is not supported; use `corpus` (or drop the key) and a text_template",
                )
        rename_keys(pre, PreProcessDataConfig.renamed, pre_path, m)


def _pass(entry: dict, path: Path_, m: Migration) -> None:
    from slimtune.passes.registry import get_pass

    if "config" in entry:
        _flatten(entry, "config", path, m)
    spec = get_pass(entry.get("type", "")) if isinstance(entry.get("type"), str) else None
    if spec is None:
        return
    rename_keys(entry, spec.params.renamed, path, m)
    hook = getattr(spec.params, "migrate_old", None)
    if hook:
        hook(entry, path, m)
