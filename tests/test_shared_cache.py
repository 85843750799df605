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
import socket
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

pytest_plugins = ["tests.servers"]  # its fixtures: moto, azurite

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

        env = {**s3_env(server), "SLIMTUNE_TEST_TOKEN": HUB_TOKEN}
        boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=AWS_KEY_ID,
            aws_secret_access_key=AWS_SECRET,
            region_name="us-east-1",
        ).create_bucket(Bucket=name)
        return f"s3://{name}", env
    from azure.storage.blob import BlobServiceClient

    env = {**server.env, "SLIMTUNE_TEST_TOKEN": HUB_TOKEN}
    BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"]).create_container(name)
    return f"az://{name}", env


@pytest.fixture(autouse=True)
def hub_token(monkeypatch):
    monkeypatch.setenv("SLIMTUNE_TEST_TOKEN", HUB_TOKEN)


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


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def write_config(folder: Path, model: Path, cache_dir: str, output_dir: str, name: str = "config") -> Path:
    """LoRA (a few steps, a `${ENV}` hub token in its arguments) then a merge, on the tiny model."""
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [emotion_data_config(40, max_seq_len=80)],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 4,
                "alpha": 8,
                "train_data_config": "emotion",
                "training_args": {
                    "max_steps": 4,
                    "per_device_train_batch_size": 4,
                    "seed": 1,
                    "hub_token": "${SLIMTUNE_TEST_TOKEN}",
                },
            },
            "merge": {"type": "MergeAdapterWeights"},
        },
        "cache_dir": cache_dir,
        "output_dir": output_dir,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pass_keys(config: Path, scratch: Path) -> list[str]:
    """The cache keys of the config's passes, computed without running anything (they do not depend on
    cache_dir: a local one is used)."""
    from slimtune.config.load import load_config
    from slimtune.engine.chain import chain_keys, open_session

    loaded = load_config(config)
    loaded.config.cache_dir = str(scratch)
    return chain_keys(open_session(loaded, read_only=True), loaded.passes)


class Run:
    """One `slimtune run` process with its own SLIMTUNE_HOME (its own mirror: another machine)."""

    def __init__(self, config: Path, home: Path, env: dict[str, str]):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slimtune", "run", "--config", str(config)],
            cwd=config.parent,
            env={
                **os.environ,
                **env,
                "SLIMTUNE_HOME": str(home),
                "SLIMTUNE_TEST_TOKEN": HUB_TOKEN,
                "PYTHONUNBUFFERED": "1",
                "NO_PROXY": "127.0.0.1,localhost",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.extend(raw.replace("\r", "\n").splitlines())

    def wait_for(self, text: str, timeout: float = RUN_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"never printed {text!r}:\n{self.output()}")
            time.sleep(0.05)

    def finish(self) -> int:
        try:
            self.proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)
        return self.proc.returncode

    def output(self) -> str:
        return "\n".join(self.lines[-80:])


def remote_objects(fs, base: str) -> dict[str, bytes]:
    return {path[len(base) + 1 :]: fs.cat_file(path) for path in fs.find(base)}


def check_remote_cache(fs, base: str, keys: list[str]) -> dict[str, dict]:
    """Every key has a complete entry (each file as its manifest says) and no lease is left behind."""
    import hashlib

    objects = remote_objects(fs, base)
    assert not [name for name in objects if name.endswith("lease.json")], sorted(objects)
    manifests = {}
    for key in keys:
        manifest = json.loads(objects[f"entries/{key}/entry.json"])
        for name, expected in manifest["files"].items():
            data = objects[f"entries/{key}/output/{name}"]
            assert len(data) == expected["size"] and hashlib.sha256(data).hexdigest() == expected["sha256"], (
                name
            )
        manifests[key] = manifest
    return manifests


def model_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def assert_no_secrets(texts: dict[str, bytes], secrets: list[str]) -> None:
    leaked = [(name, s) for name, data in texts.items() for s in secrets if s.encode() in data]
    assert not leaked, f"secrets written: {leaked}"


def local_files(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in folder.rglob("*") if p.is_file()}


def seed_config(folder: Path, model: Path, data_url: str, cache_dir: str, output_dir: str, name: str) -> Path:
    """The source document's config as tests/test_storage_runs.py runs it on this machine (tiny model, local
    system, one LoRA step, merged, no int4 export) without its held-out evaluation, its data at `data_url`, its
    cache and output where given, a `${ENV}` hub token in the LoRA's training arguments."""
    from test_storage_runs import seed_on_tiny_model

    cfg = seed_on_tiny_model(model, folder)
    cfg["data_configs"][0]["load_dataset_config"]["params"]["data_files"] = data_url
    cfg["engine"]["cache_dir"], cfg["engine"]["output_dir"] = cache_dir, output_dir
    lora = cfg["passes"]["lora"]["config"]
    lora["training_args"]["hub_token"] = "${SLIMTUNE_TEST_TOKEN}"
    del lora["eval_dataset_size"]  # the held-out evaluation is per machine, not shared: time, not coverage
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def test_two_runs_of_the_seed_config_share_an_s3_cache(moto, tiny, tmp_path, in_env):
    """The source document's config, its data and its cache on S3. Both runs wait on a lease the test holds,
    then race: each entry is computed once, downloaded by the other run; one run publishes to S3, the other to a
    folder, and the two models are the same bytes."""
    from test_storage_runs import QA

    url, env = new_store("s3", moto, "shared")
    in_env(env)
    fs, base = open_filesystem(url)
    fs.pipe_file(f"{base}/data/train_data.json", "".join(json.dumps(r) + "\n" for r in QA).encode())
    cache, data = f"{url}/cache", f"{url}/data/train_data.json"
    configs = [
        seed_config(tmp_path, tiny, data, cache, f"{url}/out-a", "a"),
        seed_config(tmp_path, tiny, data, cache, str(tmp_path / "out-b"), "b"),
    ]
    keys = pass_keys(configs[0], tmp_path / "keys")
    held = f"{base}/cache/entries/{keys[0]}/lease.json"
    lease = {"owner": "test", "host": "test-host", "pid": 4242, "expires": time.time() + 600}
    etag = conditional.create(fs, held, json.dumps(lease).encode())
    assert etag

    runs = [Run(config, tmp_path / f"home-{config.stem}", env) for config in configs]
    for run in runs:  # each says that it waits, and for whom
        run.wait_for(f"waiting for another run (pid 4242 on test-host) working on cache entry {keys[0][:12]}")
    assert conditional.delete(fs, held, etag)
    for run in runs:
        assert run.finish() in (0, 3), run.output()  # 3: the seed's accuracy goal, on a tiny model

    records = [
        json.loads(fs.cat_file(f"{base}/out-a/run.json")),
        json.loads((tmp_path / "out-b/run.json").read_text()),
    ]
    for index, key in enumerate(keys):
        assert [r["passes"][index]["key"] for r in records] == [key, key]
        hits = sorted(r["passes"][index]["cache_hit"] for r in records)
        assert hits == [False, True], f"pass {index}: computed by both runs or by neither"
    computed_lora = runs[[r["passes"][0]["cache_hit"] for r in records].index(False)]
    other = runs[1 - runs.index(computed_lora)]
    assert any(f"cache entry {keys[0][:12]}.. uploaded to {cache}" in line for line in computed_lora.lines)
    assert any(f"cache entry {keys[0][:12]}.. (lora) from {cache}" in line for line in other.lines)
    check_remote_cache(fs, f"{base}/cache", keys)

    published = {
        name[len("out-a/model/") :]: data
        for name, data in remote_objects(fs, base).items()
        if name.startswith("out-a/model/")
    }
    assert published and published == model_files(tmp_path / "out-b" / "model")
    assert records[0]["final_model"]["path"] == f"{url}/out-a/model"
    assert records[0]["cache"]["dir"] == cache

    secrets = [AWS_KEY_ID, AWS_SECRET, HUB_TOKEN]
    assert_no_secrets(remote_objects(fs, base), secrets)
    assert_no_secrets(local_files(tmp_path / "home-a", tmp_path / "home-b", tmp_path / "out-b"), secrets)
    assert_no_secrets({"output": "\n".join(r.output() for r in runs).encode()}, secrets)


def test_partial_upload_expired_lease_and_corrupted_file_are_not_used(moto, tiny, tmp_path, in_env):
    """The store holds the LoRA entry's files without a manifest (an upload cut short) and a lease whose holder
    died, and a merge entry whose weights do not match its manifest. The run redoes both, saying why, and
    uploads them anew; the bad weights are never used."""
    import hashlib

    url, env = new_store("s3", moto, "sabotaged")
    in_env(env)
    fs, base = open_filesystem(url)
    config = write_config(tmp_path, tiny, f"{url}/cache", str(tmp_path / "out"))
    keys = pass_keys(config, tmp_path / "keys")
    entries = f"{base}/cache/entries"

    fs.pipe_file(f"{entries}/{keys[0]}/output/adapter_model.safetensors", b"half an upload")
    dead = {"owner": "gone", "host": "dead-host", "pid": 999, "expires": time.time() - 5}
    assert conditional.create(fs, f"{entries}/{keys[0]}/lease.json", json.dumps(dead).encode())
    good, bad = b"w" * 4096, b"w" * 4032 + bytes(64)  # same size, other content: only the sha256 tells
    weights = f"{entries}/{keys[1]}/output/model.safetensors"
    fs.pipe_file(weights, bad)
    manifest = {
        "key": keys[1],
        "pass_name": "merge",
        "kind": "hf",
        "files": {"model.safetensors": {"size": len(good), "sha256": hashlib.sha256(good).hexdigest()}},
    }
    fs.pipe_file(f"{entries}/{keys[1]}/entry.json", json.dumps(manifest).encode())

    run = Run(config, tmp_path / "home", env)
    assert run.finish() == 0, run.output()
    text = run.output()
    assert f"took over the expired lease of pid 999 on dead-host on cache entry {keys[0][:12]}" in text
    assert f"remote cache entry {keys[1][:12]}.. at {url}/cache/entries/{keys[1]} does not match" in text
    assert "output/model.safetensors: content differs (sha256)" in text
    record = json.loads((tmp_path / "out/run.json").read_text())
    assert [p["cache_hit"] for p in record["passes"]] == [False, False]
    check_remote_cache(fs, f"{base}/cache", keys)  # complete now, each file as its new manifest says
    final = (tmp_path / "out/model/model.safetensors").read_bytes()
    assert final == fs.cat_file(weights) and len(final) > len(bad)
    assert fs.cat_file(f"{entries}/{keys[0]}/output/adapter_model.safetensors") != b"half an upload"


def test_two_runs_share_an_azure_blob_cache(azurite, tiny, tmp_path, in_env):
    """The same on Azurite, the runs started together with nothing held: whichever takes each lease first
    computes that entry, the other waits for it and downloads it."""
    url, env = new_store("az", azurite, "shared")
    in_env(env)
    fs, base = open_filesystem(url)
    configs = [write_config(tmp_path, tiny, f"{url}/cache", str(tmp_path / f"out-{n}"), n) for n in "ab"]
    keys = pass_keys(configs[0], tmp_path / "keys")
    runs = [Run(config, tmp_path / f"home-{config.stem}", env) for config in configs]
    for run in runs:
        assert run.finish() == 0, run.output()
    records = [json.loads((tmp_path / f"out-{n}/run.json").read_text()) for n in "ab"]
    for index in range(len(keys)):
        hits = sorted(r["passes"][index]["cache_hit"] for r in records)
        assert hits == [False, True], f"pass {index}: computed by both runs or by neither"
    check_remote_cache(fs, f"{base}/cache", keys)
    assert model_files(tmp_path / "out-a/model") == model_files(tmp_path / "out-b/model")
    key = env["AZURE_STORAGE_CONNECTION_STRING"].split("AccountKey=")[1].split(";")[0]
    assert_no_secrets(remote_objects(fs, base), [key, HUB_TOKEN])
    assert_no_secrets(
        local_files(*(tmp_path / f"{d}-{n}" for d in ("home", "out") for n in "ab")), [key, HUB_TOKEN]
    )


# ---------------------------------------------------------------- mistakes (no training)


def validate(config: Path, *extra: str) -> int:
    from slimtune.cli.main import main

    return main(["validate", str(config), *extra])


@pytest.mark.parametrize(
    "cache_dir, output_dir, key, says",
    [
        ("gs://bucket/cache", "out", "cache_dir", "gs:// is not a place to keep results"),
        ("s3://bucket/cache", "s3://bucket/cache", "output_dir", "are the same place"),
        ("s3://bucket/cache", "s3://bucket/cache/out", "output_dir", "is inside cache_dir"),
        ("az://box/run/model/cache", "az://box/run", "cache_dir", "inside output_dir's model/"),
    ],
)
def test_bad_places_are_refused_before_anything_runs(
    tiny, tmp_path, capsys, cache_dir, output_dir, key, says
):
    config = write_config(tmp_path, tiny, cache_dir, output_dir)
    assert validate(config) == 2
    err = capsys.readouterr().err
    assert key in err and says in err and "Traceback" not in err


def test_a_bad_command_line_place_is_named(tiny, tmp_path, capsys):
    config = write_config(tmp_path, tiny, str(tmp_path / "cache"), str(tmp_path / "out"))
    assert validate(config, "--cache-dir", "https://example.invalid/cache") == 2
    err = capsys.readouterr().err
    assert "--cache-dir https://example.invalid/cache: https:// is not a place" in err


def test_missing_bucket_and_wrong_key_are_said_before_the_run(moto, azurite, tiny, tmp_path, capsys, in_env):
    in_env({**s3_env(moto), "SLIMTUNE_TEST_TOKEN": HUB_TOKEN})
    config = write_config(tmp_path, tiny, "s3://no-such-bucket/cache", str(tmp_path / "out"))
    assert validate(config) == 2
    err = capsys.readouterr().err
    assert "s3://no-such-bucket/cache" in err and "'no-such-bucket' does not exist" in err
    assert AWS_SECRET not in err

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    in_env({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}"})
    assert validate(config) == 2
    err = capsys.readouterr().err
    assert "s3://no-such-bucket/cache" in err and "connection refused" in err and "Traceback" not in err

    url, env = new_store("az", azurite, "locked")
    wrong = env["AZURE_STORAGE_CONNECTION_STRING"].replace("AccountKey=", "AccountKey=AAAA")
    in_env({**env, "AZURE_STORAGE_CONNECTION_STRING": wrong})
    config = write_config(tmp_path, tiny, f"{url}/cache", str(tmp_path / "out"))
    assert validate(config) == 2
    err = capsys.readouterr().err
    assert f"{url}/cache" in err and "access denied" in err and "AZURE_STORAGE_CONNECTION_STRING" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the cache's own operations (no training)


def fake_entry(cache, key: str, content: bytes) -> None:
    """Commit an entry of two files into `cache` (as a pass's run would), holding its lock."""
    with cache.lock(key):
        attempt = cache.new_attempt(key)
        (attempt / "output" / "sub").mkdir()
        (attempt / "output" / "model.bin").write_bytes(content)
        (attempt / "output" / "sub" / "config.json").write_text("{}")
        cache.commit(key, attempt, {"pass_name": "fake", "kind": "hf"})


@pytest.mark.parametrize("kind", ["s3", "az"])
def test_entries_travel_checked_and_a_local_only_entry_is_shared(
    kind, request, tmp_path, in_env, monkeypatch, capsys
):
    from slimtune.engine.shared_cache import SharedCache

    server = request.getfixturevalue("moto" if kind == "s3" else "azurite")
    url, env = new_store(kind, server, f"entries-{kind}")
    in_env(env)
    fs, base = open_filesystem(url)
    key = "a" * 64
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "machine-1"))
    fake_entry(SharedCache(url), key, b"weights" * 1000)
    assert sorted(remote_objects(fs, base)) == [
        f"entries/{key}/entry.json",
        f"entries/{key}/output/model.bin",
        f"entries/{key}/output/sub/config.json",
    ]

    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "machine-2"))
    entry = SharedCache(url).lookup(key)
    assert entry is not None and (entry.output / "model.bin").read_bytes() == b"weights" * 1000
    assert str(entry.path).startswith(str(tmp_path / "machine-2" / "remote"))
    assert SharedCache(url).lookup(key) is not None  # now from the mirror

    fs.rm_file(f"{base}/entries/{key}/entry.json")  # as if machine 1's upload had been cut short
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "machine-3"))
    assert SharedCache(url).lookup(key) is None  # files without a manifest: absent
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "machine-1"))
    cache = SharedCache(url)
    assert [e.key for e in cache.entries()] == [key] and not fs.exists(f"{base}/entries/{key}/entry.json")
    assert cache.lookup(key) is not None  # a run that hits its mirror puts the entry back on the store
    assert "uploaded to" in capsys.readouterr().out
    check_remote_cache(fs, base, [key])
