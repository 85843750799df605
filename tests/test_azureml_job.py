"""The Azure ML job of a workflow, built with the real `azure-ai-ml` SDK (no subscription is reachable from here:
the SDK's own validation and serialisation are the boundary), and its command replayed on this machine with the
inputs laid out as Azure ML mounts them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from azureml_service import ARM
from workflows import emotion_data_config

from slimtune.cli.main import main
from slimtune.config.load import load_config
from slimtune.systems.azureml import remote_system
from slimtune.systems.azureml.job import build_plan

CONFIGS = Path(__file__).parent / "configs"
CONDA = "name: project_environment\ndependencies:\n  - python=3.11\n  - pip:\n      - peft\n"


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt in this process while the test runs. A process started as a background job
    of a non-interactive shell inherits SIGINT ignored, Python then installs no handler for it, and the fake
    service's `_thread.interrupt_main()` does nothing: the client streamed a held job forever (a fresh-clone
    `.ci/run` started with `&` hung there)."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def seed_config(tmp_path):
    """The source document's Azure config, beside the conda.yaml it names."""
    shutil.copy(CONFIGS / "seed_azure.json", tmp_path / "olive-config.json")
    (tmp_path / "conda.yaml").write_text(CONDA)
    return tmp_path / "olive-config.json"


def plan_of(path: Path, code: Path):
    loaded = load_config(path)
    name, system = remote_system(loaded.config)
    return build_plan(loaded, name, system, code)


def test_seed_azure_config_is_a_command_job_the_sdk_validates(seed_config, tmp_path, monkeypatch):
    from azure.ai.ml.entities import CommandJob

    from slimtune.systems.azureml.sdk import command_job, validate

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    plan = plan_of(seed_config, tmp_path / "job" / "code")
    job = command_job(plan)
    assert isinstance(job, CommandJob)
    validate(job)  # the SDK's checks: command, environment, every ${{inputs.X}} given
    rest = job._to_rest_object()  # what create_or_update sends
    body = json.dumps(rest.as_dict(), default=str)
    props = rest.properties
    assert props.compute_id == "Your Azure AI Studio / Azure Machine Learning Service Compute Name"
    inputs = {name: value.uri for name, value in props.inputs.items()}
    assert (
        inputs["model"]
        == "azureml://registries/azureml-msr/models/microsoft/Phi-3-mini-4k-instruct/versions/11"
    )
    assert inputs["data_0"].endswith(
        "/datastores/workspaceblobstore/paths/Your train_data.json Azure ML Location"
    )
    assert "workspaces/Your Azure ML Workspaces name" in inputs["data_0"]  # the datastore's own workspace
    assert job.environment.image == "Your Azure AI Studio / Azure Machine Learning Service docker"
    assert job.environment.conda_file["dependencies"][0] == "python=3.11"
    assert "--hf-token" in props.command and "hf_secret_value_123" not in body
    assert props.distribution is None and job.resources.instance_count == 1
    assert props.tags["slimtune_workflow_key"] == plan.key and plan.name == f"slimtune-{plan.key[:32]}"
    config = json.loads((plan.code_dir / "config.json").read_text())
    assert config["input_model"]["model_path"] == "{{input:model}}"
    assert config["data_configs"][0]["load_dataset_config"]["data_files"] == "{{input:data_0}}"
    assert config["systems"]["aml"]["type"] == "LocalSystem"  # inside the job the run is local
    assert "host" in config and "cache_dir" not in config and "output_dir" not in config
    assert (plan.code_dir / "slimtune-0.1.0-py3-none-any.whl").is_file()
    # the same workflow, built again: the same job (a re-run attaches instead of submitting twice)
    assert plan_of(seed_config, tmp_path / "again" / "code").name == plan.name


def test_print_job_writes_a_folder_load_job_reads(seed_config, tmp_path):
    from azure.ai.ml import load_job

    folder = tmp_path / "printed"
    assert main(["run", "--config", str(seed_config), "--print-job", str(folder)]) == 0
    job = load_job(folder / "job.yml")
    assert job.code == "code" and (folder / job.code / "config.json").is_file()
    assert set(job.inputs) == {"model", "data_0"} and "output" in job.outputs
    assert "slimtune.systems.azureml.entry" in job.command
    written = yaml.safe_load((folder / "job.yml").read_text())
    assert written["code"] == "code"  # relative: the folder can move
    assert written["inputs"]["model"]["path"].startswith("azureml://registries/")


LORA = {
    "type": "LoRA",
    "r": 4,
    "alpha": 8,
    "train_data_config": "emotion",
    "training_args": {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1},
}


def write_azure_config(folder: Path, model: Path, system: dict, **extra) -> Path:
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [emotion_data_config(40)],
        "systems": {"aml": {"type": "AzureML", "aml_compute": "gpu-cluster", **system}},
        "host": "aml",
        "target": "aml",
        "passes": {
            "lora": dict(LORA),
            "merge": {"type": "MergeAdapterWeights"},
        },
        "evaluate_input_model": False,
        "cache_dir": "cache",
        "output_dir": "out",
        **extra,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def test_system_keys_reach_the_job(tiny, tmp_path):
    from slimtune.systems.azureml.sdk import command_job, validate

    context = tmp_path / "docker"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM python:3.11\n")
    (tmp_path / "requirements.txt").write_text("peft\n")
    system = {
        "accelerators": ["gpu"],
        "resources": {"shm_size": "16g"},
        "tags": {"team": "nlp"},
        "aml_docker_config": {
            "build_context_path": "docker",
            "dockerfile": "Dockerfile",
            "name": "st",
            "version": 3,
        },
        "requirements_file": "requirements.txt",
    }
    plan = plan_of(write_azure_config(tmp_path, tiny, system), tmp_path / "job" / "code")
    job = command_job(plan)
    validate(job)
    assert job.distribution is None and job.resources.instance_count == 1  # a whole workflow: one process
    assert job.resources.shm_size == "16g" and job.tags["team"] == "nlp"
    assert job.environment.build.path == str(context) and job.environment.version == "3"
    assert job.command.startswith("python -m pip install --quiet -r requirements.txt")
    assert (plan.code_dir / "requirements.txt").read_text() == "peft\n"
    inputs = {i.name: i for i in plan.inputs}
    assert inputs["model"].path == str(tiny) and inputs["model"].type == "uri_folder"
    assert inputs["data_0"].type == "uri_file"


def test_environment_config_and_default_environment(tiny, tmp_path):
    from slimtune.systems.azureml.job import DEFAULT_IMAGE
    from slimtune.systems.azureml.sdk import command_job

    existing = {"aml_environment_config": {"name": "slimtune-gpu", "label": "latest"}}
    job = command_job(plan_of(write_azure_config(tmp_path, tiny, existing), tmp_path / "a" / "code"))
    assert job.environment == "azureml:slimtune-gpu@latest"
    job = command_job(plan_of(write_azure_config(tmp_path, tiny, {}), tmp_path / "b" / "code"))
    assert job.environment.image == DEFAULT_IMAGE
    pip = job.environment.conda_file["dependencies"][-1]["pip"]
    assert any(p.startswith("transformers") for p in pip) and "azure-keyvault-secrets" in pip


def test_bad_azure_keys_fail_at_load(tiny, tmp_path, capsys):
    both = {"aml_docker_config": {"base_image": "x"}, "aml_environment_config": {"name": "e", "version": 1}}
    path = write_azure_config(tmp_path, tiny, both)
    assert main(["run", "--config", str(path), "--print-job", str(tmp_path / "j")]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "j").exists()


def replay(job_yml: Path, mounts: Path) -> subprocess.CompletedProcess:
    """Run the job's command the way Azure ML does: in a copy of the code folder, each input mounted at a path of
    its own (a uri_file input is the file itself), `${{inputs.X}}` and `${{outputs.X}}` replaced by those paths,
    the job's environment variables set, a fresh Python environment with the image's packages (this venv)."""
    job = yaml.safe_load(job_yml.read_text())
    work = mounts / "wd"
    shutil.copytree(job_yml.parent / job["code"], work)
    command = job["command"]
    for name, spec in job["inputs"].items():
        source = Path(spec["path"])
        mount = mounts / f"INPUT_{name}"
        if spec["type"] == "uri_file":
            mount.mkdir(parents=True)
            mount = mount / source.name
            shutil.copy(source, mount)
        else:
            shutil.copytree(source, mount)
        command = command.replace(f"${{{{inputs.{name}}}}}", str(mount))
    output = mounts / "OUTPUT_output"
    output.mkdir()
    command = command.replace("${{outputs.output}}", str(output))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # slimtune comes from the job's wheel
    env.update(job.get("environment_variables") or {})
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def replayed(tiny, tmp_path_factory):
    """A workflow printed as a job and its command replayed: (config, job output folder, replay result)."""
    folder = tmp_path_factory.mktemp("replayed")
    path = write_azure_config(folder, tiny, {"accelerators": ["cpu"], "azureml_client": WORKSPACE})
    assert main(["run", "--config", str(path), "--print-job", str(folder / "printed")]) == 0
    done = replay(folder / "printed" / "job.yml", folder / "mnt")
    return path, folder / "mnt" / "OUTPUT_output", done


SUB = "00000000-0000-0000-0000-000000000001"
WORKSPACE = {
    "subscription_id": SUB,
    "resource_group": "rg",
    "workspace_name": "ws",
}


def test_job_command_replayed_locally_produces_the_model_and_fills_the_local_cache(replayed, tmp_path):
    from azure.ai.ml import load_job

    from slimtune.systems.azureml.remote import place_outputs

    path, output, done = replayed
    printed = path.parent / "printed" / "job.yml"
    assert (
        load_job(printed).inputs["model"].path
        == yaml.safe_load(path.read_text())["input_model"]["model_path"]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (output / "exit_code.txt").read_text() == "0"
    model = output / "output" / "model"
    assert (model / "config.json").is_file() and list(model.glob("*.safetensors"))
    record = json.loads((output / "output" / "run.json").read_text())
    assert [p["name"] for p in record["passes"]] == ["lora", "merge"]
    # the job ran the wheel in its code folder, not this checkout
    assert (
        path.parent / "mnt" / "wd" / ".slimtune-lib" / "slimtune" / "systems" / "azureml" / "entry.py"
    ).is_file()

    # brought home: the model into output_dir, the pass outputs into the local cache under the job's keys ...
    config = yaml.safe_load(path.read_text())
    config.update(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    place_outputs(output, tmp_path / "out", tmp_path / "cache")
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    local = json.loads((tmp_path / "out" / "run.json").read_text())
    assert all(s["path"].startswith(str(tmp_path / "cache")) for s in local["stages"][1:])
    # ... so the same workflow run here finds every pass in the cache
    config["systems"]["aml"] = {"type": "LocalSystem", "accelerators": ["cpu"]}
    local_config = tmp_path / "config.yaml"
    local_config.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(local_config)]) == 0
    rerun = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [p["cache_hit"] for p in rerun["passes"]] == [True, True]


def test_data_at_another_path_has_the_same_fingerprint(tmp_path):
    """The job reads the rows from its mount: the same content must give the same pass keys as here."""
    from slimtune.data.fingerprint import data_fingerprint

    here, mounted = tmp_path / "here" / "train.jsonl", tmp_path / "mnt" / "INPUT_data_0" / "other.jsonl"
    for path in (here, mounted):
        path.parent.mkdir(parents=True)
        path.write_text('{"text": "a"}\n')
    config = {"name": "d", "load_dataset_config": {"data_files": str(here)}}
    moved = {"name": "d", "load_dataset_config": {"data_files": str(mounted)}}
    assert data_fingerprint(config) == data_fingerprint(moved)
    mounted.write_text('{"text": "b"}\n')
    assert data_fingerprint(config) != data_fingerprint(moved)


# ---------------------------------------------------------------- submit, stream, download through the real SDK


class StaticToken:
    """A bearer token for the stand-in service (which checks none): the one part of Azure's sign-in skipped."""

    def get_token(self, *scopes, **kwargs):
        import time

        from azure.core.credentials import AccessToken

        return AccessToken("test-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes, **kwargs):
        import time

        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo("test-token", int(time.time()) + 3600)


@pytest.fixture
def azure(tmp_path, monkeypatch):
    """The stand-in Azure ML service (tests/azureml_service.py) on loopback, reached as the SDK's HTTPS proxy."""
    from azureml_service import Server

    from slimtune.systems.azureml import workspace

    with Server(tmp_path / "certs") as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(workspace, "credential", StaticToken)
        yield server.service


def local_copy(config: Path, folder: Path) -> Path:
    data = yaml.safe_load(config.read_text())
    data.update(output_dir=str(folder / "out"), cache_dir=str(folder / "cache"))
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def job_puts(service) -> list[str]:
    return [p for m, h, p in service.requests if m == "PUT" and "/jobs/" in p]


def test_submit_stream_and_download_through_the_sdk(replayed, azure, tmp_path, capsys):
    config, output, _ = replayed
    azure.outputs = {
        p.relative_to(output).as_posix(): p.read_bytes() for p in output.rglob("*") if p.is_file()
    }
    azure.log = "[1/2] lora (LoRA)\nslimtune job log: the run is done\n"
    path = local_copy(config, tmp_path)
    assert main(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    (name,) = {p.rsplit("/", 1)[1] for p in job_puts(azure)}
    assert f"submitted Azure ML job {name}: https://ml.azure.com/runs/{name}" in out
    assert "slimtune job log: the run is done" in out  # streamed from the job's log
    assert azure.unknown == []  # every request the SDK made is one the stand-in answers
    # uploaded: the code snapshot (config, wheel), the model and the data as inputs
    uploaded = "\n".join(azure.blobs)
    for name_part in (
        "config.json",
        "slimtune-0.1.0-py3-none-any.whl",
        "LocalUpload/",
        "data.jsonl",
        "model.safetensors",
    ):
        assert name_part in uploaded
    body = azure.jobs[name].body["properties"]
    assert body["computeId"].endswith("/computes/gpu-cluster")
    assert body["inputs"]["model"]["uri"].startswith(
        "azureml://datastores/workspaceblobstore/paths/LocalUpload/"
    )
    # downloaded: the model into output_dir, the job's cache entries into the local cache
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    keys = {p.name for p in (output / "cache" / "entries").iterdir()}
    assert keys and keys == {p.name for p in (tmp_path / "cache" / "entries").iterdir()}
    # the same workflow again: attached to (and downloaded from) the job it started, not submitted twice
    assert main(["run", "--config", str(path)]) == 0
    assert f"attached to Azure ML job {name} (Completed)" in capsys.readouterr().out
    assert len(job_puts(azure)) == 1
    # `slimtune jobs` on that job: its status, its log again, its outputs elsewhere, a cancel request
    args = [name, "--config", str(path)]
    assert main(["jobs", "status", *args]) == 0
    assert f"{name}: Completed https://ml.azure.com/runs/{name}" in capsys.readouterr().out
    assert main(["jobs", "logs", *args]) == 0
    assert "slimtune job log: the run is done" in capsys.readouterr().out
    assert main(["jobs", "download", *args, "--output-dir", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model" / "config.json").is_file()
    assert main(["jobs", "cancel", *args]) == 0
    assert ("POST", "management.azure.com", f"{ARM}/jobs/{name}/cancel") in azure.requests
    assert azure.unknown == []


def test_failed_job_exits_non_zero_with_the_remote_error(replayed, azure, tmp_path, capsys):
    config, _, _ = replayed
    azure.fail = "Execution failed. User process 'python' exited with status code 1."
    azure.log = "".join(f"line {i}\n" for i in range(40)) + "torch.OutOfMemoryError: CUDA out of memory.\n"
    path = local_copy(config, tmp_path)
    assert main(["run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "ended Failed" in err and "exited with status code 1" in err
    assert "CUDA out of memory" in err and "line 39" in err and "line 5\n" not in err  # the last lines only
    (name,) = {p.rsplit("/", 1)[1] for p in job_puts(azure)}
    assert main(["jobs", "status", name, "--config", str(path)]) == 0
    assert f"{name}: Failed" in capsys.readouterr().out


def test_ctrl_c_while_streaming_asks_and_cancels_the_job(
    replayed, azure, tmp_path, monkeypatch, capsys, ctrl_c_raises
):
    from slimtune.systems.azureml import remote

    config, _, _ = replayed
    azure.hold, azure.interrupt = True, True
    questions = []
    monkeypatch.setattr(remote, "ask", lambda question: questions.append(question) or True)  # the user's "y"
    assert main(["run", "--config", str(local_copy(config, tmp_path))]) == 130
    (name,) = {p.rsplit("/", 1)[1] for p in job_puts(azure)}
    assert questions == [f"\ncancel Azure ML job {name}? [y/N] "]
    assert f"asked Azure ML to cancel job {name}" in capsys.readouterr().out
    assert azure.jobs[name].status == "Canceled"
    assert not (tmp_path / "out").exists()  # nothing downloaded from a job that did not finish


def test_service_principal_sign_in_and_a_real_ctrl_c_in_a_separate_process(replayed, tmp_path):
    """No test double at all on the client side: `slimtune run` in its own process signs in with a service
    principal (AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET, through Entra ID's stand-in), submits,
    streams; a SIGINT there, without a terminal to ask on, leaves the job running and says how to reattach."""
    import signal
    import time

    from azureml_service import Server

    config, _, _ = replayed
    with Server(tmp_path / "certs") as server:
        server.service.hold = True
        env = {**os.environ, **server.env(), "HOME": str(tmp_path)}
        env.update(AZURE_TENANT_ID="72f988bf-0000-0000-0000-000000000001", AZURE_CLIENT_ID="client-1")
        env["AZURE_CLIENT_SECRET"] = "not-a-real-secret"
        command = [sys.executable, "-m", "slimtune", "run", "--config", str(local_copy(config, tmp_path))]
        run = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # SIGINT handled in the child even where this process was started with it ignored (a background job)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.time() + 120
        while not any("/runs/" in p and p.endswith("/details") for _, _, p in server.service.requests):
            assert run.poll() is None and time.time() < deadline, run.communicate()
            time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
        service = server.service
    assert run.returncode == 130, err
    (name,) = service.jobs
    assert f"job {name} keeps running; `slimtune jobs logs {name}` follows it again" in out
    assert service.jobs[name].status == "Running"  # not cancelled: nobody said so
    assert ("72f988bf-0000-0000-0000-000000000001", "client-1", "client_credentials") in service.sign_ins
    assert "not-a-real-secret" not in out + err


def test_unknown_compute_exits_2_before_any_upload(replayed, azure, tmp_path, capsys):
    config, _, _ = replayed
    azure.computes = ["cpu-small", "a100-cluster"]
    assert main(["run", "--config", str(local_copy(config, tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "compute 'gpu-cluster' not found" in err and "a100-cluster, cpu-small" in err
    assert not azure.blobs and not [r for r in azure.requests if r[0] in ("PUT", "POST")]


def test_no_credentials_exit_2_before_any_upload(replayed, tmp_path, monkeypatch):
    """The real credential chain, with nothing to find: the environment and HOME emptied, no Azure CLI."""
    config, _, _ = replayed
    path = local_copy(config, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MSI_", "IDENTITY_"))}
    env.update(HOME=str(tmp_path), PATH=str(Path(sys.executable).parent) + ":/usr/bin:/bin")
    done = subprocess.run(
        [sys.executable, "-m", "slimtune", "run", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "no Azure credentials: tried EnvironmentCredential" in done.stderr and "az login" in done.stderr
    assert "AzureCliCredential" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- one pass on Azure ML, the rest here


def split_config(folder: Path, model: Path, system: dict | None = None) -> Path:
    """LoRA on Azure ML (`host: aml` on the pass), merge and ModelBuilder here (the run's host)."""
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [emotion_data_config(40)],
        "systems": {
            "aml": {
                "type": "AzureML",
                "aml_compute": "gpu-cluster",
                "accelerators": ["cpu"],
                "azureml_client": WORKSPACE,
                **(system or {}),
            },
            "here": {"type": "LocalSystem", "accelerators": ["cpu"]},
        },
        "host": "here",
        "target": "here",
        "passes": {
            "lora": {**LORA, "host": "aml"},
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
        "evaluate_input_model": False,
        "cache_dir": str(folder / "cache"),
        "output_dir": str(folder / "out"),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_uploaded_job(service, job, folder: Path) -> tuple[int, str, dict[str, bytes]]:
    """What Azure ML does with a submitted job, from what the SDK uploaded: the code snapshot into a working
    folder, each input from its blobs at a mount path of its own, `${{inputs.X}}` / `${{outputs.X}}` replaced, the
    job's environment variables set; with a PyTorch distribution, instance_count x process_count_per_instance
    processes (each node its own working folder, the output folder shared as a mount is), with the variables
    Azure ML sets for it (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK, RANK, LOCAL_RANK)."""
    import socket

    from azureml_service import materialize

    props = job.body["properties"]
    code_uri = service.assets[props["codeId"]]["body"]["properties"]["codeUri"]
    mounts = folder / job.name
    command = props["command"]
    for name, spec in props["inputs"].items():
        path = materialize(service, spec["uri"], mounts / f"INPUT_{name}")
        command = command.replace(f"${{{{inputs.{name}}}}}", str(path))
    output = mounts / "OUTPUT_output"
    output.mkdir(parents=True)
    command = command.replace("${{outputs.output}}", str(output))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.lower().endswith("_proxy")}
    env.update(props.get("environmentVariables") or {})
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["AZUREML_RUN_ID"] = job.name
    nodes = props["resources"]["instanceCount"]
    per_node = (props.get("distribution") or {}).get("processCountPerInstance", 1)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    runs = []
    for rank in range(nodes * per_node):
        node, local = divmod(rank, per_node)
        work = mounts / f"wd{node}"
        if not work.exists():
            materialize(service, code_uri, work)
        rank_env = dict(env)
        if nodes * per_node > 1:
            rank_env.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                WORLD_SIZE=str(nodes * per_node),
                NODE_RANK=str(node),
                RANK=str(rank),
                LOCAL_RANK=str(local),
            )
        runs.append(
            subprocess.Popen(
                ["bash", "-c", command],
                cwd=work,
                env=rank_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [run.communicate()[0] for run in runs]
    code = max(run.returncode for run in runs)
    outputs = {p.relative_to(output).as_posix(): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    return code, "\n".join(logs), outputs


def test_lora_on_azure_ml_merge_and_export_here(tiny, azure, tmp_path, capsys):
    """The split run: the LoRA pass alone goes to Azure ML as a job of its own (run here from what the SDK
    uploaded), its committed entry comes home into the local cache under the pass's key, the merge and the
    ModelBuilder pass run here on it; a second run finds everything in the cache and submits nothing."""
    from azure.ai.ml.operations._run_history_constants import RunHistoryConstants

    RunHistoryConstants._WAIT_COMPLETION_POLLING_INTERVAL_MAX = 3  # the stand-in's job ends in seconds
    azure.execute = lambda service, job: run_uploaded_job(service, job, tmp_path / "azure")
    path = split_config(tmp_path, tiny)
    assert main(["run", "--config", str(path)]) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    (name,) = {p.rsplit("/", 1)[1] for p in job_puts(azure)}
    assert f"submitted Azure ML job {name}" in out and azure.unknown == []
    assert "slimtune job: lora (LoRA) committed as cache entry" in out  # the job's log, streamed
    body = azure.jobs[name].body["properties"]
    assert "--pass-job pass_job.json" in body["command"] and "distribution" not in body
    assert set(body["inputs"]) == {"model", "data_emotion"}  # the input model and the data file, uploaded
    uploaded = "\n".join(azure.blobs)
    assert "pass_job.json" in uploaded and "model.safetensors" in uploaded and "data.jsonl" in uploaded
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    lora, merge, builder = record["passes"]
    assert [p["cache_hit"] for p in record["passes"]] == [False, False, False]
    assert lora["node"] == f"Azure ML job {name} ({os.uname().nodename})"  # made by the job's entry
    assert merge["node"] != lora["node"] and builder["node"] == merge["node"]  # these ran here
    assert lora["metrics"]["loss_curve"]  # the training's own record came home with the entry
    # the merge read the adapter that came home, under the key the job committed it with
    cache = tmp_path / "cache" / "entries"
    entry = json.loads((cache / lora["key"] / "entry.json").read_text())
    assert entry["key"] == lora["key"] and entry["pass_name"] == "lora"
    assert (cache / lora["key"] / "output" / "adapter_config.json").is_file()
    merged = json.loads((cache / merge["key"] / "entry.json").read_text())
    assert merged["input"]["path"] == str(cache / lora["key"] / "output")
    assert (tmp_path / "out" / "model" / "genai_config.json").is_file()
    # again: every pass from the cache, nothing submitted
    assert main(["run", "--config", str(path)]) == 0
    again = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [p["cache_hit"] for p in again["passes"]] == [True, True, True]
    assert [p["key"] for p in again["passes"]] == [p["key"] for p in record["passes"]]
    assert len(job_puts(azure)) == 1
    # `slimtune jobs download` on a pass's job says how its output is taken instead
    assert main(["jobs", "download", name, "--config", str(path)]) == 2
    assert "ran one pass of a run hosted here" in capsys.readouterr().err


def test_a_job_output_that_does_not_match_its_manifest_is_not_used(tiny, azure, tmp_path, capsys):
    """A file of the downloaded entry changed on the way: the pass fails, naming the file, and nothing enters
    the cache."""
    outputs = {}

    def tampered(service, job):
        code, log, files = run_uploaded_job(service, job, tmp_path / "azure")
        for name in files:
            if name.endswith("adapter_model.safetensors"):
                files[name] = files[name][:-1] + bytes([files[name][-1] ^ 1])
        outputs.update(files)
        return code, log, files

    from azure.ai.ml.operations._run_history_constants import RunHistoryConstants

    RunHistoryConstants._WAIT_COMPLETION_POLLING_INTERVAL_MAX = 3
    azure.execute = tampered
    path = split_config(tmp_path, tiny)
    config = yaml.safe_load(path.read_text())
    del config["passes"]["builder"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", "--config", str(path)]) == 2  # a failed pass, as when it fails here
    err = capsys.readouterr().err
    assert "does not match its manifest" in err and "adapter_model.safetensors: content differs" in err
    assert any(n.endswith("adapter_model.safetensors") for n in outputs)
    assert not list((tmp_path / "cache" / "entries").glob("*"))


def test_ctrl_c_while_a_pass_job_runs_asks_and_cancels_it(
    tiny, azure, tmp_path, monkeypatch, capsys, ctrl_c_raises
):
    from slimtune.systems.azureml import remote

    azure.hold, azure.interrupt = True, True
    questions = []
    monkeypatch.setattr(remote, "ask", lambda question: questions.append(question) or True)  # the user's "y"
    assert main(["run", "--config", str(split_config(tmp_path, tiny))]) == 130
    (name,) = azure.jobs
    assert questions == [f"\ncancel Azure ML job {name}? [y/N] "] and azure.jobs[name].status == "Canceled"
    assert f"asked Azure ML to cancel job {name}" in capsys.readouterr().out
    assert not list((tmp_path / "cache" / "entries").glob("*"))  # nothing came home


def test_whole_workflow_on_azure_with_a_pass_hosted_here_is_refused(tiny, tmp_path, capsys):
    path = split_config(tmp_path, tiny)
    config = yaml.safe_load(path.read_text())
    config.update(host="aml", target="aml")
    config["passes"]["merge"]["host"] = "here"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", "--config", str(path), "--print-job", str(tmp_path / "job")]) == 2
    assert "passes.merge.host: `here` is a LocalSystem" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


def two_node_pass_job(model: Path, folder: Path):
    """The LoRA pass as the engine hands it to a system (a PassJob), without running anything."""
    from slimtune.models.ref import ModelMeta, ModelRef
    from slimtune.passes.context import PassContext
    from slimtune.systems import PassJob

    context = PassContext(ModelRef(str(model), "hf"), ModelMeta(), folder / "o", folder / "w")
    context.data_configs = {"emotion": emotion_data_config(40)}
    params = {"r": 4, "train_data_config": "emotion"}
    return PassJob("lora", "LoRA", params, context.to_json(), "0" * 64, str(folder / "cache"))


def test_a_pass_on_two_nodes_is_a_pytorch_distributed_job(tiny, tmp_path, monkeypatch, capsys):
    """instance_count 2, process_count_per_instance 4: the pass's CommandJob, as the SDK builds, validates and
    serialises it, runs 4 processes on each of 2 nodes; a whole workflow on such a system is refused."""
    from azure.ai.ml import PyTorchDistribution

    from slimtune.systems.azureml.pass_job import build_pass_plan
    from slimtune.systems.azureml.sdk import command_job, validate

    system = {"accelerators": ["gpu"], "instance_count": 2, "process_count_per_instance": 4}
    system["resources"] = {"instance_type": "Standard_NC96ads_A100_v4", "shm_size": "16g"}
    path = split_config(tmp_path, tiny, system)
    config = yaml.safe_load(path.read_text())  # a value from the environment in the data config
    monkeypatch.setenv("TONE_QUESTION", "### The tone is:")
    template = config["data_configs"][0]["pre_process_data_config"]["text_template"]
    config["data_configs"][0]["pre_process_data_config"]["text_template"] = template.replace(
        "### The tone is:", "${TONE_QUESTION}"
    )
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    loaded = load_config(path)
    plan = build_pass_plan(
        two_node_pass_job(tiny, tmp_path),
        loaded,
        "aml",
        loaded.config.systems["aml"],
        tmp_path / "job" / "code",
    )
    text = (plan.code_dir / "pass_job.json").read_text()
    assert "${TONE_QUESTION}" in text and "### The tone is:" not in text  # travels as a reference ...
    assert plan.environment_variables["TONE_QUESTION"] == "### The tone is:"  # ... its value in the job's env
    job = command_job(plan)
    validate(job)
    assert (
        isinstance(job.distribution, PyTorchDistribution) and job.distribution.process_count_per_instance == 4
    )
    assert job.resources.instance_count == 2 and job.resources.instance_type == "Standard_NC96ads_A100_v4"
    rest = job._to_rest_object().properties
    assert (
        rest.distribution.distribution_type == "PyTorch" and rest.distribution.process_count_per_instance == 4
    )
    assert rest.resources.instance_count == 2 and "--pass-job pass_job.json" in rest.command
    written = json.loads((plan.code_dir / "pass_job.json").read_text())
    assert written["context"]["input"]["path"] == "{{input:model}}" and "cache_root" not in written
    # a pass that does not train data-parallel is refused on such a system (before anything is uploaded)
    from slimtune.errors import UserError
    from slimtune.systems.azureml.runner import check_pass

    check_pass("aml", loaded.config.systems["aml"], "lora", "LoRA")
    with pytest.raises(UserError, match="MergeAdapterWeights does not train data-parallel"):
        check_pass("aml", loaded.config.systems["aml"], "merge", "MergeAdapterWeights")
    assert "work_dir" not in written["context"] and "output_dir" not in written["context"]
    # the whole workflow on that system: refused, with the way to train on several nodes
    config = yaml.safe_load(path.read_text())
    config.update(host="aml", target="aml")
    del config["passes"]["lora"]["host"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", "--config", str(path), "--print-job", str(tmp_path / "printed")]) == 2
    err = capsys.readouterr().err
    assert "systems.aml.instance_count: a whole workflow runs as one process" in err and "host: aml" in err
    # two nodes without the processes per node: named before any pass runs
    config.update(host="here", target="here")
    config["passes"]["lora"]["host"] = "aml"
    del config["systems"]["aml"]["process_count_per_instance"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", "--config", str(path)]) == 2
    assert "systems.aml.process_count_per_instance: with instance_count 2" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "entries").exists()


def test_lora_on_two_azure_ml_nodes_trains_data_parallel(tiny, azure, tmp_path, capsys):
    """The pass's job on two nodes of one process each, launched as Azure ML launches a PyTorch distribution
    (two processes here, on loopback, gloo): both run the entry as ranks of the LoRA pass's data-parallel
    training, rank 0 commits the entry, and it comes home."""
    from azure.ai.ml.operations._run_history_constants import RunHistoryConstants

    RunHistoryConstants._WAIT_COMPLETION_POLLING_INTERVAL_MAX = 3
    azure.execute = lambda service, job: run_uploaded_job(service, job, tmp_path / "azure")
    path = split_config(tmp_path, tiny, {"instance_count": 2, "process_count_per_instance": 1})
    config = yaml.safe_load(path.read_text())
    config["passes"] = {"lora": config["passes"]["lora"]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", "--config", str(path)]) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    (name,) = azure.jobs
    body = azure.jobs[name].body["properties"]  # as the SDK sent it
    assert body["distribution"] == {"distributionType": "PyTorch", "processCountPerInstance": 1}
    assert body["resources"]["instanceCount"] == 2
    assert "data-parallel over 2 workers" in out  # rank 0's log, streamed from the job
    assert (tmp_path / "azure" / name / "wd1").is_dir()  # the second node ran from its own code folder
    (lora,) = json.loads((tmp_path / "out" / "run.json").read_text())["passes"]
    assert lora["metrics"]["world_size"] == 2 and lora["node"].endswith(", 2 ranks)")
    assert (tmp_path / "cache" / "entries" / lora["key"] / "output" / "adapter_config.json").is_file()


def test_hf_token_comes_from_the_workspace_key_vault_and_is_masked(azure, monkeypatch, capsys):
    """hf_token: true in the job: the key vault of the job's workspace (found through the workspace, as Azure ML
    names it to the job), its secret `hf-token` as HF_TOKEN, masked in what slimtune prints."""
    from slimtune.redact import RedactingStream, remember
    from slimtune.systems.azureml.entry import hf_token_from_key_vault

    azure.secrets["hf-token"] = "hf_workspace_secret_4711"
    monkeypatch.delenv("SLIMTUNE_KEYVAULT", raising=False)
    for key, value in zip(
        ("SUBSCRIPTION", "RESOURCEGROUP", "WORKSPACE_NAME"), (SUB, "rg", "ws"), strict=True
    ):
        monkeypatch.setenv(f"AZUREML_ARM_{key}", value)
    token = hf_token_from_key_vault()
    assert token == "hf_workspace_secret_4711"
    assert any(h == "kv.vault.azure.net" for _, h, _ in azure.requests)  # the vault the workspace names
    remember([token])  # as the entry does before the run starts
    print(f"loading with token {token}", file=RedactingStream(sys.stdout))
    assert token not in capsys.readouterr().out


def test_a_missing_data_file_is_named_before_any_job_is_written(tiny, tmp_path, capsys):
    path = write_azure_config(tmp_path, tiny, {})
    config = yaml.safe_load(path.read_text())
    config["data_configs"][0]["load_dataset_config"]["data_files"] = "gone.jsonl"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path), "--print-job", str(tmp_path / "job")]) == 2
    assert f"data file not found: {tmp_path / 'gone.jsonl'}" in capsys.readouterr().err
    assert not (tmp_path / "job").exists() and not list(tmp_path.glob(".job.*"))
