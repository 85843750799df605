"""A storage library's exception as a StorageError that names the resource and says what to do.

fsspec's backends raise different types for the same problem (aiohttp, botocore, azure-core), so the kind is
found by walking the exception chain: unknown host, refused connection, 401/403 (with the credential that was
used), 404, anything else with its own message.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path, PurePosixPath
from typing import Any

from slimtune.storage.base import StorageError
from slimtune.storage.fs import Connection, filesystem

_LACKS = {
    "s3": "read access to the object (s3:GetObject) and, for folders and globs, s3:ListBucket",
    "abfs": "read access to the container (the 'Storage Blob Data Reader' role, or a SAS token with r and l)",
    "http": "access to this URL (a valid, unexpired token)",
}


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _status(errors: list[BaseException]) -> int | None:
    for e in errors:
        for attr in ("status_code", "status"):
            value = getattr(e, attr, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
            error_code = str(response.get("Error", {}).get("Code", ""))
            if error_code.isdigit():
                return int(error_code)
    return None


def storage_error(
    err: BaseException, url: str, connection: Connection | None, partial: Path | None = None
) -> StorageError:
    """`err` as a StorageError naming `url`; `.unreachable` says whether a cached copy may stand in."""
    if isinstance(err, StorageError):
        return err
    errors = _chain(err)
    text = " | ".join(f"{type(e).__name__}: {e}" for e in errors)
    lowered = text.lower()
    status = _status(errors)
    host = _host(connection.endpoint if connection is not None and connection.endpoint else url)
    unreachable = False
    kept = f" ({partial.stat().st_size:,} bytes kept: the next run resumes)" if partial is not None else ""
    if any(isinstance(e, socket.gaierror) for e in errors) or any(
        s in lowered
        for s in (
            "name or service not known",
            "nodename nor servname",
            "temporary failure in name resolution",
            "getaddrinfo failed",
            "no address associated",
        )
    ):
        reason = f"unknown host {host}"
        message = f"{reason}: check the URL's host name and the network (DNS){kept}"
        unreachable = True
    elif (
        any(isinstance(e, ConnectionRefusedError) for e in errors)
        or "connection refused" in lowered
        or ("connect call failed" in lowered)
    ):
        reason = f"connection refused by {host}"
        message = f"{reason}: nothing listens there; check the endpoint and that the store is up{kept}"
        unreachable = True
    elif any(isinstance(e, ssl.SSLError) for e in errors) or "certificate verify failed" in lowered:
        reason = f"the TLS handshake with {host} failed"
        innermost = [e for e in errors if isinstance(e, ssl.SSLError)] or errors
        message = (
            f"{reason} ({_short(innermost[-1])}): an "
            "https:// URL for a server that speaks plain http, or a certificate this machine does not trust "
            f"(behind a TLS-inspecting proxy, point SSL_CERT_FILE, AWS_CA_BUNDLE or REQUESTS_CA_BUNDLE at its CA "
            f"bundle){kept}"
        )
        unreachable = True
    elif "nocredentialserror" in lowered or "unable to locate credentials" in lowered:
        reason = "no AWS credential found"
        message = (
            f"{reason}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE (a profile in ~/.aws), or "
            "key and secret in storage_options"
        )
    elif (
        status in (401, 403)
        or isinstance(err, PermissionError)
        or "authenticationfailed" in lowered
        or (
            "authorizationfailure" in lowered
            or "accessdenied" in lowered
            or "invalidaccesskeyid" in lowered
            or "signaturedoesnotmatch" in lowered
        )
    ):
        reason = f"access denied ({status or 403})"
        lacks = _LACKS.get(connection.protocol, "read access")
        message = (
            f"{reason} with {connection.credential}; it lacks {lacks}, or the key/token is wrong or expired"
        )
    elif status is not None and status >= 500:
        reason = f"server error ({status}) from {host}"
        message = f"{reason}: the store failed to answer; run again later{kept}"
        unreachable = True
    elif (
        status == 404
        or isinstance(err, FileNotFoundError)
        or "blobnotfound" in lowered
        or ("nosuchkey" in lowered or "containernotfound" in lowered or "nosuchbucket" in lowered)
    ):
        reason = "not found (404)"
        message = f"{reason}{_nearest_names(url, connection)}"
    elif (
        any(
            name in text
            for name in (
                "ClientPayloadError",
                "ContentLengthError",
                "ServerDisconnected",
                "ClientConnectionError",
            )
        )
        or any(isinstance(e, (ConnectionError, TimeoutError, OSError)) for e in errors)
        and (
            "connect" in lowered
            or "timeout" in lowered
            or "timed out" in lowered
            or "reset" in lowered
            or "disconnected" in lowered
            or "closed" in lowered
            or "payload" in lowered
        )
    ):
        reason = f"the connection to {host} failed"
        message = f"{reason} ({_short(errors[-1])}){kept}"
        unreachable = True
    else:
        reason = _short(errors[-1])
        message = f"{reason}{kept}"
    error = StorageError(url, message)
    error.unreachable = unreachable
    error.reason = reason
    return error


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    from slimtune.redact import redact_url

    parts = urlsplit(url)
    return redact_url(parts.netloc.rsplit("@", 1)[-1]) or url


def _nearest_names(url: str, connection: Connection | None) -> str:
    if connection is None or connection.protocol == "http":
        return ""
    try:
        fs = filesystem(connection, url)
    except StorageError:
        return ""
    return nearest_names(fs, connection.path, connection)


def nearest_names(fs: Any, path: str, connection: Connection) -> str:
    """'; nearest names in <folder>: a, b' when the folder can be listed (for a missing object)."""
    import difflib

    stem = path.split("*")[0].split("?")[0].split("[")[0]
    if stem != path:  # a glob: the folder its pattern is matched in, and the pattern
        cut = max(stem.rfind("/"), 0)
        parent, name = path[:cut], path[cut + 1 :]
    else:
        parent, _, name = stem.rstrip("/").rpartition("/")
    if not parent or connection.protocol == "http":
        return ""
    try:
        names = [PurePosixPath(p).name for p in fs.ls(parent, detail=False)]
    except Exception:  # noqa: BLE001 - listing not allowed or the folder is missing too
        return ""
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.3) or sorted(names)[:5]
    return f"; nearest names in that folder: {', '.join(near)}" if near else "; that folder is empty"


def check_reachable(connection: Connection, url: str, timeout: float = 10.0) -> None:
    """A quick TCP connect to the store's endpoint, so that an unknown host or a refused connection is said at
    once (the SDKs retry each for a minute or more). Skipped behind a proxy (the proxy reaches the host)."""
    import os

    address = connection.address()
    if address is None or any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
    ):
        return
    try:
        socket.create_connection(address, timeout=timeout).close()
    except OSError as err:
        error = storage_error(err, url, connection)
        if error.unreachable:  # unknown host, refused, timed out
            raise error from None
