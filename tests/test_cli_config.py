"""`slimtune validate`, `slimtune config upgrade` and `slimtune passes`: output, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimtune.cli.main import main
from slimtune.config.load import load_config
from slimtune.errors import EXIT_OK, EXIT_USER

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "configs"
_SCRIPT = Path(sys.executable).with_name("slimtune")
SLIMTUNE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "slimtune"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SLIMTUNE, *args], capture_output=True, text=True, cwd=ROOT)


def dump(loaded) -> dict:
    return {
        "config": loaded.config.model_dump(),
        "passes": [(p.name, p.type, p.params.model_dump()) for p in loaded.passes],
    }


# ---------------------------------------------------------------- validate


def test_validate_prints_the_plan(capsys):
    # --config-only: the seed config names a model folder and data of another machine
    assert main(["validate", "--config-only", str(CONFIGS / "seed_local.json")]) == EXIT_OK
    out = capsys.readouterr().out
    for text in (
        "passes (in order):",
        "1. lora: LoRA",
        "2. merge_adapter_weights",
        "3. builder: ModelBuilder",
        "r = 64",
        "alpha = 64",
        "cache_dir:",
        "output_dir:",
        "local_system: LocalSystem",
    ):
        assert text in out, text
    assert "keys mapped from the old schema (--verbose lists them)" in out


def test_validate_verbose_lists_mappings(capsys):
    assert main(["-v", "validate", "--config-only", str(CONFIGS / "seed_azure.json")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "passes.lora.config.lora_r -> passes.lora.r (renamed)" in out
    assert "engine.execution_providers -> systems.aml.accelerators[0].execution_providers" in out
    assert "QLoRA" in out


def test_validate_refuses_what_run_refuses(capsys):
    """Without --config-only, validate checks this machine as run does: the seed's model folder is not here."""
    assert main(["validate", str(CONFIGS / "seed_local.json")]) == EXIT_USER
    err = capsys.readouterr().err
    assert "data file not found" in err and "dataset-classification.json" in err
    assert main(["run", "--config", str(CONFIGS / "seed_local.json")]) == EXIT_USER
    assert capsys.readouterr().err == err


def test_validate_errors_subprocess(tmp_path):
    cfg = json.loads((CONFIGS / "seed_local.json").read_text())
    cfg["passes"]["lora"]["config"]["lora_rr"] = cfg["passes"]["lora"]["config"].pop("lora_r")
    cfg["engine"]["hots"] = cfg["engine"].pop("host")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg, indent=2))
    proc = cli("validate", str(path))
    assert proc.returncode == EXIT_USER
    assert "Traceback" not in proc.stderr
    assert "2 problems" in proc.stderr
    assert "passes.lora.config.lora_rr (line" in proc.stderr
    assert "did you mean `lora_r` / `r`" in proc.stderr
    assert "engine.hots (line" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bad.json", '{\n  "input_model": {\n'),
        ("bad.yaml", "input_model: [\n"),
        ("list.yaml", "- 1\n"),
        ("env.json", '{"input_model": {"model_path": "${SLIMTUNE_SURELY_UNSET_VAR}"}}'),
        ("unknown_pass.json", '{"input_model": {"model_path": "m"}, "passes": {"p": {"type": "Quantize"}}}'),
    ],
)
def test_user_errors_exit_2_without_traceback(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert main(["validate", str(path)]) == EXIT_USER
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Traceback" not in err


def test_missing_config_file(capsys, tmp_path):
    assert main(["validate", str(tmp_path / "nope.json")]) == EXIT_USER
    assert "not found" in capsys.readouterr().err


# ---------------------------------------------------------------- argparse


@pytest.mark.parametrize(
    "argv",
    [
        ["validate"],
        ["bogus"],
        ["validate", "a.json", "--nope"],
        ["config", "upgrade"],
        ["--nope"],
        ["config", "upgrade", "a.json", "--format", "toml"],
    ],
)
def test_argument_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_USER
    assert "usage:" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys):
    for argv in (["--help"], ["--version"], ["validate", "--help"], ["config", "upgrade", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == EXIT_OK
    assert "slimtune" in capsys.readouterr().out


def test_config_without_verb_is_a_user_error(capsys):
    assert main(["config"]) == EXIT_USER


def test_no_command_prints_help(capsys):
    assert main([]) == EXIT_OK
    assert "usage:" in capsys.readouterr().out


# ---------------------------------------------------------------- config upgrade


def upgrade(path: Path, capsys, *extra: str) -> tuple[str, str]:
    assert main(["config", "upgrade", str(path), *extra]) == EXIT_OK
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize(
    "seed",
    [
        "seed_local.json",
        "seed_azure.json",
        "seed_qlora_local.json",
        "seed_merge_build_only.json",
        "seed_azure_model_local_system.json",
    ],
)
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_upgrade_validates_and_is_idempotent(tmp_path, capsys, seed, fmt):
    source = CONFIGS / seed
    if fmt == "yaml":  # the same old-form config written as YAML
        copy = tmp_path / "old.yaml"
        copy.write_text(yaml.safe_dump(json.loads(source.read_text()), sort_keys=False))
    else:
        copy = tmp_path / "old.json"
        copy.write_text(source.read_text())
    first, notes = upgrade(copy, capsys)
    assert notes.startswith("# ")  # mappings go to stderr, the config to stdout
    parse = yaml.safe_load if fmt == "yaml" else json.loads
    upgraded = tmp_path / f"new.{fmt}"  # same folder: relative paths keep their meaning
    upgraded.write_text(first)
    assert isinstance(parse(first), dict)
    second, second_notes = upgrade(upgraded, capsys)
    assert second == first
    assert second_notes == ""  # nothing left to map: the output is in the current form
    assert dump(load_config(upgraded)) == dump(load_config(copy))


def test_upgrade_output_has_no_old_keys(capsys):
    out, _ = upgrade(CONFIGS / "seed_azure.json", capsys)
    text = out
    for old in (
        '"config"',
        '"params"',
        '"engine"',
        '"hf_config"',
        '"lora_r"',
        '"lora_alpha"',
        '"corpus_strategy"',
        '"source_max_len"',
        '"dataset_type"',
        '"evaluation_strategy"',
        '"group_by_length"',
        '"PyTorchModel"',
    ):
        assert f"{old}:" not in text, old
    assert '"PyTorchModel"' not in text
    cfg = json.loads(out)
    for system in cfg["systems"].values():
        assert all(isinstance(acc, dict) for acc in system["accelerators"])


def test_upgrade_format_option(capsys):
    out, _ = upgrade(CONFIGS / "seed_local.json", capsys, "--format", "yaml")
    assert yaml.safe_load(out)["passes"]["lora"]["r"] == 64


def test_upgrade_of_a_bad_config_fails(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text('{"input_model": {"model_path": "m", "lora_r": 3}}')
    assert main(["config", "upgrade", str(path)]) == EXIT_USER
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "input_model.lora_r" in captured.err


# ---------------------------------------------------------------- passes


def test_passes_lists_old_names(capsys):
    assert main(["passes", "LoRA"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "r (old name: lora_r)" in out and "alpha (old name: lora_alpha)" in out


def test_passes_lists_every_registered_pass(capsys):
    from slimtune.passes.registry import all_passes

    assert main(["passes"]) == EXIT_OK
    out = capsys.readouterr().out
    for name in all_passes():
        assert f"{name} (v" in out


def test_unknown_pass_name(capsys):
    assert main(["passes", "LoRa"]) == EXIT_USER
    assert "unknown pass" in capsys.readouterr().err


def test_debug_shows_the_exception(tmp_path):
    from slimtune.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", "validate", str(tmp_path / "nope.json")])


def test_passes_lists_search_defaults(capsys):
    assert main(["passes", "ModelBuilder"]) == EXIT_OK
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("int4_block_size"))
    assert "SEARCHABLE_VALUES: [32, 64, 128]" in line
