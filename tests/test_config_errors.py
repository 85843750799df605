"""Config errors name the path as the user wrote it (wrappers included), its line, and a suggestion; every
problem in a file is reported at once."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from slimtune.config.load import load_config
from slimtune.errors import ConfigError, ConfigIssue, UserError

CONFIGS = Path(__file__).parent / "configs"


def seed(name: str = "seed_local.json") -> dict[str, Any]:
    return json.loads((CONFIGS / name).read_text())


def write(tmp_path: Path, cfg: dict[str, Any], name: str = "config.json") -> Path:
    path = tmp_path / name
    text = yaml.safe_dump(cfg, sort_keys=False) if name.endswith(".yaml") else json.dumps(cfg, indent=2)
    path.write_text(text)
    return path


def issues_of(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.issues


def line_of(path: Path, key: str, after: int = 0) -> int:
    """1-based line of the first `"key":` (JSON) or `key:` (YAML) at or after line `after`."""
    for number, text in enumerate(path.read_text().splitlines(), 1):
        stripped = text.strip().lstrip("- ")
        if number >= after and (stripped.startswith(f'"{key}":') or stripped.startswith(f"{key}:")):
            return number
    raise AssertionError(f"{key} not in {path}")


def misspell(cfg: dict, path: tuple, wrong: str) -> None:
    """Rename the last key of `path` to `wrong`, in place (keeping the key order)."""
    node = cfg
    for part in path[:-1]:
        node = node[part]
    items = list(node.items())
    node.clear()
    node.update({(wrong if k == path[-1] else k): v for k, v in items})


# (where in the seed config, wrong name, path reported, suggestions that must appear)
MISSPELLINGS = [
    (("engine",), "engin", "engin", ["engine"]),
    (("input_model", "config"), "confg", "input_model.confg", ["config"]),
    (
        ("input_model", "config", "hf_config", "model_loading_args", "trust_remote_code"),
        "trust_remote_cod",
        "input_model.config.hf_config.model_loading_args.trust_remote_cod",
        ["trust_remote_code"],
    ),
    (
        ("data_configs", 0, "load_dataset_config", "params", "data_files"),
        "data_file",
        "data_configs[0].load_dataset_config.params.data_files".replace("data_files", "data_file"),
        ["data_files"],
    ),
    (
        ("data_configs", 0, "pre_process_data_config", "params", "corpus_strategy"),
        "corpus_stratgy",
        "data_configs[0].pre_process_data_config.params.corpus_stratgy",
        ["corpus_strategy", "strategy"],
    ),
    (("passes", "lora", "config", "lora_r"), "lora_rr", "passes.lora.config.lora_rr", ["lora_r", "r"]),
    (
        ("passes", "lora", "config", "lora_alpha"),
        "lora_alpah",
        "passes.lora.config.lora_alpah",
        ["lora_alpha", "alpha"],
    ),
    (
        ("passes", "lora", "config", "training_args", "learning_rate"),
        "learning_rat",
        "passes.lora.config.training_args.learning_rat",
        ["learning_rate"],
    ),
    (
        ("passes", "lora", "config", "training_args", "evaluation_strategy"),
        "evaluation_stratgy",
        "passes.lora.config.training_args.evaluation_stratgy",
        ["evaluation_strategy"],
    ),
    (
        ("passes", "builder", "config", "precision"),
        "precison",
        "passes.builder.config.precison",
        ["precision"],
    ),
    (
        ("systems", "local_system", "config", "accelerators"),
        "acelerators",
        "systems.local_system.config.acelerators",
        ["accelerators"],
    ),
    (("engine", "cache_dir"), "cach_dir", "engine.cach_dir", ["cache_dir"]),
    (("engine", "search_strategy"), "search_stategy", "engine.search_stategy", ["search_strategy"]),
]


@pytest.mark.parametrize(
    ("where", "wrong", "reported", "suggested"), MISSPELLINGS, ids=[m[2] for m in MISSPELLINGS]
)
def test_misspelled_key_in_old_form(tmp_path, where, wrong, reported, suggested):
    cfg = seed()
    misspell(cfg, where, wrong)
    path = write(tmp_path, cfg)
    issues = issues_of(path)
    (issue,) = [i for i in issues if i.path == reported]
    assert issue.line == line_of(path, wrong)
    for name in suggested:
        assert f"`{name}`" in issue.message, issue.message
    assert "unknown" in issue.message


CURRENT_MISSPELLINGS = [
    (("passes", "lora", "r"), "rr", "passes.lora.rr", ["r"]),
    (("passes", "lora", "r"), "lora_rr", "passes.lora.lora_rr", ["lora_r", "r"]),
    (
        ("input_model", "load_kwargs", "trust_remote_code"),
        "trust_remote",
        "input_model.load_kwargs.trust_remote",
        [],
    ),
    (
        ("data_configs", 0, "pre_process_data_config", "max_seq_len"),
        "max_seq_length",
        "data_configs[0].pre_process_data_config.max_seq_length",
        ["max_seq_len"],
    ),
    (
        ("systems", "local_system", "accelerators", 0, "device"),
        "devices",
        "systems.local_system.accelerators[0].devices",
        ["device"],
    ),
    (("cache_dir",), "cache_directory", "cache_directory", ["cache_dir"]),
]


@pytest.mark.parametrize(
    ("where", "wrong", "reported", "suggested"),
    CURRENT_MISSPELLINGS,
    ids=[m[2] for m in CURRENT_MISSPELLINGS],
)
def test_misspelled_key_in_current_yaml(tmp_path, where, wrong, reported, suggested):
    cfg = yaml.safe_load((CONFIGS / "seed_local_current.yaml").read_text())
    misspell(cfg, where, wrong)
    path = write(tmp_path, cfg, "config.yaml")
    (issue,) = issues_of(path)
    assert issue.path == reported
    assert issue.line == line_of(path, wrong)
    assert "did you mean" in issue.message
    for name in suggested:
        assert f"`{name}`" in issue.message, issue.message


def test_suggestion_names_a_key_once(tmp_path):
    cfg = seed()
    misspell(
        cfg, ("data_configs", 0, "pre_process_data_config", "params", "corpus_strategy"), "corpus_stratgy"
    )
    (issue,) = issues_of(write(tmp_path, cfg))
    assert issue.message.count("`strategy`") == 1, issue.message


def test_every_problem_at_once_in_file_order(tmp_path):
    cfg = seed()
    misspell(cfg, ("input_model", "config", "hf_config", "task"), "tsk")
    misspell(
        cfg, ("data_configs", 0, "pre_process_data_config", "params", "source_max_len"), "source_max_length"
    )
    misspell(cfg, ("passes", "lora", "config", "lora_r"), "lora_rr")
    misspell(cfg, ("passes", "lora", "config", "training_args", "seed"), "sed")
    cfg["passes"]["builder"]["config"]["precision"] = "int3"
    misspell(cfg, ("engine", "host"), "hots")
    path = write(tmp_path, cfg)
    issues = issues_of(path)
    assert [i.path for i in issues] == [
        "input_model.config.hf_config.tsk",
        "data_configs[0].pre_process_data_config.params.source_max_length",
        "passes.lora.config.lora_rr",
        "passes.lora.config.training_args.sed",
        "passes.builder.config.precision",
        "engine.hots",
    ]
    assert all(i.line for i in issues)
    assert [i.line for i in issues] == sorted(i.line for i in issues)


@pytest.mark.parametrize(
    ("change", "reported", "words"),
    [
        (
            lambda c: c["passes"]["lora"]["config"].update(lora_r=0),
            "passes.lora.config.lora_r",
            ["greater than 0"],
        ),
        (
            lambda c: c["passes"]["lora"]["config"].update(lora_r="big"),
            "passes.lora.config.lora_r",
            ["integer"],
        ),
        (
            lambda c: c["passes"]["lora"]["config"].update(lora_dropout=1.5),
            "passes.lora.config.lora_dropout",
            ["1.5"],
        ),
        (
            lambda c: c["passes"]["lora"]["config"]["training_args"].update(learning_rate=-0.1),
            "passes.lora.config.training_args.learning_rate",
            ["> 0", "-0.1"],
        ),
        (
            lambda c: c["passes"]["builder"]["config"].update(precision="int3"),
            "passes.builder.config.precision",
            ["int4"],
        ),
        (
            lambda c: c["passes"]["builder"].update(type="ModelBulder"),
            "passes.builder.type",
            ["ModelBuilder"],
        ),
        (lambda c: c["passes"]["lora"].update(type="LoRa"), "passes.lora.type", ["LoRA"]),
        (
            lambda c: c["passes"]["lora"]["config"].update(train_data_config="dataset_train"),
            "passes.lora.config.train_data_config",
            ["dataset_default_train"],
        ),
        (lambda c: c["engine"].update(target="local"), "engine.target", ["local_system"]),
        (lambda c: c["engine"].update(host="gpu_box"), "engine.host", ["local_system"]),
        (lambda c: c["engine"].update(evaluator="common"), "engine.evaluator", ["no evaluator"]),
        (lambda c: c["engine"].update(log_severity_level=9), "engine.log_severity_level", ["4"]),
        (
            lambda c: c["data_configs"][0]["pre_process_data_config"]["params"].update(source_max_len=-5),
            "data_configs[0].pre_process_data_config.params.source_max_len",
            ["greater than 0"],
        ),
        (
            lambda c: c["data_configs"][0]["pre_process_data_config"]["params"].update(
                corpus_strategy="joint"
            ),
            "data_configs[0].pre_process_data_config.params.corpus_strategy",
            ["join"],
        ),
        (
            lambda c: c["systems"]["local_system"]["config"].update(accelerators=["tpu"]),
            "systems.local_system.config.accelerators[0].device",
            ["gpu"],
        ),
        (
            lambda c: c["systems"]["local_system"].update(type="Local"),
            "systems.local_system.type",
            ["LocalSystem"],
        ),
        (
            lambda c: c["input_model"]["config"]["hf_config"].update(task="text-classification"),
            "input_model.config.hf_config.task",
            ["text-generation"],
        ),
        (  # found by the fuzzer: a list as the type was a TypeError (unhashable)
            lambda c: c["input_model"]["config"].update(model_path={"type": []}),
            "input_model.config.model_path",
            ["unknown resource type []"],
        ),
        (
            lambda c: c["input_model"]["config"].update(model_path={"type": "local_file", "config": [1]}),
            "input_model.config.model_path",
            ["must be a model folder"],
        ),
        (lambda c: c.update(passes="lora"), "passes", ["dictionary"]),
        (lambda c: c.update(data_configs={"name": "x"}), "data_configs", ["list"]),
    ],
)
def test_bad_values(tmp_path, change, reported, words):
    cfg = seed()
    change(cfg)
    path = write(tmp_path, cfg)
    issues = issues_of(path)
    (issue,) = [i for i in issues if i.path == reported] or [None]
    assert issue is not None, [i.render() for i in issues]
    assert issue.line, issue
    for word in words:
        assert word in issue.message, issue.message


def test_metric_data_config_reference(tmp_path):
    cfg = seed()
    cfg["evaluators"] = {"common": {"metrics": [{"name": "acc", "type": "accuracy", "data_config": "nope"}]}}
    cfg["engine"]["evaluator"] = "common"
    (issue,) = issues_of(write(tmp_path, cfg))
    assert issue.path == "evaluators.common.metrics[0].data_config"
    assert "dataset_default_train" in issue.message


def test_old_and_new_name_both_given(tmp_path):
    cfg = seed()
    cfg["passes"]["lora"]["config"]["r"] = 8
    path = write(tmp_path, cfg)
    (issue,) = issues_of(path)  # one problem: not also "unknown key lora_r"
    assert issue.path == "passes.lora.config.lora_r"
    assert "`r`" in issue.message and "keep one" in issue.message
    assert issue.line == line_of(path, "lora_r")


def test_flattened_key_also_inside_config_wrapper(tmp_path):
    cfg = seed()
    cfg["passes"]["builder"]["precision"] = "fp16"
    (issue,) = issues_of(write(tmp_path, cfg))
    assert issue.path == "passes.builder.config.precision"
    assert "keep one" in issue.message


def test_engine_target_not_a_system_when_moving_providers(tmp_path):
    cfg = seed("seed_azure.json")
    cfg["engine"]["target"] = "nowhere"
    (issue,) = issues_of(write(tmp_path, cfg))  # reported once, not also by the provider migration
    assert issue.path == "engine.target"
    assert "aml" in issue.message


def test_duplicate_key(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{\n  "input_model": {"model_path": "a"},\n  "cache_dir": "x",\n  "cache_dir": "y"\n}\n')
    (issue,) = issues_of(path)
    assert (issue.path, issue.line) == ("cache_dir", 4)
    assert "line 3" in issue.message


def test_missing_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SLIMTUNE_TEST_UNSET", raising=False)
    cfg = seed()
    cfg["input_model"]["config"]["hf_config"]["model_name"] = "${SLIMTUNE_TEST_UNSET}/phi-3"
    path = write(tmp_path, cfg)
    (issue,) = issues_of(path)
    assert issue.path == "input_model.config.hf_config.model_name"
    assert "SLIMTUNE_TEST_UNSET" in issue.message
    assert issue.line == line_of(path, "model_name")


def test_environment_variable_is_substituted(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_TEST_MODEL", "some/model")
    cfg = seed()
    cfg["input_model"]["config"]["hf_config"]["model_name"] = "${SLIMTUNE_TEST_MODEL}"
    loaded = load_config(write(tmp_path, cfg))
    assert loaded.config.input_model.model_path.endswith("some/model")
    assert "some/model" in loaded.secrets
    assert loaded.raw["input_model"]["config"]["hf_config"]["model_name"] == "${SLIMTUNE_TEST_MODEL}"


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("bad.json", '{\n  "input_model": {"model_path": "x",}\n}\n', ["bad.json:2:", "invalid JSON"]),
        ("bad.yaml", "input_model:\n  model_path: [x\n", ["bad.yaml:3:", "invalid YAML"]),
        ("list.json", "[1, 2]\n", ["mapping"]),
        ("scalar.yaml", "just a string\n", ["mapping"]),
        ("empty.yaml", "", ["mapping"]),
        ("latin1.json", b'{"input_model": {"model_path": "caf\xe9"}}', ["UTF-8"]),
    ],
)
def test_unreadable_files(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError) as err:
        load_config(path)
    for word in words:
        assert word in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.json")


def test_old_and_current_params_lists_are_not_mixed_up():
    """Guard against editing the seed in place across tests."""
    assert seed() == json.loads((CONFIGS / "seed_local.json").read_text())
    assert copy.deepcopy(seed()) == seed()


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("config.yaml", '{"passes":{"\\ud800"}}', "a key under passes"),
        ("config.json", '{"passes": {"a": {"type": "\\ud800"}}}', "the value of passes.a.type"),
    ],
)
def test_a_lone_surrogate_is_a_named_error(tmp_path, name, text, where):
    """JSON and YAML escapes can write half of a surrogate pair, which no UTF-8 text holds (found by the fuzzer:
    pydantic raised UnicodeEncodeError)."""
    from slimtune.config.load import load_config

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=f"{where} holds an escaped lone surrogate"):
        load_config(path)
