"""The fsspec filesystem for a storage URL, with credentials from the usual places only.

| scheme | filesystem | credentials, first found wins |
| --- | --- | --- |
| `http`, `https` | fsspec's HTTP (aiohttp) | a SAS token or signature in the URL's query; `storage_options.headers` |
| `s3` | s3fs | `storage_options` (`key`, `secret`, `token`, `profile`, `endpoint_url`); the `AWS_*` variables (with `AWS_ENDPOINT_URL[_S3]`) and profiles, as botocore finds them |
| `az`, `abfs`, `abfss` | adlfs | `storage_options` (`account_key`, `sas_token`, `connection_string`, `credential`); a SAS token in the URL's query; `AZURE_STORAGE_CONNECTION_STRING` (when it is for the URL's account); `AZURE_STORAGE_ACCOUNT_KEY` / `AZURE_STORAGE_SAS_TOKEN`; otherwise `DefaultAzureCredential` for the URL's account |
| `azureml` | the datastore's storage (slimtune/storage/azureml.py) | the datastore's own credential, else as for `abfs` |

The account of an `az://container/path` URL comes from `storage_options.account_name`, the connection string or
`AZURE_STORAGE_ACCOUNT_NAME`; `abfs[s]://container@account.dfs.core.windows.net/path` names it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from slimtune.redact import remember, secret_values
from slimtune.storage.base import REMOTE_SCHEMES, StorageError, is_remote_url, quiet_sdk_logs, scheme_of

__all__ = ["REMOTE_SCHEMES", "StorageError", "is_remote_url", "open_filesystem"]

if TYPE_CHECKING:
    import fsspec

AZURE_SCHEMES = ("az", "abfs", "abfss")


@dataclass
class Connection:
    """How one URL is reached: the fsspec protocol, its constructor options, the path inside it, and which kind
    of credential was chosen (said in errors: "403 with the account key from AZURE_STORAGE_CONNECTION_STRING")."""

    protocol: str
    options: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    credential: str = "no credential (anonymous)"
    endpoint: str = ""  # the service's URL (scheme://host[:port]): named when it cannot be reached

    def address(self) -> tuple[str, int] | None:
        """(host, port) of the endpoint, for a quick check that something listens there."""
        parts = urlsplit(self.endpoint)
        if not parts.hostname:
            return None
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def open_filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a storage URL. Raises StorageError when the URL cannot be reached with
    any credential slimtune may use (the message says which places were looked at)."""
    connection = connect(url, storage_options)
    return filesystem(connection, url), connection.path


def filesystem(connection: Connection, url: str) -> fsspec.AbstractFileSystem:
    import fsspec

    quiet_sdk_logs()
    try:
        fs = fsspec.filesystem(connection.protocol, skip_instance_cache=True, **connection.options)
        if (
            connection.protocol == "abfs"
            and "connection_string" not in connection.options
            and fs.connection_string
        ):
            # adlfs falls back to AZURE_STORAGE_CONNECTION_STRING on its own, even for another account
            fs.connection_string = None
            fs.do_connect()
        return fs
    except ImportError as err:
        raise StorageError(
            url,
            f"reading {connection.protocol}:// needs the cloud extra: pip install 'slimtune[cloud]' ({err})",
        ) from None
    except ValueError as err:
        raise StorageError(url, f"cannot connect with {connection.credential}: {err}") from None


def connect(url: str, storage_options: dict | None = None) -> Connection:
    """The filesystem protocol, options and path for `url` (no network)."""
    options = dict(storage_options or {})
    remember(secret_values(options))  # also the values of credential headers (storage_options.headers)
    scheme = scheme_of(url)
    if scheme in ("http", "https"):
        return _http(url, options)
    if scheme == "s3":
        return _s3(url, options)
    if scheme in AZURE_SCHEMES:
        return _azure(url, options)
    if scheme == "azureml":
        from slimtune.storage.azureml import datastore_url

        resolved, extra = datastore_url(url, options)
        return connect(resolved, {**options, **extra})
    raise StorageError(url, f"unknown storage scheme {scheme!r}; slimtune reads {', '.join(REMOTE_SCHEMES)}")


def _http(url: str, options: dict) -> Connection:
    query = dict(parse_qsl(urlsplit(url).query))
    if "sig" in query:
        remember([query["sig"]])
    kind = "the SAS token in the URL" if "sig" in query else "no credential (public URL)"
    if options.get("headers"):
        kind = "the headers in storage_options"
    options.setdefault("client_kwargs", {}).setdefault("trust_env", True)  # proxies from the environment
    parts = urlsplit(url)
    endpoint = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    return Connection("http", options, url, kind, endpoint)


def _s3(url: str, options: dict) -> Connection:
    parts = urlsplit(url)
    if not parts.netloc:
        raise StorageError(url, "an s3 URL names a bucket: s3://bucket/key")
    endpoint = (
        options.pop("endpoint_url", None)
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        options.setdefault("client_kwargs", {}).setdefault("endpoint_url", endpoint)
    if options.get("key"):
        kind = "the key in storage_options"
    elif options.get("profile"):
        kind = f"the AWS profile {options['profile']!r} from storage_options"
    elif options.get("anon"):
        kind = "no credential (anon)"
    elif os.environ.get("AWS_ACCESS_KEY_ID"):
        kind = "the key in AWS_ACCESS_KEY_ID"
    elif os.environ.get("AWS_PROFILE"):
        kind = f"the AWS profile {os.environ['AWS_PROFILE']!r} (AWS_PROFILE)"
    else:
        kind = "the default AWS credential chain (profiles, instance role)"
    service = endpoint or "https://s3.amazonaws.com"
    return Connection("s3", options, _s3_path(url, parts, options), kind, service)


VERSION_QUERY = "?versionId="  # an s3 path's version pin (s3fs reads it once the filesystem is version-aware)


def is_pattern(path: str) -> bool:
    """Whether a filesystem path from `connect` is a glob; an s3 version pin's `?` is a query, not a pattern."""
    return any(ch in path.split(VERSION_QUERY, 1)[0] for ch in "*?[")


def _s3_path(url: str, parts: Any, options: dict) -> str:
    """bucket/key, with `?versionId=ID` kept (s3fs reads that version once the filesystem is version-aware);
    any other query is refused rather than dropped: a version pin that is not read would read another object."""
    query = parse_qsl(parts.query, keep_blank_values=True)
    others = sorted({k for k, _ in query} - {"versionId"})
    if others:
        raise StorageError(
            url, f"an s3 URL takes one query parameter, versionId; {', '.join(others)} is not read"
        )
    path = f"{parts.netloc}{parts.path}"
    version = dict(query).get("versionId")
    if version is None:
        return path
    if not version or path.endswith("/") or is_pattern(path):
        raise StorageError(
            url, "?versionId=ID names one version of one object: give its key, not a folder or pattern"
        )
    options["version_aware"] = True
    return f"{path}{VERSION_QUERY}{version}"


def _azure(url: str, options: dict) -> Connection:
    label = options.pop("_credential", None)  # said by the caller (an Azure ML datastore's credential)
    parts = urlsplit(url)
    container, _, host = parts.netloc.partition("@")
    if not container:
        raise StorageError(url, "an az/abfs URL names a container: az://container/path")
    account = options.get("account_name")
    if host:
        account = account or host.split(".", 1)[0]
        blob_host = host.replace(".dfs.", ".blob.")
        if "." in host and not blob_host.endswith(
            ".blob.core.windows.net"
        ):  # a sovereign cloud, a private host
            options.setdefault("account_host", blob_host)
    query = dict(parse_qsl(parts.query))
    if "sig" in query and not options.get("sas_token"):
        options["sas_token"] = parts.query
        remember([query["sig"], parts.query])
    connection_string = options.get("connection_string") or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    string_account = _connection_string_account(connection_string) if connection_string else None
    credential_given = any(options.get(k) for k in ("account_key", "sas_token", "credential"))
    if not (connection_string and (account is None or string_account in (None, account))) or credential_given:
        options.pop("connection_string", None)
    if credential_given:
        kind = next(
            said
            for key, said in (
                ("sas_token", "a SAS token" + (" in the URL" if "sig" in query else " from storage_options")),
                ("account_key", "the account key in storage_options"),
                ("credential", "the credential in storage_options"),
            )
            if options.get(key)
        )
    elif connection_string and (account is None or string_account in (None, account)):
        from_options = bool(options.get("connection_string"))
        options["connection_string"] = connection_string
        account = account or string_account
        kind = "the connection string from " + (
            "storage_options" if from_options else "AZURE_STORAGE_CONNECTION_STRING"
        )
        if string_account:
            kind += f" (account {string_account})"
    elif os.environ.get("AZURE_STORAGE_ACCOUNT_KEY") or os.environ.get("AZURE_STORAGE_SAS_TOKEN"):
        kind = (
            "the key in AZURE_STORAGE_ACCOUNT_KEY"
            if os.environ.get("AZURE_STORAGE_ACCOUNT_KEY")
            else "the SAS token in AZURE_STORAGE_SAS_TOKEN"
        )
    else:
        account = account or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        if not account:
            raise StorageError(
                url,
                "no storage account: name it in the URL (abfs://container@ACCOUNT.dfs.core.windows.net/path), "
                "in storage_options.account_name or AZURE_STORAGE_ACCOUNT_NAME, or set "
                "AZURE_STORAGE_CONNECTION_STRING",
            )
        kind = f"DefaultAzureCredential (Azure sign-in) for account {account}"
    if account and "connection_string" not in options:
        options["account_name"] = account
    path = f"{container}{parts.path}"
    return Connection("abfs", options, path, label or kind, _blob_endpoint(options, account))


def _blob_endpoint(options: dict, account: str | None) -> str:
    if options.get("connection_string"):
        fields = dict(p.split("=", 1) for p in options["connection_string"].split(";") if "=" in p)
        if fields.get("BlobEndpoint"):
            return fields["BlobEndpoint"]
        suffix = fields.get("EndpointSuffix", "core.windows.net")
        return (
            f"{fields.get('DefaultEndpointsProtocol', 'https')}://{fields.get('AccountName')}.blob.{suffix}"
        )
    if options.get("account_host"):
        return f"https://{options['account_host']}"
    return f"https://{account}.blob.core.windows.net" if account else ""


def _connection_string_account(value: str) -> str | None:
    fields = dict(part.split("=", 1) for part in value.split(";") if "=" in part)
    return fields.get("AccountName")
