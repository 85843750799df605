"""A cache on object storage shared by several runs (slimtune/engine/shared_cache.py), against the real moto S3
server and Azurite on loopback.

Two `slimtune run` processes, each with its own local mirror (its own SLIMTUNE_HOME: two machines), share one
remote cache: every entry is computed by exactly one of them and downloaded by the other. A partial upload (files
without a manifest) is ignored and redone, an expired lease is taken over, a remote file that does not match its
manifest is reported and recomputed, never used; no credential reaches a cache record, the remote or run.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from workflows import emotion_data_config

from slimtune.engine.lease import Lease
from slimtune.storage import conditional
from slimtune.storage.fs import open_filesystem
from tests.servers import AZURITE_KEY, azurite, moto  # noqa: F401  (pytest fixtures)

AWS_KEY_ID = "AKIASLIMTUNESHARED01"  # moto accepts any key; these are distinctive, to be searched for
AWS_SECRET = "slimtune-shared-cache-secret-key-1234"
HUB_TOKEN = "hf_slimtuneSharedCacheToken987"
RUN_TIMEOUT_S = 240


# ---------------------------------------------------------------- servers and stores


def s3_env(server) -> dict[str, str]:
    return {**server.env, "AWS_ACCESS_KEY_ID": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET}


def new_store(kind: str, server, name: str) -> tuple[str, dict[str, str]]:
    """A fresh bucket or container on the server: (cache URL under it, environment that reaches it)."""
    if kind == "s3":
        import boto3

        env = s3_env(server)
        boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=AWS_KEY_ID,
            aws_secret_access_key=AWS_SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket=name)
        return f"s3://{name}", env
    from azure.storage.blob import BlobServiceClient

    env = dict(server.env)
    BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"]).create_container(name)
    return f"az://{name}", env


@pytest.fixture
def in_env(monkeypatch):
    def apply(env: dict[str, str]) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return apply


# ---------------------------------------------------------------- leases (no training)


@pytest.mark.parametrize("kind", ["s3", "az"])
def test_lease_is_taken_once_renewed_and_taken_over_when_expired(kind, request, in_env):
    server = request.getfixturevalue("moto" if kind == "s3" else "azurite")
    url, env = new_store(kind, server, f"leases-{kind}")
    in_env(env)
    fs, base = open_filesystem(url)
    path = f"{base}/entries/k/lease.json"

    first, second = Lease(fs, path, ttl=1.5), Lease(fs, path, ttl=1.5)
    assert first.try_take() == (True, None)
    taken, holder = second.try_take()
    assert not taken and holder["owner"] == first.owner and holder["pid"] == os.getpid()
    time.sleep(2.0)  # past the first expiry: renewals (every 0.5 s) keep it
    assert second.try_take()[0] is False and not first.lost
    first.release()
    assert conditional.read(fs, path) is None  # released: deleted
    assert second.try_take() == (True, None)
    second._stop.set()  # its holder "dies": no more renewals
    second._thread.join()

    time.sleep(1.6)  # expired now; of two runs that see it, exactly one takes it over
    contenders = [Lease(fs, path, ttl=30), Lease(fs, path, ttl=30)]
    results = [None, None]
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, contenders[i].try_take())) for i in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[0] for r in results) == [False, True]
    winner = contenders[[r[0] for r in results].index(True)]
    assert all(r[1]["owner"] in (second.owner, winner.owner) for r in results)  # the expired one was named
    assert json.loads(conditional.read(fs, path).data)["owner"] == winner.owner

    # the dead holder's lease was replaced: a renewal on its old version fails, so it would not upload
    assert conditional.replace(fs, path, b"{}", second.etag) is None
    winner.release()
