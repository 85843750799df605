"""The cache never serves an entry whose files differ from its manifest, and cleans up after killed attempts."""

from __future__ import annotations

import json

from slimtune.engine.cache import Cache

KEY = "a" * 64


def commit(cache: Cache, files: dict[str, bytes]):
    with cache.lock(KEY):
        attempt = cache.new_attempt(KEY)
        for name, data in files.items():
            path = attempt / "output" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return cache.commit(KEY, attempt, {"kind": "hf"})


def test_manifest_lists_every_file_with_size_and_hash(tmp_path):
    cache = Cache(tmp_path)
    entry = commit(cache, {"model.safetensors": b"x" * 1000, "sub/config.json": b"{}"})
    info = json.loads((entry.path / "entry.json").read_text())
    assert set(info["files"]) == {"model.safetensors", "sub/config.json"}
    assert info["files"]["model.safetensors"]["size"] == 1000 and info["size_bytes"] == 1002
    assert len(info["files"]["sub/config.json"]["sha256"]) == 64
    assert cache.lookup(KEY) is not None and cache.problems(entry) == []


def test_truncated_missing_or_extra_files_make_a_miss(tmp_path):
    cache = Cache(tmp_path)
    entry = commit(cache, {"model.safetensors": b"x" * 1000, "config.json": b"{}"})
    (entry.output / "model.safetensors").write_bytes(b"x" * 10)
    assert cache.lookup(KEY) is None
    (entry.output / "model.safetensors").write_bytes(b"x" * 1000)
    assert cache.lookup(KEY) is not None
    (entry.output / "stray.bin").write_bytes(b"1")
    assert cache.lookup(KEY) is None
    (entry.output / "stray.bin").unlink()
    (entry.output / "config.json").unlink()
    assert cache.lookup(KEY) is None


def test_same_size_corruption_is_found_by_a_full_check(tmp_path):
    cache = Cache(tmp_path)
    entry = commit(cache, {"model.safetensors": b"x" * 1000})
    (entry.output / "model.safetensors").write_bytes(b"y" * 1000)
    assert cache.problems(entry) == ["model.safetensors: content differs"]


def test_a_broken_entry_is_replaced_and_old_attempts_are_removed(tmp_path):
    cache = Cache(tmp_path)
    killed = tmp_path / "tmp" / f"{KEY}.99999.0"  # what a killed run leaves
    (killed / "output").mkdir(parents=True)
    (cache.work_dir(KEY) / "checkpoints").mkdir()
    broken = commit(cache, {"a": b"1"})
    assert not killed.exists() and not (tmp_path / "work" / KEY).exists()
    (broken.output / "a").unlink()
    assert cache.lookup(KEY) is None
    commit(cache, {"a": b"2"})
    assert (cache.lookup(KEY).output / "a").read_bytes() == b"2"
    assert not list((tmp_path / "tmp").iterdir())


def test_a_hit_removes_checkpoints_left_by_a_run_killed_after_committing(tmp_path):
    cache = Cache(tmp_path)
    commit(cache, {"a": b"1"})
    (cache.work_dir(KEY) / "checkpoints").mkdir()
    assert cache.lookup(KEY) is not None
    assert not (tmp_path / "work" / KEY).exists()


def test_lock_file_names_its_holder(tmp_path):
    import os

    cache = Cache(tmp_path)
    with cache.lock(KEY):
        assert (tmp_path / "locks" / f"{KEY}.lock").read_text() == str(os.getpid())
        assert cache._in_use(KEY)
    assert not cache._in_use(KEY)


def test_cache_verify_names_broken_entries_and_removes_them(tmp_path, capsys):
    from slimtune.cli.main import main

    cache = Cache(tmp_path)
    entry = commit(cache, {"model.safetensors": b"x" * 1000})
    assert main(["cache", "--cache-dir", str(tmp_path), "verify"]) == 0
    (entry.output / "model.safetensors").write_bytes(b"y" * 1000)
    capsys.readouterr()
    assert main(["cache", "--cache-dir", str(tmp_path), "verify"]) == 2
    assert "model.safetensors: content differs" in capsys.readouterr().out
    assert main(["cache", "--cache-dir", str(tmp_path), "verify", "--remove"]) == 0
    assert not list((tmp_path / "entries").iterdir())
