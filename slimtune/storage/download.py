"""Remote objects fetched once into the cache, checked, resumable.

Layout under the download root (`<cache_dir>/downloads` in a run, else `$XDG_CACHE_HOME/slimtune/downloads`):

  objects/<sha256 of URL and version>/<name>      the object, complete and checked
  objects/<sha256 of URL and version>/meta.json   its URL (secrets masked), version, size, md5, sha256
  objects/<...>/<name>.part                       an interrupted download: the next fetch resumes it
  urls/<sha256 of URL>.json                       the last version fetched for a URL (or the files a folder or
                                                  glob listed): what is used when the remote cannot be reached

The version is what the store says identifies the content: the ETag, the S3 version id, the content MD5, or
size and modification time. A re-run whose objects did not change asks only for their metadata. A URL's key
leaves out SAS tokens and presigned query parameters, so a new token does not fetch the data again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from slimtune.files import write_json_atomic
from slimtune.redact import redact_url
from slimtune.storage.base import StorageError
from slimtune.storage.errors import check_reachable, nearest_names, storage_error
from slimtune.storage.fs import Connection, connect, filesystem, is_pattern

CHUNK = 8 << 20  # bytes per ranged read; a killed transfer loses at most this much
PROGRESS_MIN = 4 << 20  # a progress bar for objects larger than this
_SIGNATURE_PARAMS = {
    "sig",
    "sv",
    "se",
    "sp",
    "sr",
    "st",
    "spr",
    "ss",
    "srt",
    "skoid",
    "sktid",
    "ske",
    "skt",
    "sks",
}
_SIGNATURE_PARAMS |= {"skv", "sdd", "sip", "si", "rscc", "rscd", "rsce", "rscl", "rsct"}
# the other query parameters redact.py masks as secrets: who reads, not what is read
_SIGNATURE_PARAMS |= {"signature", "token", "access_token", "api_key", "apikey", "code"}

_root: Path | None = None
_checked: dict[str, list[Path]] = {}  # URLs whose version was checked in this run: asked once per run


def set_download_root(cache_dir: str | Path) -> None:
    """Downloads go under `<cache_dir>/downloads` from now on (also for child processes: the environment).
    Called once per run: the remote versions are checked again from here on."""
    global _root
    _root = Path(cache_dir).expanduser().resolve() / "downloads"
    os.environ["SLIMTUNE_DOWNLOADS"] = str(_root)
    _checked.clear()


def download_root() -> Path:
    if _root is not None:
        return _root
    if os.environ.get("SLIMTUNE_DOWNLOADS"):
        return Path(os.environ["SLIMTUNE_DOWNLOADS"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slimtune" / "downloads"


def url_key(url: str) -> str:
    """The URL that names the object: without credentials (SAS tokens, presigned parameters, user:password)."""
    parts = urlsplit(url)
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in _SIGNATURE_PARAMS and not k.lower().startswith("x-amz-")
    ]
    netloc = parts.netloc.rsplit("@", 1)[-1] if parts.scheme in ("http", "https") else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- what the store says about an object


@dataclass(frozen=True)
class Remote:
    """One remote object as the store describes it."""

    url: str  # the URL as given (may carry a token; never written)
    path: str  # the path inside the filesystem
    size: int | None
    version: str
    md5: str | None  # hex, when the store gives one we can check

    @property
    def name(self) -> str:
        return PurePosixPath(urlsplit(self.url).path).name or "object"


def describe(info: dict[str, Any], url: str, path: str) -> Remote:
    size = info.get("size")
    md5 = _md5_of(info)
    version = (
        info.get("VersionId")
        or info.get("version_id")
        or _strip_quotes(info.get("ETag") or info.get("etag"))
        or md5
        or f"{size}-{info.get('Last-Modified') or info.get('LastModified') or info.get('last_modified') or ''}"
    )
    return Remote(url, path, int(size) if size is not None else None, str(version), md5)


def _strip_quotes(value: Any) -> str | None:
    return str(value).strip('"') if value else None


def _md5_of(info: dict[str, Any]) -> str | None:
    """The content MD5 the store gives: Content-MD5 / Azure's content_md5 (base64 or bytes), or an S3 or plain
    HTTP ETag that is one (32 hex digits; a multipart upload's ETag is not)."""
    settings = info.get("content_settings")
    raw = info.get("Content-MD5") or (settings.get("content_md5") if hasattr(settings, "get") else None)
    if isinstance(raw, (bytes, bytearray)) and raw:
        return bytes(raw).hex()
    if isinstance(raw, str) and raw:
        try:
            return base64.b64decode(raw).hex()
        except ValueError:
            return None
    etag = _strip_quotes(info.get("ETag") or info.get("etag"))
    if etag and len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower()):
        return etag.lower()
    return None


# ---------------------------------------------------------------- fetching


def _connect(url: str, storage_options: dict | None) -> tuple[Connection, list[Path] | None]:
    """(connection, None), or (None, the copies fetched last time) when the URL cannot even be resolved now
    (an Azure ML workspace that cannot be reached); any other problem is raised."""
    try:
        connection = connect(url, storage_options)
        check_reachable(connection, url)
        return connection, None
    except StorageError as err:
        return None, _offline_copy(url, None, err, storage_options)  # raises `err` when there is no copy


def fetch(url: str, storage_options: dict | None = None) -> Path:
    """The local copy of the one object at `url`, fetched (or resumed) only when the cache lacks this version."""
    connection, offline = _connect(url, storage_options)
    if offline is not None:
        return offline[0]
    try:
        fs = filesystem(connection, url)
        info = fs.info(connection.path)
    except Exception as err:  # noqa: BLE001 - sorted into a StorageError or the offline copy
        return _offline_copy(url, connection, err, storage_options)[0]
    if info.get("type") == "directory":
        raise StorageError(
            url, "is a folder; give the files inside it, a glob (folder/*.json) or the folder as data"
        )
    remote = describe(info, url, connection.path)
    local = _fetch_object(fs, remote, connection)
    _remember_url(url, [local])
    return local


def fetch_all(url: str, storage_options: dict | None = None) -> list[Path]:
    """Local copies of every object a URL names: one file, every file under a folder, or a glob's matches.
    The store is asked once per run (the loader and the fingerprint both need the files)."""
    memo = f"{download_root()}\0{url}\0{json.dumps(storage_options or {}, sort_keys=True, default=str)}"
    if memo in _checked and all(p.exists() for p in _checked[memo]):
        return list(_checked[memo])
    connection, offline = _connect(url, storage_options)
    if offline is not None:
        return offline
    try:
        fs = filesystem(connection, url)
        remotes = _listing(fs, url, connection)
    except StorageError:
        raise
    except Exception as err:  # noqa: BLE001
        return _offline_copy(url, connection, err, storage_options)
    locals_ = [_fetch_object(fs, remote, connection) for remote in remotes]
    _remember_url(url, locals_)
    _checked[memo] = locals_
    return locals_


def fetch_folder(url: str, storage_options: dict | None = None) -> Path:
    """A local folder with the tree under `url` (a model folder): each object cached once, linked into a folder
    named by the URL and the objects' versions."""
    if urlsplit(url).scheme.lower() in ("http", "https"):
        raise StorageError(
            url,
            "a folder cannot be listed over http(s): an http(s) URL names one file (a .gguf model); put the "
            "model folder in S3, Azure Blob/ADLS or an Azure ML datastore, or download it",
        )
    connection, offline = _connect(url, storage_options)
    if offline is not None:
        return offline[0]
    try:
        fs = filesystem(connection, url)
        if not fs.exists(connection.path):
            raise StorageError(url, "not found (404)" + nearest_names(fs, connection.path, connection))
        if not fs.isdir(connection.path):
            raise StorageError(
                url, "is not a folder (a model folder URL names the folder holding config.json)"
            )
        remotes = _listing(fs, url, connection)
    except StorageError:
        raise
    except Exception as err:  # noqa: BLE001
        return _offline_copy(url, connection, err, storage_options)[0]
    base = connection.path.rstrip("/")
    files = {r.path[len(base) :].lstrip("/"): _fetch_object(fs, r, connection) for r in remotes}
    tree = (
        download_root()
        / "folders"
        / _sha(url_key(url) + json.dumps(sorted((k, str(v)) for k, v in files.items())))
    )
    if not tree.is_dir():
        staging = tree.with_name(f".{tree.name}.{os.getpid()}")
        for rel, local in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(local, target)
        try:
            staging.rename(tree)
        except OSError:  # another process made it first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    _remember_url(url, [tree])
    return tree


def fetch_model(url: str, storage_options: dict | None = None) -> Path:
    """The local copy of a model at a storage URL: a `.gguf` file, or a model folder (every file under it)."""
    if PurePosixPath(urlsplit(url).path).suffix.lower() == ".gguf":
        return fetch(url, storage_options)
    return fetch_folder(url, storage_options)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        import shutil

        shutil.copy2(source, target)


def _listing(fs: Any, url: str, connection: Connection) -> list[Remote]:
    path = connection.path
    scheme = connection.protocol
    if scheme == "http":  # no listing over plain HTTP: the URL names one file (its query is no glob)
        info = fs.info(path)
        return [describe(info, url, path)]
    if is_pattern(path):
        found = fs.glob(path, detail=True)
        infos = {p: i for p, i in found.items() if i.get("type") != "directory"}
        if not infos:
            raise StorageError(url, "no object matches this pattern" + nearest_names(fs, path, connection))
    else:
        info = fs.info(path)
        if info.get("type") == "directory":
            infos = {p: i for p, i in fs.find(path, detail=True).items() if i.get("type") != "directory"}
            if not infos:
                raise StorageError(url, "the folder holds no files")
        else:
            infos = {path: info}
    return [describe(info, _child_url(url, connection, p), p) for p, info in sorted(infos.items())]


def _child_url(url: str, connection: Connection, path: str) -> str:
    """The URL of an object found under `url` (a folder or a glob): the URL's path ends with the part of the
    filesystem path after the bucket or container, so the child's part replaces it (query kept)."""
    if connection.protocol == "http" or path == connection.path:
        return url
    parts = urlsplit(url)
    head = parts._replace(query="", fragment="").geturl()
    pattern = connection.path.split("/", 1)[1] if "/" in connection.path else ""
    child = path.split("/", 1)[1] if "/" in path else ""
    if pattern and head.endswith(pattern):
        head = head[: len(head) - len(pattern)]
    elif not head.endswith("/"):
        head += "/"
    return head + child + (f"?{parts.query}" if parts.query else "")


def _fetch_object(fs: Any, remote: Remote, connection: Connection) -> Path:
    slot = download_root() / "objects" / _sha(f"{url_key(remote.url)}\0{remote.version}")
    local = slot / remote.name
    if (slot / "meta.json").is_file() and local.is_file():
        return local
    slot.mkdir(parents=True, exist_ok=True)
    with _lock(slot / ".lock"):
        if (slot / "meta.json").is_file() and local.is_file():
            return local
        _download(fs, remote, connection, local)
    return local


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(fs: Any, remote: Remote, connection: Connection, local: Path) -> None:
    part = local.with_name(local.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if remote.size is not None and offset > remote.size:
        part.unlink()
        offset = 0
    md5, sha = hashlib.md5(), hashlib.sha256()
    if offset:
        with open(part, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                md5.update(block)
                sha.update(block)
        print(
            f"resuming {redact_url(remote.url)} at byte {offset:,} of {remote.size or 0:,}",
            file=sys.stderr,
            flush=True,
        )
    bar = _progress(remote, offset)
    try:
        with open(part, "ab") as out:
            if remote.size is None:  # no size: one streamed read
                data = fs.cat_file(remote.path)
                out.write(data)
                md5.update(data)
                sha.update(data)
            while remote.size is not None and offset < remote.size:
                end = min(offset + CHUNK, remote.size)
                data = fs.cat_file(remote.path, start=offset, end=end)
                if not data:
                    break
                if len(data) > end - offset:  # the server ignored the range and sent it all: keep the rest
                    data = data[offset:]
                out.write(data)
                out.flush()
                md5.update(data)
                sha.update(data)
                offset += len(data)
                if bar is not None:
                    bar.update(len(data))
    except Exception as err:  # noqa: BLE001 - the .part stays for the next attempt
        raise storage_error(err, remote.url, connection, partial=part if part.exists() else None) from None
    finally:
        if bar is not None:
            bar.close()
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise StorageError(
            remote.url, f"size mismatch: the store says {remote.size:,} bytes, {size:,} arrived; run again"
        )
    if remote.md5 and md5.hexdigest() != remote.md5:
        part.unlink()
        raise StorageError(
            remote.url,
            f"checksum mismatch: the store gives MD5 {remote.md5}, the {size:,} bytes received hash to "
            f"{md5.hexdigest()}; the object is corrupted or changed while it was read. Nothing was kept; "
            "re-upload it or run again",
        )
    meta = {
        "url": redact_url(url_key(remote.url)),
        "version": remote.version,
        "size": size,
        "md5": md5.hexdigest(),
        "md5_checked": bool(remote.md5),
        "sha256": sha.hexdigest(),
        "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    part.rename(local)
    write_json_atomic(local.parent / "meta.json", meta)


def _progress(remote: Remote, offset: int) -> Any:
    if not remote.size or remote.size < PROGRESS_MIN:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=remote.size,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"downloading {remote.name}",
        file=sys.stderr,
        leave=False,
    )


def origin_of(local: str | Path) -> str | None:
    """The URL (without its token) a downloaded file came from; None for a file that is not a download."""
    return _meta(local).get("url")


def _meta(local: str | Path) -> dict[str, Any]:
    """The meta.json of a file in the download cache ({} for any other file)."""
    path = Path(local).resolve()
    if download_root().resolve() not in path.parents:
        return {}
    try:
        return json.loads((path.parent / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def content_sha256(local: str | Path) -> str | None:
    """The sha256 recorded when `local` was downloaded (None for a file that is not a download)."""
    return _meta(local).get("sha256")


# ---------------------------------------------------------------- offline


def _remember_url(url: str, locals_: list[Path]) -> None:
    record = {"url": redact_url(url_key(url)), "files": [str(p) for p in locals_], "at": time.time()}
    write_json_atomic(download_root() / "urls" / f"{_sha(url_key(url))}.json", record)


def _offline_copy(
    url: str, connection: Connection, err: Exception, storage_options: dict | None
) -> list[Path]:
    """The copy fetched last time, when the store cannot be reached now; else the error, named."""
    error = storage_error(err, url, connection)
    if not getattr(error, "unreachable", False):
        raise error from None
    try:
        record = json.loads((download_root() / "urls" / f"{_sha(url_key(url))}.json").read_text())
        files = [Path(p) for p in record["files"]]
    except (OSError, ValueError, KeyError):
        raise error from None
    if not files or not all(p.exists() for p in files):
        raise error from None
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record.get("at", 0)))
    print(
        f"warning: {redact_url(url)} cannot be reached ({error.reason}); using the copy downloaded {when}",
        file=sys.stderr,
        flush=True,
    )
    return files
