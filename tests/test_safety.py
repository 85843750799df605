"""Safety: names written in a config cannot make slimtune write outside output_dir and cache_dir, and secrets
(`${ENV}` values, tokens, keys) never reach run.json, the reports, the published model, stdout or stderr."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from slimtune.cli.main import main
from slimtune.config.load import load_config_dict
from slimtune.errors import ConfigError

TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
ROWS = [
    ("I am so happy today!", "joy"),
    ("The dark alley scares me.", "fear"),
    ("I miss my old friends.", "sadness"),
    ("Wow, I did not expect that at all!", "surprise"),
] * 3


@pytest.fixture(autouse=True)
def _forget_secrets():
    """Secrets a config names are remembered for the process (as in one CLI run); not across tests."""
    from slimtune import redact

    yield
    redact.forget()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("safety") / "tiny-llama")


def write_rows(path: Path) -> Path:
    path.write_text("".join(json.dumps({"phrase": p, "tone": t}) + "\n" for p, t in ROWS))
    return path


def workflow(model: Path, data: Path, *, pass_names=("lora", "merge", "builder"), data_name="train") -> dict:
    lora, merge, builder = pass_names
    return {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [
            {
                "name": data_name,
                "load_dataset_config": {"data_name": "json", "data_files": str(data)},
                "pre_process_data_config": {
                    "text_template": TEMPLATE,
                    "max_seq_len": 48,
                    "loss_on_answer_only": True,
                },
            }
        ],
        "passes": {
            lora: {
                "type": "LoRA",
                "r": 2,
                "alpha": 4,
                "train_data_config": data_name,
                "training_args": {"max_steps": 1, "per_device_train_batch_size": 4, "save_strategy": "no"},
            },
            merge: {"type": "MergeAdapterWeights"},
            builder: {"type": "ModelBuilder", "precision": "int4"},
        },
    }


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    root = logging.getLogger()
    for handler in list(root.handlers):  # main() sets logging up afresh, as in a new process
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out + err


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# ---------------------------------------------------------------- names cannot escape


ESCAPES = ["../../escape-pass", "/tmp/slimtune-absolute-escape-{pid}", "..", "a/../../b", "~/escape-home"]


def test_names_from_the_config_cannot_write_outside_output_and_cache(
    tmp_path, tiny_model, capsys, monkeypatch
):
    """Pass, data config, evaluator and metric names that look like paths are only names: the run writes
    into output_dir and cache_dir (and the model store) and nowhere else, in particular not where the names
    point."""
    pid = os.getpid()
    names = [n.format(pid=pid) for n in ESCAPES]
    work = tmp_path / "deep" / "er" / "work"  # `../..` from here is still inside tmp_path: we can watch it
    work.mkdir(parents=True)
    data = write_rows(work / "train.jsonl")
    cfg = workflow(tiny_model, data, pass_names=(names[0], names[1], names[3]), data_name=names[2])
    cfg["evaluators"] = {
        names[4]: {
            "metrics": [
                {
                    "name": "../../escape-metric",
                    "type": "accuracy",
                    "data_config": names[2],
                    "sub_types": [{"name": "accuracy_score"}],
                }
            ]
        }
    }
    cfg["evaluator"] = names[4]
    cfg["workflow_id"] = "../../escape-workflow"
    cfg["output_dir"] = "out"
    cfg["cache_dir"] = "cache"
    config = work / "config.json"
    config.write_text(json.dumps(cfg, indent=2))
    home = tmp_path / "home"
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "store"))
    monkeypatch.setenv("HOME", str(home))  # `~/escape-home` would land here
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = tree(tmp_path)

    code, text = run_cli(["run", "--config", str(config)], capsys)
    assert code in (0, 3), text  # goals are not the point here; a tiny random model may miss them

    new = {p for p in tree(tmp_path) - before}
    allowed = ("deep/er/work/out", "deep/er/work/cache", "store")
    outside = sorted(p for p in new if not p.startswith(allowed))
    assert not outside, f"written outside output_dir, cache_dir and the model store: {outside}"
    assert (work / "out" / "run.json").is_file() and (work / "out" / "model" / "genai_config.json").is_file()
    assert not Path(names[1]).exists(), "a pass named by an absolute path created that path"
    assert not tree(cwd) and not tree(home)
    run = json.loads((work / "out" / "run.json").read_text())
    assert [p["name"] for p in run["passes"]] == [names[0], names[1], names[3]]  # kept, as names


@pytest.mark.parametrize("filename", ["../../escape.onnx", "/tmp/escape.onnx", "sub/model.onnx", ".."])
def test_model_builder_filename_cannot_leave_its_output_folder(tmp_path, filename):
    """extra_options.filename is the one builder option that names a file the builder writes: a path in it
    would put the model outside the pass's output folder."""
    cfg = workflow(tmp_path / "model", tmp_path / "train.jsonl")
    cfg["passes"]["builder"]["extra_options"] = {"filename": filename}
    with pytest.raises(ConfigError) as err:
        load_config_dict(cfg, base_dir=tmp_path)
    (issue,) = err.value.issues
    assert issue.path == "passes.builder.extra_options.filename"
    assert "file name" in issue.message and repr(filename) in issue.message


def test_model_builder_plain_filename_is_accepted(tmp_path):
    cfg = workflow(tmp_path / "model", tmp_path / "train.jsonl")
    cfg["passes"]["builder"]["extra_options"] = {"filename": "decoder.onnx"}
    loaded = load_config_dict(cfg, base_dir=tmp_path)
    assert loaded.passes[-1].params.extra_options == {"filename": "decoder.onnx"}


# ---------------------------------------------------------------- secrets stay out


SECRET_ENV = "slimtune-env-secret-7f3a9c"  # interpolated from ${SLIMTUNE_TEST_TOKEN}
SECRET_LITERAL = "hf_literalSecretValue0042"  # written into the config under a token key
SECRET_AZURE = "azure-client-secret-91b2"  # ${SLIMTUNE_TEST_AZURE_SECRET} in azureml_client


def test_secrets_never_reach_records_reports_or_output(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_TEST_TOKEN", SECRET_ENV)
    monkeypatch.setenv("SLIMTUNE_TEST_AZURE_SECRET", SECRET_AZURE)
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "store"))
    data = write_rows(tmp_path / "train.jsonl")
    cfg = workflow(tiny_model, data)
    cfg["passes"]["builder"]["extra_options"] = {"hf_token": "${SLIMTUNE_TEST_TOKEN}"}
    cfg["passes"]["lora"]["training_args"]["hub_token"] = SECRET_LITERAL
    cfg["azureml_client"] = {
        "subscription_id": "sub",
        "resource_group": "rg",
        "workspace_name": "ws",
        "default_auth_params": {"client_secret": "${SLIMTUNE_TEST_AZURE_SECRET}"},
    }
    cfg["output_dir"], cfg["cache_dir"] = str(tmp_path / "out"), str(tmp_path / "cache")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg, indent=2))

    code, text = run_cli(["--verbose", "run", "--config", str(config)], capsys)
    assert code in (0, 3), text
    out = tmp_path / "out"
    assert (out / "run.json").is_file() and (out / "report.md").is_file() and (out / "report.html").is_file()
    for secret in (SECRET_ENV, SECRET_LITERAL, SECRET_AZURE):
        assert secret not in text, f"{secret} printed"
        leaked = [
            str(p.relative_to(out))
            for p in out.rglob("*")
            if p.is_file() and secret.encode() in p.read_bytes()
        ]
        assert not leaked, f"{secret} written to {leaked}"
    run = json.loads((out / "run.json").read_text())
    # redacted, not dropped: the record still says a token was given
    assert run["config_as_given"]["passes"]["lora"]["training_args"]["hub_token"] == "***"
    assert "***" in json.dumps(run["passes"][-1]["params"])


def test_secret_in_a_config_error_is_not_echoed(tmp_path, capsys, monkeypatch):
    """A secret interpolated where it does not belong is reported by its key, without its value."""
    monkeypatch.setenv("SLIMTUNE_TEST_TOKEN", SECRET_ENV)
    cfg = workflow(tmp_path / "model", write_rows(tmp_path / "train.jsonl"))
    cfg["passes"]["lora"]["r"] = "${SLIMTUNE_TEST_TOKEN}"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    code, text = run_cli(["validate", str(config)], capsys)
    assert code == 2
    assert "passes.lora.r" in text
    assert SECRET_ENV not in text and "***" in text, text


def test_secret_in_a_data_error_is_not_echoed(tmp_path, capsys, monkeypatch):
    """A path built from a ${ENV} value, named in a data error, does not show the value."""
    monkeypatch.setenv("SLIMTUNE_TEST_TOKEN", SECRET_ENV)
    cfg = workflow(tmp_path / "model", tmp_path / "train.jsonl")
    cfg["data_configs"][0]["load_dataset_config"]["data_files"] = str(
        tmp_path / "${SLIMTUNE_TEST_TOKEN}.jsonl"
    )
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    code, text = run_cli(["run", "--config", str(config)], capsys)
    assert code == 2 and "not found" in text, text
    assert SECRET_ENV not in text and "***" in text, text


def test_secret_in_printed_progress_is_masked(tmp_path, capsys, monkeypatch):
    """Plain prints (the plan summary, progress lines) go through the same masking as errors and logs."""
    monkeypatch.setenv("SLIMTUNE_TEST_TOKEN", SECRET_ENV)
    rows = write_rows(tmp_path / f"{SECRET_ENV}.jsonl")
    cfg = workflow(tmp_path / "model", rows)
    cfg["data_configs"][0]["load_dataset_config"]["data_files"] = str(
        tmp_path / "${SLIMTUNE_TEST_TOKEN}.jsonl"
    )
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    code, text = run_cli(
        ["validate", "--config-only", str(config)], capsys
    )  # no model folder: the config alone
    assert code == 0, text
    assert SECRET_ENV not in text and "***.jsonl" in text, text


# ---------------------------------------------------------------- remote code


@pytest.mark.parametrize("trusted", [False, True])
def test_remote_code_only_when_the_config_allows_it_and_said_so(
    tmp_path, tiny_model, capsys, monkeypatch, trusted
):
    """Every from_pretrained call of a whole run (LoRA, merge, export) gets trust_remote_code only when
    input_model.load_kwargs sets it, and a run that sets it says so."""
    import transformers

    calls: list[tuple[str, object]] = []

    def spy(cls_name: str, original):
        def wrapper(*args, **kwargs):
            calls.append((cls_name, kwargs.get("trust_remote_code")))
            return original(*args, **kwargs)

        return wrapper

    for name in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"):
        cls = getattr(transformers, name)
        monkeypatch.setattr(cls, "from_pretrained", spy(name, cls.from_pretrained))
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "store"))
    cfg = workflow(tiny_model, write_rows(tmp_path / "train.jsonl"))
    if trusted:
        cfg["input_model"]["load_kwargs"] = {"trust_remote_code": True}
    cfg["output_dir"], cfg["cache_dir"] = str(tmp_path / "out"), str(tmp_path / "cache")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))

    code, text = run_cli(["run", "--config", str(config)], capsys)
    assert code in (0, 3), text
    assert {name for name, _ in calls} >= {"AutoModelForCausalLM", "AutoTokenizer"}, calls
    trusting = [name for name, value in calls if value]
    if trusted:
        assert trusting and "trust_remote_code is on" in text, (calls, text)
    else:
        assert not trusting, calls
        assert "trust_remote_code" not in text
