# ruff: noqa: F811 - the server fixtures are imported, and named again as test arguments
"""Whole runs on remote data, against real storage servers on loopback: the source document's azureml_datastore
config trains from an Azurite container (only the workspace's datastore lookup is replaced: no Azure ML service
runs here); a SAS-bearing URL and a `${SECRET_TOKEN}` hub token never reach any output, and two users with their
own tokens share cache entries; a resource that cannot be read stops the run with exit 2, named, writing nothing."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.servers import AZURITE_ACCOUNT, AZURITE_KEY, azurite, free_port, http_file_server, moto, server_env  # noqa: F401
from tests.test_safety import run_cli as cli
from tests.test_storage import CLIENT, blob_datastore, container, s3_client, workspace  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "tests" / "configs" / "seed_azure.json"
QA = [
    {"Question": f"What is {a} plus {b}?", "Best Answer": f"{a} plus {b} is {a + b}."}
    for a, b in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (2, 2), (3, 3)]
]


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model("phi3", tmp_path_factory.mktemp("storage-runs") / "tiny-phi3")


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    from slimtune import redact
    from slimtune.storage import download

    monkeypatch.setattr(download, "_root", None)
    monkeypatch.setenv("SLIMTUNE_DOWNLOADS", str(tmp_path / "unused"))
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "store"))
    yield
    download._checked.clear()
    redact.forget()


def seed_on_tiny_model(model: Path, folder: Path) -> dict:
    """The source document's config (tests/configs/seed_azure.json) as written, but for this machine: the tiny
    model instead of the registry's Phi-3, the local system instead of Azure ML compute, one LoRA (not QLoRA:
    no CUDA here) step, no int4 export. Its data stays the azureml_datastore resource."""
    cfg = json.loads(SEED.read_text())
    cfg["input_model"]["config"] = {"model_path": str(model)}
    del cfg["systems"]
    engine = cfg["engine"]
    del engine["host"], engine["target"]
    engine["execution_providers"] = ["CPUExecutionProvider"]
    engine["cache_dir"], engine["output_dir"] = str(folder / "cache"), str(folder / "out")
    lora = cfg["passes"]["lora"]["config"]
    lora.update(lora_r=4, lora_alpha=8)
    del lora["double_quant"]  # QLoRA needs CUDA
    lora["training_args"].update(max_steps=1, gradient_accumulation_steps=1, eval_steps=1, logging_steps=1)
    del cfg["passes"]["builder"]
    cfg["data_configs"][0]["pre_process_data_config"]["params"]["source_max_len"] = 64
    return cfg


def test_the_seed_azureml_datastore_config_trains_from_azurite(
    tiny_phi3, tmp_path, azurite, workspace, capsys
):
    stores, asked = workspace
    box = container(azurite)
    box.upload_blob("finetune/train_data.json", "".join(json.dumps(r) + "\n" for r in QA).encode())
    stores["workspaceblobstore"] = blob_datastore(azurite, "workspaceblobstore", box.container_name)
    cfg = seed_on_tiny_model(tiny_phi3, tmp_path)
    resource = cfg["data_configs"][0]["load_dataset_config"]["params"]["data_files"]
    assert resource["type"] == "azureml_datastore"  # the source document's form, untouched but its path
    resource["config"]["relative_path"] = "finetune/train_data.json"
    config = tmp_path / "seed.json"
    config.write_text(json.dumps(cfg, indent=2))

    code, text = cli(["run", "--config", str(config)], capsys)
    assert code in (0, 3), text
    client, name = asked[0]
    assert name == "workspaceblobstore" and client["workspace_name"] == "Your Azure ML Workspaces name"
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [p["name"] for p in run["passes"]] == ["lora", "merge_adapter_weights"]
    assert not run["passes"][0]["cache_hit"]
    downloads = list((tmp_path / "cache" / "downloads" / "objects").rglob("train_data.json"))
    assert (
        len(downloads) == 1
        and downloads[0].read_bytes() == box.download_blob("finetune/train_data.json").readall()
    )
    for path in [*tmp_path.joinpath("out").rglob("*"), *tmp_path.joinpath("cache").rglob("*")]:
        assert not path.is_file() or AZURITE_KEY.encode() not in path.read_bytes(), (
            path
        )  # the datastore's key

    code, text = cli(["run", "--config", str(config)], capsys)  # unchanged blob: nothing fetched, all cached
    assert code in (0, 3), text
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert all(p["cache_hit"] for p in run["passes"])


ROWS = [
    {"phrase": p, "tone": t}
    for p, t in [
        ("I am so happy today!", "joy"),
        ("The dark alley scares me.", "fear"),
        ("I miss them.", "sadness"),
    ]
] * 4


def sas_url(server, box, blob: str, hours: int) -> str:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    sas = generate_blob_sas(
        AZURITE_ACCOUNT,
        box.container_name,
        blob,
        account_key=AZURITE_KEY,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=hours),
    )
    return f"{server.url}/{AZURITE_ACCOUNT}/{box.container_name}/{blob}?{sas}"


def emotion_config(model: Path, data_files: str, folder: Path, *, hub_token: str | None = None) -> dict:
    args = {"max_steps": 1, "per_device_train_batch_size": 4, "save_strategy": "no"}
    if hub_token:
        args["hub_token"] = hub_token
    return {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [
            {
                "name": "tones",
                "load_dataset_config": {"data_name": "json", "data_files": data_files},
                "pre_process_data_config": {
                    "text_template": "### Text: {phrase}\n### The tone is:\n{tone}",
                    "max_seq_len": 48,
                    "loss_on_answer_only": True,
                },
            }
        ],
        "passes": {
            "lora": {"type": "LoRA", "r": 2, "alpha": 4, "train_data_config": "tones", "training_args": args}
        },
        "cache_dir": str(folder / "cache"),
        "output_dir": str(folder / "out"),
    }


def run_keeping_secrets(config: Path, folder: Path, capsys, secrets: list[str]) -> dict:
    """`slimtune --verbose run`; none of `secrets` printed, nor written under folder/out or folder/cache.
    The run's run.json."""
    code, text = cli(["--verbose", "run", "--config", str(config)], capsys)
    assert code in (0, 3), text
    for secret in secrets:
        assert secret not in text, f"{secret} printed"
        leaked = [
            str(p)
            for p in [*folder.joinpath("out").rglob("*"), *folder.joinpath("cache").rglob("*")]
            if p.is_file() and secret.encode() in p.read_bytes()
        ]
        assert not leaked, f"{secret} written to {leaked}"
    return json.loads((folder / "out" / "run.json").read_text())


def test_sas_tokens_and_a_hub_token_reach_no_output_and_no_cache_key(
    tiny_phi3, tmp_path, azurite, capsys, monkeypatch
):
    """Two users, each with their own SAS token and hub token, run the same config on one cache: the second
    run fetches nothing and trains nothing (a token is who runs, not an input); no token is printed or written
    (stdout, stderr, run.json, reports, the cache's entries and downloads)."""
    box = container(azurite)
    box.upload_blob("tones.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).encode())
    config = tmp_path / "config.json"
    seen: list[str] = []
    for user, hours in (("alice", 1), ("bob", 2)):
        url = sas_url(azurite, box, "tones.jsonl", hours)
        signature = url.split("sig=")[1]
        token = f"hf_{user}SecretToken0042"
        monkeypatch.setenv("SECRET_TOKEN", token)
        cfg = emotion_config(tiny_phi3, url, tmp_path, hub_token="${SECRET_TOKEN}")
        config.write_text(json.dumps(cfg))
        run = run_keeping_secrets(config, tmp_path, capsys, [signature, token, AZURITE_KEY])
        seen.append(run["passes"][0]["key"])
        if user == "bob":
            assert run["passes"][0]["cache_hit"], "a different token made a different cache key"
    assert seen[0] == seen[1]
    [entry] = list((tmp_path / "cache").rglob("entry.json"))
    assert json.loads(entry.read_text())["params"]["training_args"]["hub_token"] == "***"
    assert len(list((tmp_path / "cache" / "downloads" / "objects").rglob("tones.jsonl"))) == 1


def test_storage_options_credentials_reach_no_output_and_no_cache_key(
    tiny_phi3, tmp_path, moto, capsys, monkeypatch
):
    """Credentials given in the config's storage_options, the AWS_* variables unset: S3 key and secret as
    `${ENV}` values, an HTTP Authorization header (eval data) written in the config itself. Two users with their
    own credentials share one cache entry; no credential is printed or written (run.json, report, cache entry,
    downloads)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"opts-{uuid.uuid4().hex[:8]}"
    s3_client(moto).create_bucket(Bucket=bucket)
    rows = "Sentence,Label\n" + "".join(f"{r['phrase']},{r['tone']}\n" for r in ROWS)
    s3_client(moto).put_object(Bucket=bucket, Key="csv/tones.csv", Body=rows.encode())
    site = tmp_path / "site"
    site.mkdir()
    (site / "eval.csv").write_text(rows)
    config = tmp_path / "config.json"
    seen = []
    with http_file_server(site) as server:
        for user in ("alice", "bob"):
            key_id, secret, bearer = (
                f"AKIA{user.upper()}KEYID01",
                f"{user}-s3-secret-0042",
                f"{user}BearerLiteral77",
            )
            monkeypatch.setenv("USER_AWS_KEY", key_id)
            monkeypatch.setenv("USER_AWS_SECRET", secret)
            cfg = emotion_config(tiny_phi3, f"s3://{bucket}/csv/tones.csv", tmp_path)
            cfg["data_configs"][0]["load_dataset_config"].update(
                data_name="csv",
                storage_options={
                    "key": "${USER_AWS_KEY}",
                    "secret": "${USER_AWS_SECRET}",
                    "endpoint_url": moto.url,
                },
            )
            cfg["data_configs"][0]["pre_process_data_config"]["text_template"] = (
                "### Text: {Sentence}\n### The tone is:\n{Label}"
            )
            held_out = json.loads(json.dumps(cfg["data_configs"][0]))
            held_out["name"] = "held_out"
            held_out["load_dataset_config"] = {
                "data_name": "csv",
                "data_files": f"{server.url}/eval.csv",
                "storage_options": {"headers": {"Authorization": f"Bearer {bearer}"}},
            }
            cfg["data_configs"].append(held_out)
            cfg["passes"]["lora"]["eval_data_config"] = "held_out"
            config.write_text(json.dumps(cfg))
            run = run_keeping_secrets(config, tmp_path, capsys, [key_id, secret, bearer])
            seen.append(run["passes"][0]["key"])
    assert seen[0] == seen[1] and run["passes"][0]["cache_hit"], "other credentials made another cache key"


@pytest.mark.parametrize("problem", ["refused", "missing", "unknown-host"])
def test_unreadable_remote_data_stops_the_run_named_and_writes_nothing(tiny_phi3, tmp_path, problem, capsys):
    root = tmp_path / "site"
    root.mkdir()
    (root / "tones.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with http_file_server(root) as server:
        url, expected = {
            "refused": (f"http://127.0.0.1:{free_port()}/tones.jsonl", "connection refused by 127.0.0.1"),
            "missing": (f"{server.url}/tone.jsonl", f"{server.url}/tone.jsonl: not found (404)"),
            "unknown-host": ("http://data.invalid/tones.jsonl", "unknown host data.invalid"),
        }[problem]
        config = tmp_path / "config.json"
        config.write_text(json.dumps(emotion_config(tiny_phi3, url, tmp_path)))
        code, text = cli(["run", "--config", str(config)], capsys)
    assert code == 2, text
    assert expected in text and "Traceback" not in text
    assert not (tmp_path / "out").exists()


def test_data_inspect_and_evaluate_read_s3(tiny_phi3, tmp_path, moto, server_env, capsys):
    server_env(moto)
    bucket = f"inspect-{uuid.uuid4().hex[:8]}"
    s3 = s3_client(moto)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="tones.jsonl", Body="".join(json.dumps(r) + "\n" for r in ROWS).encode())
    code, text = cli(
        ["data", "inspect", f"s3://{bucket}/tones.jsonl", "--json", "--model", str(tiny_phi3)], capsys
    )
    assert code == 0, text
    report = json.loads(text[text.index("{") :])
    assert report["rows"] == 12 and report["file"] == f"s3://{bucket}/tones.jsonl"
    code, text = cli(
        [
            "evaluate",
            "--model",
            str(tiny_phi3),
            "--data",
            f"s3://{bucket}/tones.jsonl",
            "--template",
            "### Text: {phrase}\\n### The tone is:\\n{tone}",
            "--max-rows",
            "3",
        ],
        capsys,
    )
    assert code == 0, text
    assert "3 rows" in text


def bucket_with_model(moto, model: Path, prefix: str, data_key: str) -> str:
    """A new bucket holding `model` under models/tiny/ and the ROWS at `data_key`: its name."""
    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    s3 = s3_client(moto)
    s3.create_bucket(Bucket=bucket)
    for path in model.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"models/tiny/{path.relative_to(model)}")
    s3.put_object(Bucket=bucket, Key=data_key, Body="".join(json.dumps(r) + "\n" for r in ROWS).encode())
    return bucket


def test_a_run_reads_its_model_folder_and_data_from_s3(tiny_phi3, tmp_path, moto, server_env, capsys):
    server_env(moto)
    bucket = bucket_with_model(moto, tiny_phi3, "run", "data/tones.jsonl")
    cfg = emotion_config(tiny_phi3, f"s3://{bucket}/data/*.jsonl", tmp_path)
    cfg["input_model"]["model_path"] = f"s3://{bucket}/models/tiny/"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    code, text = cli(["run", "--config", str(config)], capsys)
    assert code in (0, 3), text
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["passes"][0]["name"] == "lora" and not run["passes"][0]["cache_hit"]
    assert list((tmp_path / "cache" / "downloads" / "folders").glob("*/config.json"))


def test_evaluate_and_generate_take_a_model_at_a_url(tiny_phi3, tmp_path, moto, server_env, capsys):
    """`evaluate --model` and `generate --model` read a model folder in storage as `run` does (docs/cloud.md);
    a missing folder names its neighbours; a folder over http(s), which cannot be listed, is refused by name."""
    server_env(moto)
    bucket = bucket_with_model(moto, tiny_phi3, "cmd", "tones.jsonl")
    model = f"s3://{bucket}/models/tiny/"
    template = "### Text: {phrase}\\n### The tone is:\\n{tone}"
    code, text = cli(
        ["evaluate", "--model", model, "--data", f"s3://{bucket}/tones.jsonl", "--template", template]
        + ["--max-rows", "2"],
        capsys,
    )
    assert code == 0 and "2 rows" in text, text
    code, text = cli(["generate", "--model", model, "--prompt", "hi", "--max-new-tokens", "2"], capsys)
    assert code == 0, text
    code, text = cli(["generate", "--model", f"s3://{bucket}/models/tiyn/", "--prompt", "hi"], capsys)
    assert code == 2 and "Traceback" not in text, text
    assert f"s3://{bucket}/models/tiyn/: not found (404); nearest names in that folder: tiny" in text
    root = tmp_path / "site"
    shutil.copytree(tiny_phi3, root / "tiny")
    with http_file_server(root) as server:
        code, text = cli(["generate", "--model", f"{server.url}/tiny/", "--prompt", "hi"], capsys)
    assert code == 2 and f"{server.url}/tiny/: a folder cannot be listed over http(s)" in text, text


def test_data_inspect_names_a_scheme_it_does_not_read(capsys):
    code, text = cli(["data", "inspect", "gs://bucket/tones.csv"], capsys)
    assert code == 2 and "gs://bucket/tones.csv: gs:// is not read by slimtune" in text, text


def test_a_wrong_key_in_storage_options_stops_the_run_named(
    tiny_phi3, tmp_path, azurite, capsys, monkeypatch
):
    """Checked by: bad credentials give exit 2 with the resource and the credential named (never its value),
    before anything is written."""
    box = container(azurite)
    box.upload_blob("tones.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).encode())
    wrong_key = "V3JvbmdLZXlGb3JUaGVUZXN0" * 3
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv(
        "TEAM_STORAGE", azurite.env["AZURE_STORAGE_CONNECTION_STRING"].replace(AZURITE_KEY, wrong_key)
    )
    cfg = emotion_config(tiny_phi3, f"az://{box.container_name}/tones.jsonl", tmp_path)
    cfg["data_configs"][0]["load_dataset_config"]["storage_options"] = {
        "connection_string": "${TEAM_STORAGE}"
    }
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    code, text = cli(["run", "--config", str(config)], capsys)
    assert code == 2, text
    assert (
        f"az://{box.container_name}/tones.jsonl: access denied (403) with the connection string from " in text
    )
    assert "storage_options" in text and wrong_key not in text and "Traceback" not in text
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
