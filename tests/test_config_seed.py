"""The source document's snippets, assembled into whole configs (tests/configs), validate through the CLI
exactly as written; the bundled example configs validate too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slimtune.config.load import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "tests" / "configs").glob("*.json")) + sorted(
    (ROOT / "tests" / "configs").glob("*.yaml")
)
EXAMPLES = sorted((ROOT / "examples").glob("*/config.*"))
_SCRIPT = Path(sys.executable).with_name("slimtune")  # the console script, as users run it
SLIMTUNE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "slimtune"]


def test_seed_configs_are_present():
    names = {p.name for p in CONFIGS}
    assert {
        "seed_local.json",
        "seed_azure.json",
        "seed_qlora_local.json",
        "seed_merge_build_only.json",
    } <= names


@pytest.mark.parametrize("path", CONFIGS + EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cli_validates(path):
    """The seed configs are written for other machines (Azure, a phi-3 folder that is not here): their config is
    valid. The examples run here, so they pass every check `slimtune run` makes before loading weights."""
    only = ["--config-only"] if path in CONFIGS else []
    proc = subprocess.run([*SLIMTUNE, "validate", *only, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "ok: config is valid" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_validate_and_run_refuse_a_seed_config_alike(path, tmp_path, capsys):
    """On this machine each seed config misses something (Azure, its model or data): validate says what run says."""
    from slimtune.cli.main import main

    argv = ["--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main(["validate", str(path), *argv]) == 2
    said = capsys.readouterr().err
    assert main(["run", "--config", str(path), *argv]) == 2
    assert capsys.readouterr().err == said
    assert not (tmp_path / "out").exists()


def configs_dir() -> Path:
    return ROOT / "tests" / "configs"


def test_seed_local_plan():
    loaded = load_config(configs_dir() / "seed_local.json")
    assert [(p.name, p.type) for p in loaded.passes] == [
        ("lora", "LoRA"),
        ("merge_adapter_weights", "MergeAdapterWeights"),
        ("builder", "ModelBuilder"),
    ]
    lora = loaded.passes[0].params
    assert (lora.r, lora.alpha, lora.lora_dropout, lora.target_modules) == (
        64,
        64,
        0.1,
        ["o_proj", "qkv_proj"],
    )
    assert lora.training_args["eval_strategy"] == "steps"
    assert lora.training_args["train_sampling_strategy"] == "group_by_length"
    pre = loaded.config.data_configs[0].pre_process_data_config
    assert (pre.strategy, pre.max_seq_len, pre.pad_to_max_len) == ("join", 2048, False)
    assert loaded.passes[2].params.precision == "int4"
    # relative paths resolve against the config file's folder
    assert loaded.config.cache_dir == str(
        (ROOT / "tests" / "model-cache/models/phi3-finetuned/cache").resolve()
    )


def test_seed_azure_plan():
    loaded = load_config(configs_dir() / "seed_azure.json")
    cfg = loaded.config
    assert cfg.input_model.model_path.type == "azureml_registry_model"
    assert cfg.input_model.model_file_format == "PyTorch.MLflow"
    assert cfg.data_configs[0].load_dataset_config.data_files.type == "azureml_datastore"
    assert set(cfg.systems) == {"aml", "azure_arc"}
    assert cfg.systems["aml"].accelerators[0].execution_providers == ["CUDAExecutionProvider"]
    assert cfg.systems["aml"].hf_token is True
    assert loaded.passes[0].type == "QLoRA"  # double_quant on the seed's LoRA pass


def test_qlora_local_plan():
    loaded = load_config(configs_dir() / "seed_qlora_local.json")
    assert loaded.passes[0].type == "QLoRA"
    assert loaded.passes[0].params.double_quant is True
    assert loaded.config.systems["local_system"].accelerators[0].device == "gpu"


def test_merge_build_only_plan():
    loaded = load_config(configs_dir() / "seed_merge_build_only.json")
    assert [p.type for p in loaded.passes] == ["MergeAdapterWeights", "ModelBuilder"]
    assert loaded.config.input_model.adapter_path == str(
        (configs_dir() / "model-cache/phi3-adapter").resolve()
    )
    assert loaded.config.data_configs == []


def test_json_comment_key_is_not_an_unknown_key():
    loaded = load_config(configs_dir() / "seed_qlora_local.json")
    assert "//" not in loaded.migrated
