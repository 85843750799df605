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

import logging
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


def _workspace(resource: Any, client_config: Any) -> Any:
    """The azureml_client of a workspace model (its own, else the config's), with the keys a lookup needs."""
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
    return client


def _client(resource: Any, client_config: Any) -> tuple[Any, Any]:
    try:
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise UserError(
            f"{describe(resource)}: reading Azure ML models needs azure-ai-ml ({_INSTALL})"
        ) from None
    # each credential it tries logs its failure at WARNING; the error raised says what to do
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    credential = DefaultAzureCredential()
    if resource.type == "azureml_registry_model":
        return MLClient(credential, registry_name=resource.registry_name), credential
    client = _workspace(resource, client_config)
    return (
        MLClient(credential, client.subscription_id, client.resource_group, client.workspace_name),
        credential,
    )


def storage_location(resource: Any, client_config: Any = None) -> StorageLocation:
    """Where Azure ML keeps the model's files, found as azure-ai-ml's own `models.download` finds them: the
    model's asset URI, then the registry's storage SAS (or storage account) or the workspace datastore's
    account and credential. The one call to Azure ML; tests replace it."""
    from azure.ai.ml._utils._storage_utils import get_ds_name_and_path_prefix

    ml_client, credential = _client(resource, client_config)
    models = ml_client.models
    model = models.get(resource.name, version=str(resource.version))
    registry = resource.registry_name if resource.type == "azureml_registry_model" else None
    datastore, prefix = get_ds_name_and_path_prefix(model.path, registry)
    if registry:
        from azure.ai.ml._utils._registry_utils import get_storage_details_for_registry_assets
        from azure.ai.ml.constants._common import AzureMLResourceType

        url, auth = get_storage_details_for_registry_assets(
            service_client=models._registry_service_client,
            asset_name=resource.name,
            asset_version=str(resource.version),
            reg_name=registry,
            asset_type=AzureMLResourceType.MODEL,
            rg_name=models._resource_group_name,
            uri=model.path,
        )
        parts = urlsplit(url)
        container = parts.path.strip("/").split("/")[0]
        query = f"?{parts.query}" if auth == "SAS" and parts.query else ""
        return StorageLocation(
            f"{parts.scheme}://{parts.netloc}/{container}{query}", prefix, None if query else credential
        )
    store = ml_client.datastores.get(datastore, include_secrets=True)
    key = getattr(store.credentials, "account_key", None)
    secret = {"account_name": store.account_name, "account_key": key} if key else None
    secret = secret or getattr(store.credentials, "sas_token", None)  # a SAS token string, or None
    url = f"https://{store.account_name}.blob.{store.endpoint}/{store.container_name}"
    return StorageLocation(url, prefix, secret or credential)


def _located(resource: Any, client_config: Any) -> StorageLocation:
    """storage_location, with Azure's errors as user errors naming the resource."""
    try:
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
        )
    except ImportError:
        raise UserError(
            f"{describe(resource)}: reading Azure ML models needs azure-ai-ml ({_INSTALL})"
        ) from None
    if resource.type == "azureml_model":
        _workspace(resource, client_config)  # said before any lookup
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
    except (
        HttpResponseError,
        ServiceRequestError,
        AzureError,
    ) as err:  # AzureError: azure-ai-ml's MlException
        raise UserError(f"{describe(resource)}: Azure ML answered: {_first_line(err)}") from None


def check_model(resource: Any, client_config: Any = None) -> None:
    """The model version exists and its files' location is known (nothing downloaded), unless it was
    downloaded before."""
    if not _download_folder(resource, client_config).is_dir():
        _located(resource, client_config)


def download_model(resource: Any, client_config: Any = None) -> Path:
    """The model's local folder, downloaded on first use."""
    final = _download_folder(resource, client_config)
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


def _download_folder(resource: Any, client_config: Any) -> Path:
    """Where a model version is downloaded: one folder per registry or workspace, name and version (a version's
    files never change, so a finished folder is never fetched again)."""
    from slimtune.models.store import models_dir

    if resource.type == "azureml_registry_model":
        scope = f"registry-{resource.registry_name}"
    else:
        scope = f"workspace-{_workspace(resource, client_config).workspace_name}"
    return models_dir() / "azureml" / _safe(scope) / _safe(resource.name) / _safe(str(resource.version))


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
