"""Azure ML models: `azureml_registry_model` (name, registry_name, version) and `azureml_model` (a workspace's
model), downloaded with azure-ai-ml and azure-storage-blob.

Two steps. `storage_location` asks Azure ML (azure-ai-ml's `MLClient(...).models.get`) where the model's files
are: a Blob Storage folder URL. `download_model` then reads every blob under it with azure-storage-blob into
`$SLIMTUNE_HOME/models/azureml/<registry or workspace>/<name>/<version>/` (written to a temporary folder and
renamed when complete, so an interrupted download is never taken for a model; a finished one is not fetched
again: a registry version is immutable). Registry models are MLflow folders; `loading.resolve_model` reads the
Hugging Face folder inside.

Credentials: `DefaultAzureCredential` (environment, managed identity, Azure CLI login ...) for Azure ML; for
the storage read the same credential, or a SAS token in the location's URL, or `AZURE_STORAGE_CONNECTION_STRING`.
Tests replace `storage_location` only (no Azure ML service runs here); the blob reads are real, against Azurite.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slimtune.errors import ModelError, UserError

_INSTALL = "pip install azure-ai-ml azure-identity azure-storage-blob"


@dataclass(frozen=True)
class StorageLocation:
    """A folder in Blob Storage: the container's URL (a SAS token in its query when the service gave one), the
    blob name prefix of the model's files, and the credential to read it with (None: the URL's SAS token, or
    AZURE_STORAGE_CONNECTION_STRING)."""

    container_url: str
    prefix: str
    credential: Any = None


def describe(resource: Any) -> str:
    """`name` version N in registry R / in workspace W: the resource as the user wrote it."""
    if resource.type == "azureml_registry_model":
        return f"model {resource.name!r} version {resource.version} in Azure ML registry {resource.registry_name!r}"
    client = resource.azureml_client
    workspace = client.workspace_name if client else None
    return f"model {resource.name!r} version {resource.version} in Azure ML workspace {workspace!r}"


def _client(resource: Any, client_config: Any) -> Any:
    try:
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise UserError(
            f"{describe(resource)}: reading Azure ML models needs azure-ai-ml ({_INSTALL})"
        ) from None
    credential = DefaultAzureCredential()
    if resource.type == "azureml_registry_model":
        return MLClient(credential, registry_name=resource.registry_name), credential
    client = resource.azureml_client or client_config
    missing = [
        key
        for key in ("subscription_id", "resource_group", "workspace_name")
        if not getattr(client, key, None)
    ]
    if missing:
        raise UserError(
            f"{describe(resource)}: azureml_client needs {', '.join(missing)} (in the model's azureml_client or "
            "the config's top-level azureml_client)"
        )
    return (
        MLClient(credential, client.subscription_id, client.resource_group, client.workspace_name),
        credential,
    )


def storage_location(resource: Any, client_config: Any = None) -> StorageLocation:
    """Where Azure ML keeps the model's files (the SDK call; replaced in tests)."""
    ml_client, credential = _client(resource, client_config)
    model = ml_client.models.get(resource.name, version=str(resource.version))
    parts = urlsplit(model.path)
    if parts.scheme != "https" or ".blob." not in parts.netloc:
        raise UserError(
            f"{describe(resource)}: its files are at {model.path}, which slimtune cannot read (a Blob Storage "
            "https URL is expected)"
        )
    container, _, prefix = parts.path.lstrip("/").partition("/")
    return StorageLocation(f"https://{parts.netloc}/{container}", prefix, credential)


def _located(resource: Any, client_config: Any) -> StorageLocation:
    """storage_location, with Azure's errors as user errors naming the resource."""
    try:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
        )
    except ImportError:
        raise UserError(
            f"{describe(resource)}: reading Azure ML models needs azure-ai-ml ({_INSTALL})"
        ) from None
    try:
        return storage_location(resource, client_config)
    except ResourceNotFoundError:
        where = (
            f"registry {resource.registry_name!r}"
            if resource.type == "azureml_registry_model"
            else "the workspace"
        )
        raise UserError(
            f"{describe(resource)} does not exist: check the name and version (the versions are listed in "
            f"{where}), and that the registry or workspace exists"
        ) from None
    except ClientAuthenticationError as err:
        raise UserError(
            f"{describe(resource)}: no Azure credential could sign in (DefaultAzureCredential: "
            f"{_first_line(err)}); run `az login` or set AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET"
        ) from None
    except (HttpResponseError, ServiceRequestError) as err:
        raise UserError(f"{describe(resource)}: Azure ML answered: {_first_line(err)}") from None


def check_model(resource: Any, client_config: Any = None) -> None:
    """The model version exists and its files' location is known (nothing downloaded)."""
    _located(resource, client_config)


def download_model(resource: Any, client_config: Any = None) -> Path:
    """The model's local folder, downloaded on first use."""
    from slimtune.models.store import models_dir

    if resource.type == "azureml_registry_model":
        scope = f"registry-{resource.registry_name}"
    else:
        client = resource.azureml_client or client_config
        scope = f"workspace-{getattr(client, 'workspace_name', None)}"
    final = models_dir() / "azureml" / scope / _safe(resource.name) / _safe(str(resource.version))
    if final.is_dir():
        return final
    location = _located(resource, client_config)
    partial = final.parent / f".partial-{final.name}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        count = _download_blobs(location, partial, describe(resource))
        if count == 0:
            raise ModelError(f"{describe(resource)}: no files under {_public(location)}")
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _download_blobs(location: StorageLocation, target: Path, what: str) -> int:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
    from azure.storage.blob import ContainerClient

    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if location.credential is None and connection and "?" not in location.container_url:
        container_name = urlsplit(location.container_url).path.strip("/").split("/")[-1]
        container = ContainerClient.from_connection_string(connection, container_name)
    else:
        container = ContainerClient.from_container_url(location.container_url, credential=location.credential)
    prefix = location.prefix.rstrip("/") + "/" if location.prefix else ""
    count = 0
    try:
        for blob in container.list_blobs(name_starts_with=prefix):
            relative = blob.name[len(prefix) :]
            if not relative or relative.endswith("/"):
                continue
            path = target / relative
            if target.resolve() not in path.resolve().parents:
                raise ModelError(f"{what}: blob {blob.name!r} would be written outside the model folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                container.download_blob(blob.name).readinto(handle)
            count += 1
    except ResourceNotFoundError:
        raise UserError(f"{what}: the storage container {_public(location)} does not exist") from None
    except ClientAuthenticationError as err:
        raise UserError(f"{what}: the storage refused the credential ({_first_line(err)})") from None
    except HttpResponseError as err:
        raise UserError(f"{what}: reading {_public(location)} failed ({_first_line(err)})") from None
    return count


def _public(location: StorageLocation) -> str:
    """The location without its query (a SAS token is a secret)."""
    return f"{location.container_url.split('?')[0]}/{location.prefix}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
