"""Conditional writes on object storage: create an object only where none exists, replace or delete it only
while it is the version read. The shared cache's leases (engine/lease.py) are built on these.

| store | create if absent | replace / delete if unchanged |
| --- | --- | --- |
| S3 (s3fs) | PutObject `If-None-Match: *` | PutObject / DeleteObject `If-Match: <ETag>` |
| Azure Blob (adlfs) | Put Blob `If-None-Match: *` (`overwrite=False`) | `If-Match: <ETag>` (`MatchConditions.IfNotModified`) |

Both refuse a failed condition with 412 Precondition Failed (409 for an existing blob on Azure), which these
functions return as `None` / `False`; every other error is raised. The moto server and Azurite implement all of
them (tests/test_shared_cache.py runs against both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimtune.storage.fs import StorageError

S3_PROTOCOLS = ("s3", "s3a")
AZURE_PROTOCOLS = ("abfs", "az", "abfss")


@dataclass(frozen=True)
class Versioned:
    """An object's content and the version (ETag) it was read at."""

    data: bytes
    etag: str


def read(fs: Any, path: str) -> Versioned | None:
    """The object at `path` with its ETag, or None where there is none."""
    return _call(fs, "read", path)


def create(fs: Any, path: str, data: bytes) -> str | None:
    """Write `data` at `path` if no object is there; its ETag, or None when one exists already."""
    return _call(fs, "create", path, data)


def replace(fs: Any, path: str, data: bytes, etag: str) -> str | None:
    """Overwrite `path` if it is still the version `etag`; the new ETag, or None when it changed (or is gone)."""
    return _call(fs, "replace", path, data, etag)


def delete(fs: Any, path: str, etag: str) -> bool:
    """Delete `path` if it is still the version `etag`; False when it changed (or is gone)."""
    return _call(fs, "delete", path, etag)


def _call(fs: Any, operation: str, path: str, *args: Any) -> Any:
    from fsspec.asyn import sync

    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if set(protocols) & set(S3_PROTOCOLS):
        store = _S3
    elif set(protocols) & set(AZURE_PROTOCOLS):
        store = _Azure
    else:
        raise StorageError(f"{protocols[0]}://{path}", "conditional writes need S3 or Azure Blob storage")
    return sync(fs.loop, getattr(store, operation), fs, path, *args)


class _S3:
    @staticmethod
    async def _client(fs: Any, path: str) -> tuple[Any, str, str]:
        bucket, key, _ = fs.split_path(path)
        await fs.set_session()
        return await fs.get_s3(bucket), bucket, key

    @staticmethod
    def _code(err: Exception) -> str:
        return str((getattr(err, "response", None) or {}).get("Error", {}).get("Code", ""))

    @classmethod
    async def read(cls, fs: Any, path: str) -> Versioned | None:
        s3, bucket, key = await cls._client(fs, path)
        try:
            reply = await s3.get_object(Bucket=bucket, Key=key)
        except Exception as err:
            if cls._code(err) in ("NoSuchKey", "404"):
                return None
            raise
        async with reply["Body"] as body:
            return Versioned(await body.read(), reply["ETag"])

    @classmethod
    async def create(cls, fs: Any, path: str, data: bytes) -> str | None:
        return await cls._put(fs, path, data, IfNoneMatch="*")

    @classmethod
    async def replace(cls, fs: Any, path: str, data: bytes, etag: str) -> str | None:
        return await cls._put(fs, path, data, IfMatch=etag)

    @classmethod
    async def _put(cls, fs: Any, path: str, data: bytes, **condition: str) -> str | None:
        s3, bucket, key = await cls._client(fs, path)
        try:
            reply = await s3.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except Exception as err:
            if cls._code(err) in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "NoSuchKey",
                "412",
                "409",
            ):
                return None
            raise
        fs.invalidate_cache(path)
        return reply["ETag"]

    @classmethod
    async def delete(cls, fs: Any, path: str, etag: str) -> bool:
        s3, bucket, key = await cls._client(fs, path)
        try:
            await s3.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
        except Exception as err:
            if cls._code(err) in ("PreconditionFailed", "NoSuchKey", "412", "404"):
                return False
            raise
        fs.invalidate_cache(path)
        return True


class _Azure:
    @staticmethod
    def _blob(fs: Any, path: str) -> Any:
        container, blob, _ = fs.split_path(path)
        return fs.service_client.get_blob_client(container=container, blob=blob)

    @classmethod
    async def read(cls, fs: Any, path: str) -> Versioned | None:
        from azure.core.exceptions import ResourceNotFoundError

        async with cls._blob(fs, path) as blob:
            try:
                download = await blob.download_blob()
            except ResourceNotFoundError:
                return None
            return Versioned(await download.readall(), download.properties.etag)

    @classmethod
    async def create(cls, fs: Any, path: str, data: bytes) -> str | None:
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        async with cls._blob(fs, path) as blob:
            try:
                reply = await blob.upload_blob(data, overwrite=False)
            except (ResourceExistsError, ResourceModifiedError):
                return None
        fs.invalidate_cache(path)
        return reply["etag"]

    @classmethod
    async def replace(cls, fs: Any, path: str, data: bytes, etag: str) -> str | None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        async with cls._blob(fs, path) as blob:
            try:
                reply = await blob.upload_blob(
                    data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
                )
            except (ResourceModifiedError, ResourceNotFoundError):
                return None
        fs.invalidate_cache(path)
        return reply["etag"]

    @classmethod
    async def delete(cls, fs: Any, path: str, etag: str) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        async with cls._blob(fs, path) as blob:
            try:
                await blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                return False
        fs.invalidate_cache(path)
        return True
