# ruff: noqa: F811 - the server fixtures are imported, and named again as test arguments
"""Remote data and models against real storage servers on loopback (tests/servers.py): a ranged HTTP file server,
the moto S3 server and Azurite (Azure Blob). Downloads are cached by URL and version, resumed after the server is
killed, checked against the store's size and MD5; errors name the resource. Only the Azure ML workspace lookup
(`slimtune.storage.azureml.lookup_datastore`, azure-ai-ml's `MLClient.datastores.get`) is replaced: no workspace
service runs here. Whole runs on remote data are in tests/test_storage_runs.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from slimtune.config.schema import LoadDatasetConfig
from slimtune.data.load import load_rows
from slimtune.storage import StorageError
from slimtune.storage import download as dl
from tests.servers import (  # noqa: F401 - fixtures
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    azurite,
    free_port,
    http_file_server,
    moto,
    moto_server,
    server_env,
)

ROWS = "".join(
    f'{{"phrase": "row {i}", "tone": "{t}"}}\n' for i, t in enumerate(["joy", "fear", "sadness"] * 4)
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh download root for each test (as a run sets it from cache_dir); secrets forgotten after."""
    from slimtune import redact

    monkeypatch.setattr(dl, "_root", None)
    monkeypatch.setenv("SLIMTUNE_DOWNLOADS", str(tmp_path / "unused"))
    dl.set_download_root(tmp_path / "cache")
    yield tmp_path / "cache" / "downloads"
    dl._checked.clear()
    redact.forget()


class Transfers:
    """Counts the object reads the download makes (the real reads, observed): (start, end, bytes) each."""

    def __init__(self, monkeypatch):
        self.reads: list[tuple[int | None, int | None, int]] = []
        original = dl._download

        def counted(fs, remote, connection, local):
            if getattr(fs.cat_file, "counted", False):  # one filesystem serves every object of a listing
                return original(fs, remote, connection, local)
            cat = fs.cat_file

            def cat_file(path, start=None, end=None, **kw):
                data = cat(path, start=start, end=end, **kw)
                self.reads.append((start, end, len(data)))
                return data

            cat_file.counted = True
            fs.cat_file = cat_file
            return original(fs, remote, connection, local)

        monkeypatch.setattr(dl, "_download", counted)

    @property
    def bytes(self) -> int:
        return sum(n for _, _, n in self.reads)


def rows_of(data_files, **kw) -> int:
    return len(load_rows(LoadDatasetConfig(data_name="json", data_files=data_files, **kw)))


# ---------------------------------------------------------------- HTTP: cached, resumed, checked, offline


def test_http_download_resumes_after_the_server_is_killed(tmp_path, cache, monkeypatch, capsys):
    root = tmp_path / "site"
    root.mkdir()
    payload = os.urandom(3 << 20)
    (root / "big.bin").write_bytes(payload)
    monkeypatch.setattr(dl, "CHUNK", 128 << 10)
    transfers = Transfers(monkeypatch)
    failure: list[BaseException] = []
    with http_file_server(root, rate=512 << 10) as server:
        port, url = server.port, f"{server.url}/big.bin"

        def fetch() -> None:
            try:
                dl.fetch(url)
            except BaseException as err:  # noqa: BLE001 - recorded for the assert below
                failure.append(err)

        thread = threading.Thread(target=fetch)
        thread.start()
        deadline = time.monotonic() + 30
        while transfers.bytes < (512 << 10) and time.monotonic() < deadline:
            time.sleep(0.05)
        server.kill()  # mid-transfer
        thread.join(timeout=60)
    assert failure and isinstance(failure[0], StorageError), failure
    assert "bytes kept: the next run resumes" in str(failure[0])
    [part] = list(cache.rglob("big.bin.part"))
    kept = part.stat().st_size
    assert 0 < kept < len(payload)

    transfers.reads.clear()
    capsys.readouterr()
    monkeypatch.setattr(dl, "PROGRESS_MIN", 1 << 20)  # a progress bar for this 3 MiB object
    with http_file_server(root, port=port):
        local = dl.fetch(url)
    assert local.read_bytes() == payload
    said = capsys.readouterr().err
    assert f"resuming {url} at byte {kept:,}" in said and "downloading big.bin" in said
    assert transfers.reads[0][0] == kept  # the first read after the restart was ranged from where it stopped
    assert transfers.bytes == len(payload) - kept  # nothing fetched twice
    assert not list(cache.rglob("*.part"))


def test_http_rerun_fetches_nothing_and_an_unreachable_server_uses_the_copy(
    tmp_path, cache, monkeypatch, capsys
):
    root = tmp_path / "site"
    root.mkdir()
    (root / "train.jsonl").write_text(ROWS)
    transfers = Transfers(monkeypatch)
    with http_file_server(root) as server:
        url = f"{server.url}/train.jsonl"
        assert rows_of(url) == 12
        assert transfers.bytes == len(ROWS)
        dl.set_download_root(cache.parent)  # a new run: versions are asked again
        assert rows_of(url) == 12
        assert transfers.bytes == len(ROWS)  # the ETag did not change: nothing fetched
        (root / "train.jsonl").write_text(ROWS + '{"phrase": "new", "tone": "joy"}\n')
        dl.set_download_root(cache.parent)
        assert rows_of(url) == 13  # a changed object is a new version
    dl.set_download_root(cache.parent)
    capsys.readouterr()
    assert rows_of(url) == 13  # the server is gone: the last copy, said
    assert f"{url} cannot be reached (connection refused" in capsys.readouterr().err


def test_http_errors_name_the_url(tmp_path, cache):
    from slimtune.errors import DataError

    root = tmp_path / "site"
    root.mkdir()
    (root / "bad.jsonl").write_text('{"phrase": "ok", "tone": "joy"}\n{"phrase": oops}\n')
    with http_file_server(root) as server:
        with pytest.raises(DataError, match=rf"^{server.url}/bad.jsonl:2: invalid JSON line"):
            rows_of(f"{server.url}/bad.jsonl?sv=1&sig=abcdef")  # the URL, token masked, not the cache path
        with pytest.raises(StorageError, match=rf"{server.url}/missing.jsonl: not found \(404\)"):
            dl.fetch(f"{server.url}/missing.jsonl")
    port = free_port()
    with pytest.raises(
        StorageError, match=rf"127.0.0.1:{port}/x.jsonl: connection refused by 127.0.0.1:{port}"
    ):
        dl.fetch(f"http://127.0.0.1:{port}/x.jsonl")
    with pytest.raises(
        StorageError, match=r"no-such-host.invalid/x.jsonl: unknown host no-such-host.invalid"
    ):
        dl.fetch("http://no-such-host.invalid/x.jsonl")


def test_a_server_error_and_a_tls_failure_are_not_a_missing_file(tmp_path, cache, capsys):
    """fsspec's HTTP filesystem turns every failed request into FileNotFoundError; a 503 and an https:// URL
    for a plain-http server are said as what they are, and a 503 lets the copy fetched before stand in."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "train.jsonl").write_text(ROWS)
    with http_file_server(root) as server:
        url = f"{server.url}/train.jsonl"
        assert rows_of(url) == 12
        (root / "_status").write_text("503")
        with pytest.raises(
            StorageError, match=rf"{server.url}/new.jsonl: server error \(503\) from 127.0.0.1"
        ):
            dl.fetch(f"{server.url}/new.jsonl")
        dl.set_download_root(cache.parent)  # a new run while the server fails
        capsys.readouterr()
        assert rows_of(url) == 12
        assert f"{url} cannot be reached (server error (503)" in capsys.readouterr().err
        (root / "_status").unlink()
        tls = f"https://127.0.0.1:{server.port}/train.jsonl"
        with pytest.raises(StorageError) as info:
            dl.fetch(tls)
    assert str(info.value).startswith(f"{tls}: the TLS handshake with 127.0.0.1:{server.port} failed")
    assert "not found" not in str(info.value)


def test_a_server_without_ranged_reads(tmp_path, cache, monkeypatch, capsys):
    """A server that ignores Range (200 with the whole file, no ETag): the object is read once, not once per
    chunk, also when a .part from an earlier run is resumed; its Last-Modified is the version."""
    root = tmp_path / "site"
    root.mkdir()
    payload = os.urandom(600 << 10)
    (root / "big.bin").write_bytes(payload)
    (root / "_norange").write_text("")
    monkeypatch.setattr(dl, "CHUNK", 64 << 10)
    transfers = Transfers(monkeypatch)
    with http_file_server(root) as server:
        url = f"{server.url}/big.bin"
        assert dl.fetch(url).read_bytes() == payload
        assert len(transfers.reads) == 1
        [meta] = list(cache.rglob("meta.json"))
        assert not json.loads(meta.read_text())["md5_checked"]  # nothing to check against: sha256 recorded
        shutil.rmtree(meta.parent)
        meta.parent.mkdir()
        (meta.parent / "big.bin.part").write_bytes(payload[: 200 << 10])  # left by an interrupted run
        transfers.reads.clear()
        dl.set_download_root(cache.parent)
        capsys.readouterr()
        assert dl.fetch(url).read_bytes() == payload
        assert f"resuming {url} at byte {200 << 10:,}" in capsys.readouterr().err
        assert len(transfers.reads) == 1
        dl.set_download_root(cache.parent)
        transfers.reads.clear()
        dl.fetch(url)
        assert transfers.reads == []  # the same Last-Modified: nothing fetched


# ---------------------------------------------------------------- S3 (moto)


def s3_client(server):
    import boto3

    return boto3.client("s3", endpoint_url=server.url, **{k.lower(): v for k, v in _aws(server).items()})


def _aws(server) -> dict[str, str]:
    return {
        "aws_access_key_id": server.env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": server.env["AWS_SECRET_ACCESS_KEY"],
        "region_name": server.env["AWS_DEFAULT_REGION"],
    }


def test_s3_files_globs_folders_and_missing_keys(moto, server_env, cache, monkeypatch):
    from slimtune.config.schema import DataConfig
    from slimtune.data.fingerprint import data_fingerprint

    server_env(moto)
    bucket = f"data-{uuid.uuid4().hex[:8]}"
    s3 = s3_client(moto)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="train.jsonl", Body=ROWS.encode())
    for n in (1, 2):
        s3.put_object(Bucket=bucket, Key=f"parts/part-{n}.jsonl", Body=ROWS.encode())
    transfers = Transfers(monkeypatch)
    assert rows_of(f"s3://{bucket}/train.jsonl") == 12
    assert rows_of(f"s3://{bucket}/parts/*.jsonl") == 24
    assert rows_of(f"s3://{bucket}/parts/") == 24  # a folder: every file under it
    assert rows_of({"train": f"s3://{bucket}/train.jsonl", "test": f"s3://{bucket}/parts/part-1.jsonl"}) == 12
    fetched = transfers.bytes
    assert fetched == 3 * len(ROWS)  # each object once, though read by several data_files

    config = DataConfig(
        name="d", load_dataset_config={"data_name": "json", "data_files": f"s3://{bucket}/train.jsonl"}
    )
    before = data_fingerprint(config)
    dl.set_download_root(cache.parent)
    assert (
        data_fingerprint(config) == before and transfers.bytes == fetched
    )  # unchanged object: same key, no fetch
    s3.put_object(Bucket=bucket, Key="train.jsonl", Body=(ROWS + ROWS).encode())
    dl.set_download_root(cache.parent)
    assert data_fingerprint(config) != before  # the content is in the key

    with pytest.raises(StorageError) as info:
        rows_of(f"s3://{bucket}/parts/part-3.jsonl")
    assert f"s3://{bucket}/parts/part-3.jsonl: not found (404)" in str(info.value)
    assert re.search(r"nearest names in that folder: part-[12].jsonl, part-[12].jsonl$", str(info.value))
    with pytest.raises(StorageError) as info:
        rows_of(f"s3://{bucket}/parts/*.json")  # a glob: the names in its folder, not the folder's name
    assert f"s3://{bucket}/parts/*.json: no object matches this pattern" in str(info.value)
    assert re.search(r"nearest names in that folder: part-[12].jsonl, part-[12].jsonl$", str(info.value))


def test_an_s3_version_id_reads_that_version(moto, server_env, cache):
    """`s3://bucket/key?versionId=ID` reads the version asked for, not the newest (it used to drop the query)."""
    from slimtune.config.schema import DataConfig
    from slimtune.data.fingerprint import data_fingerprint

    server_env(moto)
    bucket = f"versions-{uuid.uuid4().hex[:8]}"
    s3 = s3_client(moto)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=bucket, Key="train.jsonl", Body=ROWS.encode())["VersionId"]
    s3.put_object(Bucket=bucket, Key="train.jsonl", Body=(ROWS * 3).encode())
    assert rows_of(f"s3://{bucket}/train.jsonl") == 36  # the newest
    assert rows_of(f"s3://{bucket}/train.jsonl?versionId={first}") == 12

    def key(url):
        return data_fingerprint(
            DataConfig(name="d", load_dataset_config={"data_name": "json", "data_files": url})
        )

    pinned = key(f"s3://{bucket}/train.jsonl?versionId={first}")
    s3.put_object(
        Bucket=bucket, Key="train.jsonl", Body=(ROWS * 5).encode()
    )  # a newer version changes nothing
    dl.set_download_root(cache.parent)
    assert key(f"s3://{bucket}/train.jsonl?versionId={first}") == pinned

    for url, words in (
        (f"s3://{bucket}/train.jsonl?version=1", "takes one query parameter, versionId; version is not read"),
        (f"s3://{bucket}/*.jsonl?versionId={first}", "names one version of one object"),
    ):
        with pytest.raises(StorageError) as info:
            rows_of(url)
        assert words in str(info.value)


def test_wrong_s3_credentials_say_which_credential_was_refused(cache, monkeypatch):
    """A moto server that checks credentials (the shared `moto` fixture accepts any key): a wrong secret and an
    unknown key id are refused with 403, said with the credential's source and what it lacks, never the secret."""
    import boto3

    with moto_server(unchecked_requests=3) as server:  # three unchecked requests make the user and its key
        iam = boto3.client("iam", endpoint_url=server.url, **_aws(server))
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        policy = (
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
        )
        iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=policy)
        right = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        s3 = boto3.client(
            "s3", endpoint_url=server.url, region_name="us-east-1", **{k.lower(): v for k, v in right.items()}
        )
        s3.create_bucket(Bucket="checked")
        s3.put_object(Bucket="checked", Key="train.jsonl", Body=ROWS.encode())
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for key_id, secret in ((key["AccessKeyId"], "wrong-secret-0042"), ("AKIANOSUCHKEY0000001", "x" * 40)):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            dl.set_download_root(cache.parent)
            with pytest.raises(StorageError) as info:
                rows_of("s3://checked/train.jsonl")
            message = str(info.value)
            assert message.startswith(
                "s3://checked/train.jsonl: access denied (403) with the key in AWS_ACCESS_KEY_ID; it lacks read "
                "access to the object (s3:GetObject)"
            ), message
            assert secret not in message
        for name, value in right.items():
            monkeypatch.setenv(name, value)
        dl.set_download_root(cache.parent)
        assert rows_of("s3://checked/train.jsonl") == 12  # the right key reads it


def test_a_model_folder_on_s3_loads_as_a_local_folder(moto, server_env, cache, tmp_path):
    from tiny_models import make_tiny_model

    from slimtune.models.loading import resolve_model

    server_env(moto)
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    s3 = s3_client(moto)
    s3.create_bucket(Bucket=bucket)
    folder = make_tiny_model("llama", tmp_path / "tiny")
    for path in folder.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"tiny/{path.relative_to(folder)}")
    local = resolve_model(f"s3://{bucket}/tiny/")
    assert local.is_dir() and cache in local.parents
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert (local / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    assert resolve_model(f"s3://{bucket}/tiny/") == local  # the same versions: the same folder


# ---------------------------------------------------------------- Azure Blob (Azurite)


def container(server, name: str | None = None):
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(server.env["AZURE_STORAGE_CONNECTION_STRING"])
    return client.create_container(name or f"c{uuid.uuid4().hex[:10]}")


def test_azure_blob_az_and_abfs_urls(azurite, server_env, cache):
    server_env(azurite)
    box = container(azurite)
    box.upload_blob("train/train.jsonl", ROWS.encode())
    box.upload_blob("train/more.jsonl", ROWS.encode())
    assert rows_of(f"az://{box.container_name}/train/train.jsonl") == 12
    assert rows_of(f"abfs://{box.container_name}@{AZURITE_ACCOUNT}.dfs.core.windows.net/train/*.jsonl") == 24
    with pytest.raises(StorageError) as info:
        rows_of(f"az://{box.container_name}/train/trian.jsonl")
    message = str(info.value)
    assert f"az://{box.container_name}/train/trian.jsonl: not found (404)" in message
    assert "nearest names in that folder: train.jsonl" in message


def test_a_corrupted_blob_fails_its_checksum_and_nothing_is_kept(azurite, server_env, cache):
    from azure.storage.blob import ContentSettings

    server_env(azurite)
    box = container(azurite)
    blob = box.upload_blob("train.jsonl", ROWS.encode())
    blob.set_http_headers(
        ContentSettings(content_md5=bytearray(b"\x00" * 16))
    )  # the stored MD5 no longer fits
    with pytest.raises(StorageError, match=r"train.jsonl: checksum mismatch: the store gives MD5 0{32}"):
        rows_of(f"az://{box.container_name}/train.jsonl")
    assert not [p for p in cache.rglob("train.jsonl*")]


def test_wrong_credentials_say_which_credential_was_refused(azurite, server_env, cache, monkeypatch):
    server_env(azurite)
    box = container(azurite)
    box.upload_blob("train.jsonl", ROWS.encode())
    wrong = azurite.env["AZURE_STORAGE_CONNECTION_STRING"].replace(AZURITE_KEY, "d3Jvbmcta2V5" * 8)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    with pytest.raises(StorageError) as info:
        rows_of(f"az://{box.container_name}/train.jsonl")
    message = str(info.value)
    assert "access denied (403) with the connection string from AZURE_STORAGE_CONNECTION_STRING" in message
    assert "d3Jvbmcta2V5" not in message


def test_a_sas_url_is_read_and_its_token_masked_in_errors(azurite, server_env, cache):
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    server_env(azurite)
    box = container(azurite)
    box.upload_blob("train.jsonl", ROWS.encode())
    sas = generate_blob_sas(
        AZURITE_ACCOUNT,
        box.container_name,
        "train.jsonl",
        account_key=AZURITE_KEY,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    base = f"{azurite.url}/{AZURITE_ACCOUNT}/{box.container_name}"
    assert rows_of(f"{base}/train.jsonl?{sas}") == 12
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    with pytest.raises(StorageError) as info:
        rows_of(f"{base}/other.jsonl?{sas}")  # the token is for train.jsonl only
    assert "sig=***" in str(info.value) and signature not in str(info.value)
    assert "(403)" in str(info.value) and "the SAS token in the URL" in str(info.value)


# ---------------------------------------------------------------- Azure ML datastores (workspace lookup replaced)


def blob_datastore(server, name: str, container_name: str):
    """What `MLClient.datastores.get(name, include_secrets=True)` returns for a Blob datastore, here pointing
    at Azurite (an emulator endpoint: host:port, the account in the path)."""
    from azure.ai.ml.entities import AccountKeyConfiguration, AzureBlobDatastore

    return AzureBlobDatastore(
        name=name,
        account_name=AZURITE_ACCOUNT,
        container_name=container_name,
        protocol="http",
        endpoint=f"127.0.0.1:{server.port}",
        credentials=AccountKeyConfiguration(account_key=AZURITE_KEY),
    )


@pytest.fixture
def workspace(monkeypatch):
    """The Azure ML workspace API replaced by a dict of datastores; records each lookup."""
    from azure.core.exceptions import ResourceNotFoundError

    from slimtune.storage import azureml

    stores: dict[str, object] = {}
    asked: list[tuple[dict, str]] = []

    def lookup(client: dict, name: str):
        asked.append((client, name))
        if name not in stores:
            raise ResourceNotFoundError(f"DataStore {name} not found")
        return stores[name]

    azureml._cached_lookup.cache_clear()
    monkeypatch.setattr(azureml, "lookup_datastore", lookup)
    yield stores, asked
    azureml._cached_lookup.cache_clear()


CLIENT = {"subscription_id": "sub-1", "resource_group": "rg-1", "workspace_name": "ws-1"}


def test_datastore_uris_long_and_short_and_the_resource(azurite, cache, workspace, monkeypatch):
    from slimtune.config.load import load_config_dict

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)  # the datastore's own key is used
    stores, asked = workspace
    box = container(azurite)
    box.upload_blob("data/train.jsonl", ROWS.encode())
    stores["workspaceblobstore"] = blob_datastore(azurite, "workspaceblobstore", box.container_name)
    long = (
        "azureml://subscriptions/sub-1/resourcegroups/rg-1/workspaces/ws-1/datastores/workspaceblobstore/"
        "paths/data/train.jsonl"
    )
    assert rows_of(long) == 12
    assert asked[-1] == (CLIENT, "workspaceblobstore")
    config = {
        "input_model": {"type": "HfModel", "model_path": "smollm2-135m-instruct"},
        "azureml_client": CLIENT,
        "data_configs": [
            {
                "name": "short",
                "load_dataset_config": {
                    "data_files": "azureml://datastores/workspaceblobstore/paths/data/train.jsonl"
                },
            },
            {
                "name": "resource",
                "load_dataset_config": {
                    "data_files": {
                        "type": "azureml_datastore",
                        "config": {"datastore_name": "workspaceblobstore", "relative_path": "data/*.jsonl"},
                    }
                },
            },
        ],
    }
    loaded = load_config_dict(config, base_dir=Path.cwd())
    short, resource = (d.load_dataset_config for d in loaded.config.data_configs)
    assert short.data_files == long  # the workspace from azureml_client
    assert len(load_rows(short)) == 12 and len(load_rows(resource)) == 12

    with pytest.raises(StorageError) as info:
        rows_of(long.replace("workspaceblobstore", "missingstore"))
    assert "datastore 'missingstore' does not exist in workspace ws-1 (resource group rg-1)" in str(
        info.value
    )
    with pytest.raises(StorageError, match="the workspace is not known: set azureml_client"):
        rows_of("azureml://datastores/workspaceblobstore/paths/data/train.jsonl")


def test_a_job_output_is_read_from_where_the_job_wrote_it(azurite, cache, workspace, monkeypatch):
    from slimtune.config.schema import AzureMLJobOutput
    from slimtune.storage import azureml

    stores, _ = workspace
    box = container(azurite)
    box.upload_blob("azureml/job-7/prepared/train.jsonl", ROWS.encode())
    stores["workspaceblobstore"] = blob_datastore(azurite, "workspaceblobstore", box.container_name)
    # the job set no path for its output: Azure ML's default place (jobs.get is the workspace API, replaced)
    monkeypatch.setattr(
        azureml,
        "lookup_job_output",
        lambda client, job, output: azureml.datastore_uri(
            "workspaceblobstore", f"azureml/{job}/{output}", client
        ),
    )
    resource = AzureMLJobOutput(
        type="azureml_job_output",
        azureml_client=CLIENT,
        job_name="job-7",
        output_name="prepared",
        relative_path="train.jsonl",
    )
    assert rows_of(resource) == 12


def test_a_workspace_out_of_reach_uses_the_copy_fetched_before(
    azurite, cache, workspace, monkeypatch, capsys
):
    from azure.core.exceptions import ClientAuthenticationError

    from slimtune.storage import azureml

    stores, _ = workspace
    box = container(azurite)
    box.upload_blob("data/train.jsonl", ROWS.encode())
    stores["workspaceblobstore"] = blob_datastore(azurite, "workspaceblobstore", box.container_name)
    uri = (
        "azureml://subscriptions/sub-1/resourcegroups/rg-1/workspaces/ws-1/datastores/workspaceblobstore/"
        "paths/data/train.jsonl"
    )
    assert rows_of(uri) == 12

    def signed_out(client, name):
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    azureml._cached_lookup.cache_clear()
    monkeypatch.setattr(azureml, "lookup_datastore", signed_out)
    dl.set_download_root(cache.parent)  # a later run, signed out
    capsys.readouterr()
    assert rows_of(uri) == 12
    said = capsys.readouterr().err
    assert f"{uri} cannot be reached (cannot sign in to Azure" in said and "using the copy downloaded" in said


@pytest.mark.parametrize("scheme", ["s3", "az"])
def test_a_store_that_is_down_is_named_by_its_endpoint(scheme, cache, monkeypatch):
    port = free_port()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};",
    )
    url = f"{scheme}://bucket/train.jsonl"
    with pytest.raises(
        StorageError, match=rf"^{url}: connection refused by 127.0.0.1:{port}: nothing listens"
    ):
        rows_of(url)


def test_a_gguf_file_at_a_url_goes_through_the_local_handling(tmp_path, cache, monkeypatch):
    from slimtune.errors import ModelError
    from slimtune.models.loading import resolve_model
    from tests.test_models_gguf import write_gguf

    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "store"))
    root = tmp_path / "site"
    root.mkdir()
    write_gguf(root / "odd.gguf", "notanarch")
    with http_file_server(root) as server:
        with pytest.raises(ModelError, match=r"odd\.gguf: GGUF architecture 'notanarch' is not supported"):
            resolve_model(f"{server.url}/odd.gguf")  # downloaded, then read like a local .gguf file
    [local] = list(cache.rglob("odd.gguf"))
    assert local.read_bytes() == (root / "odd.gguf").read_bytes()


def test_a_token_in_the_query_is_no_part_of_the_data_key(tmp_path, cache, monkeypatch):
    """`?token=` / `?api_key=` / `?code=` are masked as secrets in every record, so, like a SAS signature, they
    are not what is read: two users with their own tokens get the same data fingerprint, fetched once."""
    from slimtune.config.schema import DataConfig
    from slimtune.data.fingerprint import data_fingerprint

    root = tmp_path / "site"
    root.mkdir()
    (root / "train.jsonl").write_text(ROWS)
    transfers = Transfers(monkeypatch)
    prints = []
    with http_file_server(root) as server:
        for user in ("alice", "bob"):
            url = f"{server.url}/train.jsonl?split=all&token={user}Token01&api_key={user}Key02&code={user}Code03"
            dl.set_download_root(cache.parent)
            config = DataConfig(name="d", load_dataset_config={"data_name": "json", "data_files": url})
            prints.append(data_fingerprint(config))
    assert prints[0] == prints[1]
    assert transfers.bytes == len(ROWS)
    for path in cache.rglob("*"):
        assert not path.is_file() or b"alice" not in path.read_bytes(), path
