"""output_dir on object storage (`output_dir: s3://bucket/runs/emotion`, `az://...`, `abfs://...`).

The run publishes into a local staging folder, `$SLIMTUNE_HOME/remote-output/<hash of the URL>`, exactly as it
would into a local output_dir (model/, stages/, run.json, reports), then uploads it: first the old run.json is
deleted, then every other file is uploaded (files of an earlier run's model/ and stages/ that this run did not
write are removed), and run.json goes last. run.json is the marker: an output_dir without it is unfinished (a
run killed mid-upload leaves no run.json, so nothing reads a half-written model as a result).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from slimtune.redact import redact_url
from slimtune.storage.fs import StorageError, open_filesystem

MARKER = "run.json"
REPLACED = (
    "model",
    "stages",
)  # folders a run replaces as a whole (as engine/runner.publish_model does locally)


def staging_dir(url: str) -> Path:
    """An empty local folder to publish a run into before it is uploaded to `url`."""
    from slimtune.models.store import slimtune_home

    plain = url.split("?", 1)[0].rstrip("/")
    folder = slimtune_home() / "remote-output" / hashlib.sha256(plain.encode()).hexdigest()[:16]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def url_of(path: str | Path, staging: Path, url: str) -> str:
    """Where a file or folder of the staging folder is once uploaded (secrets in the URL masked)."""
    relative = Path(path).relative_to(staging).as_posix()
    base = redact_url(url.split("?", 1)[0].rstrip("/"))
    return base if relative == "." else f"{base}/{relative}"


def upload_output(staging: Path, url: str) -> None:
    """Upload the staging folder to `url`, run.json last (see the module's docstring)."""
    fs, base = open_filesystem(url)
    base = base.split("?", 1)[0].rstrip("/")
    files = {p.relative_to(staging).as_posix(): p for p in sorted(staging.rglob("*")) if p.is_file()}
    try:
        if fs.exists(f"{base}/{MARKER}"):
            fs.rm_file(f"{base}/{MARKER}")
        for folder in REPLACED:
            for old in fs.find(f"{base}/{folder}"):
                relative = old[len(base) + 1 :]
                if relative not in files:
                    fs.rm_file(old)
        for relative, path in files.items():
            if relative != MARKER:
                fs.put_file(str(path), f"{base}/{relative}")
        if MARKER in files:
            fs.put_file(str(files[MARKER]), f"{base}/{MARKER}")
    except StorageError:
        raise
    except Exception as err:
        raise StorageError(
            url,
            f"uploading the run's results failed ({type(err).__name__}: {err}); the output_dir there has no "
            f"{MARKER}, so it is not taken for a finished run. The results are in {staging}",
        ) from None
    print(f"uploaded {len(files)} files to {url_of(staging, staging, url)}", flush=True)
