"""Azure ML models (azureml_registry_model, azureml_model), as the source document names its Phi-3: the model's
files are real blobs in Azurite (tests/servers.py), an MLflow folder written by mlflow from a tiny model, read by
azure-storage-blob. No Azure ML service runs here, so the one SDK call that says where a model version's files
are (`slimtune.models.azureml.storage_location`, azure-ai-ml's `MLClient(...).models.get`) is replaced by a
function that answers for the versions this registry holds, and raises what azure-ai-ml raises for the others."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError
from workflows import emotion_data_config, run_config, short_lora

from slimtune.cli.main import main
from slimtune.config.load import load_config
from slimtune.engine.chain import input_model
from slimtune.models import azureml
from slimtune.models.loading import resolve_model
from tests.servers import AZURITE_ACCOUNT as ACCOUNT
from tests.servers import AZURITE_KEY as KEY
from tests.servers import Server, azurite_server
from tests.tiny_models import make_mlflow_model, make_tiny_model

CONTAINER = "registry-assets"
PREFIX = "3f2b9c1e-tiny-phi/versions/11"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    """Azurite holding the MLflow folder of a tiny model under PREFIX/mlflow_model_folder/, as a registry does."""
    from azure.storage.blob import BlobServiceClient

    root = tmp_path_factory.mktemp("azureml")
    model = make_mlflow_model(make_tiny_model("llama", root / "tiny"), root / "mlflow_model_folder")
    with azurite_server() as server:
        service = BlobServiceClient.from_connection_string(server.env["AZURE_STORAGE_CONNECTION_STRING"])
        container = service.create_container(CONTAINER)
        for file in sorted(p for p in model.rglob("*") if p.is_file()):
            name = f"{PREFIX}/mlflow_model_folder/{file.relative_to(model).as_posix()}"
            container.upload_blob(name, file.read_bytes())
        yield server


def sas(server: Server, permission: str = "rl", key: str = KEY) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        ACCOUNT,
        CONTAINER,
        account_key=key,
        permission=ContainerSasPermissions.from_string(permission),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )


class Registry:
    """The replaced Azure ML lookup: answers for model `tiny-phi` version 11 of registry `azureml-test` (and of
    workspace `ws`) with a read-only SAS URL into Azurite, as registries hand out; raises what azure-ai-ml raises
    (ResourceNotFoundError) for any other model, version, registry or workspace."""

    def __init__(self, server: Server) -> None:
        self.server, self.sas, self.calls = server, sas(server), []

    def __call__(self, resource, client_config=None) -> azureml.StorageLocation:
        self.calls.append((resource.type, resource.name, str(resource.version)))
        scope_ok = (
            resource.registry_name == "azureml-test"
            if resource.type == "azureml_registry_model"
            else (resource.azureml_client or client_config).workspace_name == "ws"
        )
        if not scope_ok or resource.name != "tiny-phi" or str(resource.version) != "11":
            raise ResourceNotFoundError(f"Model {resource.name}:{resource.version} not found")
        return azureml.StorageLocation(f"{self.server.url}/{ACCOUNT}/{CONTAINER}?{self.sas}", PREFIX)


@pytest.fixture
def registry(azurite, monkeypatch, tmp_path) -> Registry:
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "home"))
    lookup = Registry(azurite)
    monkeypatch.setattr(azureml, "storage_location", lookup)
    return lookup


def config(model_path, **extra) -> dict:
    return {
        "input_model": {"type": "HfModel", "model_path": model_path, "model_file_format": "PyTorch.MLflow"},
        "data_configs": [emotion_data_config(40)],
        "passes": {"lora": short_lora()},
        "cache_dir": "cache",
        "output_dir": "out",
        **extra,
    }


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


REGISTRY_MODEL = {
    "type": "azureml_registry_model",
    "config": {"name": "tiny-phi", "registry_name": "azureml-test", "version": "11"},  # the seed's form
}
DOWNLOADS = Path("home", "models", "azureml")


def test_a_registry_model_downloads_and_fine_tunes(azurite, registry, tmp_path):
    record = run_config(tmp_path, config(REGISTRY_MODEL))
    download = tmp_path / DOWNLOADS / "registry-azureml-test" / "tiny-phi" / "11"
    assert (download / "mlflow_model_folder" / "MLmodel").is_file()
    assert (download / "mlflow_model_folder" / "model" / "model.safetensors").is_file()
    assert record["passes"][0]["metrics"]["train_loss"] > 0
    assert ("azureml_registry_model", "tiny-phi", "11") in registry.calls

    registry.sas = sas(
        azurite, key="QmFkS2V5" * 11
    )  # a download now would fail: the version is not fetched again
    folder = resolve_model(load_config(write(tmp_path, config(REGISTRY_MODEL))).config.input_model.model_path)
    assert folder == Path(record["stages"][0]["path"])


def test_a_workspace_model_with_the_configs_client(registry, tmp_path, capsys):
    model = {"type": "azureml_model", "name": "tiny-phi", "version": 11}
    client = {"subscription_id": "sub", "resource_group": "rg", "workspace_name": "ws"}
    path = write(tmp_path, config(model, azureml_client=client))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert ("azureml_model", "tiny-phi", "11") in registry.calls  # validate looked it up, downloading nothing
    assert not (tmp_path / DOWNLOADS).exists()
    folder = Path(input_model(load_config(path)).path)
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert (tmp_path / DOWNLOADS / "workspace-ws" / "tiny-phi" / "11" / "mlflow_model_folder").is_dir()


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (
            {
                "type": "azureml_registry_model",
                "name": "tiny-phi",
                "registry_name": "azureml-test",
                "version": 12,
            },
            "model 'tiny-phi' version 12 in Azure ML registry 'azureml-test' does not exist",
        ),
        (
            {"type": "azureml_registry_model", "name": "tiny-phi", "registry_name": "no-such", "version": 11},
            "model 'tiny-phi' version 11 in Azure ML registry 'no-such' does not exist",
        ),
        (
            {"type": "azureml_model", "name": "tiny-phi", "version": 11},
            "azureml_client needs subscription_id, resource_group, workspace_name",
        ),
    ],
)
def test_a_missing_version_registry_or_workspace_is_named(registry, tmp_path, capsys, model, named):
    assert main(["run", "--config", str(write(tmp_path, config(model)))]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / DOWNLOADS).exists()


def test_storage_that_refuses_the_token_is_named_without_it(azurite, registry, tmp_path, capsys):
    registry.sas = sas(azurite, key="QmFkS2V5" * 11)  # signed with the wrong account key
    assert main(["run", "--config", str(write(tmp_path, config(REGISTRY_MODEL)))]) == 2
    err = capsys.readouterr().err
    assert "model 'tiny-phi' version 11 in Azure ML registry 'azureml-test'" in err and "Traceback" not in err
    assert registry.sas.split("sig=")[1][:12] not in err  # the SAS signature is a secret
    assert not (tmp_path / DOWNLOADS / "registry-azureml-test" / "tiny-phi" / "11").exists()
    assert not (tmp_path / "out").exists()
