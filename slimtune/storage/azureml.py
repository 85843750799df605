"""Azure ML datastore URIs and job outputs, resolved to the storage account they live in.

  azureml://subscriptions/<s>/resourcegroups/<g>/workspaces/<w>/datastores/<d>/paths/<p>   (long form)
  azureml://datastores/<d>/paths/<p>          (short form: the workspace from the config's azureml_client)
  azureml://jobs/<job>/outputs/<output>/paths/<p>                                          (a job's output)

The workspace is asked once per datastore (`lookup_datastore`: `MLClient.datastores.get`, with secrets) for the
account, container, endpoint and credential; the reads then go to the storage account directly (adlfs). A
datastore with no stored credential (identity-based) is read with DefaultAzureCredential.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any

from slimtune.redact import remember
from slimtune.storage.base import StorageError, quiet_sdk_logs

_LONG = re.compile(
    r"^azureml://subscriptions/(?P<subscription_id>[^/]+)/resource[gG]roups/(?P<resource_group>[^/]+)/"
    r"(?:providers/Microsoft\.MachineLearningServices/)?workspaces/(?P<workspace_name>[^/]+)/"
    r"datastores/(?P<datastore>[^/]+)/paths/(?P<path>.*)$",
    re.IGNORECASE,
)
_SHORT = re.compile(r"^azureml://datastores/(?P<datastore>[^/]+)/paths/(?P<path>.*)$", re.IGNORECASE)
_JOB = re.compile(r"^azureml://jobs/(?P<job>[^/]+)/outputs/(?P<output>[^/]+)(?:/paths/(?P<path>.*))?$", re.I)
WORKSPACE_KEYS = ("subscription_id", "resource_group", "workspace_name")


def datastore_uri(datastore: str, path: str, client: dict | None) -> str:
    """The long-form URI of a datastore path (the short form when the workspace is not known)."""
    path = path.lstrip("/")
    if client and all(client.get(k) for k in WORKSPACE_KEYS):
        return (
            f"azureml://subscriptions/{client['subscription_id']}/resourcegroups/{client['resource_group']}/"
            f"workspaces/{client['workspace_name']}/datastores/{datastore}/paths/{path}"
        )
    return f"azureml://datastores/{datastore}/paths/{path}"


def job_output_uri(job_name: str, output_name: str, relative_path: str = "") -> str:
    return f"azureml://jobs/{job_name}/outputs/{output_name}/paths/{relative_path.lstrip('/')}"


def resource_uri(resource: Any, client: dict | None = None) -> tuple[str, dict | None]:
    """(URI, azureml_client) of an `azureml_datastore` or `azureml_job_output` resource (a dict or the
    validated model); the resource's own azureml_client wins over `client` (the config's)."""
    data = resource.model_dump() if hasattr(resource, "model_dump") else dict(resource)
    own = data.get("azureml_client") or {}
    merged = {**(client or {}), **{k: v for k, v in own.items() if v is not None}} or None
    if data.get("type") == "azureml_job_output":
        return job_output_uri(data["job_name"], data["output_name"], data.get("relative_path") or ""), merged
    return datastore_uri(data["datastore_name"], data["relative_path"], merged), merged


def datastore_url(url: str, options: dict) -> tuple[str, dict[str, Any]]:
    """(abfs URL, storage options with the datastore's credential) for an azureml:// URI."""
    client = dict(options.pop("azureml_client", None) or {})
    job = _JOB.match(url)
    if job:
        _need_workspace(url, client)
        url = lookup_job_output(client, job["job"], job["output"]).rstrip("/") + "/" + (job["path"] or "")
        if not url.startswith("azureml://"):
            return url, {}
    match = _LONG.match(url) or _SHORT.match(url)
    if match is None:
        raise StorageError(
            url,
            "not an Azure ML datastore URI; write azureml://datastores/<name>/paths/<path> (workspace from "
            "azureml_client) or azureml://subscriptions/<s>/resourcegroups/<g>/workspaces/<w>/datastores/"
            "<name>/paths/<path>",
        )
    parts = match.groupdict()
    client.update({k: parts[k] for k in WORKSPACE_KEYS if parts.get(k)})
    _need_workspace(url, client)
    store = _datastore(url, client, parts["datastore"])
    return _storage_of(url, store, parts["path"])


def _need_workspace(url: str, client: dict) -> None:
    missing = [k for k in WORKSPACE_KEYS if not client.get(k)]
    if missing:
        raise StorageError(
            url,
            f"the workspace is not known: set azureml_client ({', '.join(missing)}) in the config, or use the "
            "long form azureml://subscriptions/<s>/resourcegroups/<g>/workspaces/<w>/datastores/...",
        )


def _datastore(url: str, client: dict, name: str) -> Any:
    try:
        return _cached_lookup(tuple(sorted((k, str(v)) for k, v in client.items() if v is not None)), name)
    except StorageError:
        raise
    except ImportError as err:
        raise StorageError(
            url, f"Azure ML datastores need the cloud extra: pip install 'slimtune[cloud]' ({err})"
        ) from None
    except Exception as err:  # noqa: BLE001 - the SDK's many error types, named for the user
        workspace = f"{client['workspace_name']} (resource group {client['resource_group']})"
        names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
        if "ClientAuthenticationError" in names or "CredentialUnavailableError" in names:
            raise _unreachable(
                StorageError(
                    url,
                    f"cannot sign in to Azure to read datastore {name!r} of workspace {workspace}: "
                    "DefaultAzureCredential found no credential (run `az login`, or set AZURE_CLIENT_ID, "
                    "AZURE_TENANT_ID and AZURE_CLIENT_SECRET)",
                )
            ) from None
        if "ResourceNotFoundError" in names or getattr(err, "status_code", None) == 404:
            raise StorageError(
                url,
                f"datastore {name!r} does not exist in workspace {workspace}; `az ml datastore list` shows them",
            ) from None
        raise _unreachable(
            StorageError(url, f"looking up datastore {name!r} in workspace {workspace} failed: {err}")
        ) from None


def _unreachable(error: StorageError) -> StorageError:
    """The workspace could not be asked (no sign-in, no network): a copy fetched before may stand in."""
    error.unreachable = True
    return error


@lru_cache(maxsize=64)
def _cached_lookup(client_items: tuple, name: str) -> Any:
    return lookup_datastore(dict(client_items), name)


def lookup_datastore(client: dict, name: str) -> Any:
    """The datastore `name` of the workspace `client` names, with its credential (azure-ai-ml's
    `MLClient.datastores.get`). The one call to the Azure ML workspace API for data (tests replace it)."""
    return _ml_client(client).datastores.get(name, include_secrets=True)


def lookup_job_output(client: dict, job_name: str, output_name: str) -> str:
    """Where a job's named output was written: its `path` when the job set one, else Azure ML's default
    place for outputs (`azureml://datastores/workspaceblobstore/paths/azureml/<job>/<output>/`)."""
    job = _ml_client(client).jobs.get(job_name)
    output = (getattr(job, "outputs", None) or {}).get(output_name)
    path = getattr(output, "path", None)
    if path and str(path).startswith(("azureml://datastores", "azureml://subscriptions", "abfs", "https")):
        return str(path)
    return datastore_uri("workspaceblobstore", f"azureml/{job_name}/{output_name}", client)


def _ml_client(client: dict) -> Any:
    import warnings

    with warnings.catch_warnings():
        # azure-ai-ml 1.35's own schemas, at import, under marshmallow 4: nothing slimtune passes causes it
        warnings.filterwarnings("ignore", message=r"`Number` field should not be instantiated\.")
        from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    quiet_sdk_logs()
    return MLClient(
        DefaultAzureCredential(**(client.get("default_auth_params") or {})),
        subscription_id=client["subscription_id"],
        resource_group_name=client["resource_group"],
        workspace_name=client["workspace_name"],
    )


def _storage_of(url: str, store: Any, path: str) -> tuple[str, dict[str, Any]]:
    """The abfs URL and options that read `path` of the datastore `store` (an azure-ai-ml Datastore)."""
    kind = type(store).__name__
    account = getattr(store, "account_name", None)
    container = getattr(store, "container_name", None) or getattr(store, "filesystem", None)
    if not account or not container:
        raise StorageError(
            url, f"datastore {store.name!r} is a {kind}; slimtune reads Blob and ADLS Gen2 datastores"
        )
    protocol = getattr(store, "protocol", None) or "https"
    endpoint = getattr(store, "endpoint", None) or "core.windows.net"
    if _emulator(endpoint):  # Azurite and other emulators: the account is the first path segment
        blob_endpoint = f"{protocol}://{endpoint}/{account}"
    else:
        blob_endpoint = f"{protocol}://{account}.blob.{endpoint}"
    credentials = getattr(store, "credentials", None)
    label = f"datastore {store.name!r}'s"
    options: dict[str, Any] = {}
    account_key = getattr(credentials, "account_key", None)
    sas_token = getattr(credentials, "sas_token", None)
    if account_key:
        options["connection_string"] = (
            f"DefaultEndpointsProtocol={protocol};AccountName={account};AccountKey={account_key};"
            f"BlobEndpoint={blob_endpoint};"
        )
        options["_credential"] = f"{label} account key"
        remember([account_key])
    elif sas_token:
        options["connection_string"] = (
            f"BlobEndpoint={blob_endpoint};SharedAccessSignature={sas_token.lstrip('?')}"
        )
        options["_credential"] = f"{label} SAS token"
        remember([sas_token, sas_token.lstrip("?")])
    elif getattr(credentials, "client_secret", None):
        options.update(
            account_name=account,
            account_host=blob_endpoint.split("://", 1)[1],
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            tenant_id=credentials.tenant_id,
            _credential=f"{label} service principal {credentials.client_id}",
        )
        remember([credentials.client_secret])
    else:
        options.update(
            account_name=account,
            account_host=blob_endpoint.split("://", 1)[1],
            _credential=f"DefaultAzureCredential (datastore {store.name!r} stores no credential)",
        )
    if "connection_string" in options:
        remember([options["connection_string"]])
    return f"abfs://{container}/{path.lstrip('/')}", options


def _emulator(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 else endpoint
    if host in ("localhost",) or ":" in endpoint:
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
