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
    assert cache.problems(entry) == [f"{entry.output / 'model.safetensors'}: content differs"]


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


def test_an_edit_of_the_same_size_is_a_miss_that_names_the_file(tmp_path, capsys):
    """An edit in place (say a number in genai_config.json) keeps the size; its moved mtime has the content
    compared on lookup, and the run is told which file changed, where, instead of silently rebuilding."""
    import os

    cache = Cache(tmp_path)
    entry = commit(cache, {"genai_config.json": b'{"top_k": 50}', "model.onnx": b"x" * 100})
    edited = entry.output / "genai_config.json"
    capsys.readouterr()
    edited.write_bytes(b'{"top_k": 10}')
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    assert cache.lookup(KEY) is None
    said = capsys.readouterr().out
    assert f"{edited}: content differs" in said and "changed after slimtune wrote it" in said
    assert cache.lookup(KEY) is None and capsys.readouterr().out == ""  # said once per process

    touched = commit(cache, {"a": b"1"})  # a file touched but unchanged is still a hit
    os.utime(touched.output / "a", ns=(0, 0))
    assert cache.lookup(KEY) is not None


def test_a_rebuilt_changed_entry_is_kept_aside_listed_and_cleaned(tmp_path, capsys):
    from slimtune.cli.main import main

    cache = Cache(tmp_path)
    entry = commit(cache, {"genai_config.json": b"{}"})
    (entry.output / "genai_config.json").write_bytes(b'{"edited": true}')
    assert cache.lookup(KEY) is None
    capsys.readouterr()
    fresh = commit(cache, {"genai_config.json": b"{}"})  # the run rebuilds it into a fresh entry
    assert cache.lookup(KEY).path == fresh.path
    (aside,) = (tmp_path / "changed").iterdir()
    assert (aside / "output" / "genai_config.json").read_bytes() == b'{"edited": true}'
    assert str(aside) in capsys.readouterr().out

    assert main(["cache", "--cache-dir", str(tmp_path), "verify"]) == 2
    out = capsys.readouterr().out
    assert str(aside) in out and "1 set aside" in out
    assert main(["cache", "--cache-dir", str(tmp_path), "clean", "--partial"]) == 0
    assert "removed 1 folder (" in capsys.readouterr().out
    assert not aside.exists() and cache.lookup(KEY) is not None


def test_clean_says_what_it_removed_and_then_that_nothing_is_left(tmp_path, capsys):
    from slimtune.cli.main import main

    cache = Cache(tmp_path)
    commit(cache, {"model.onnx": b"x" * 2_000_000})
    for n in range(3):  # what killed runs leave
        leftover = tmp_path / "tmp" / f"{'b' * 64}.9999{n}.0" / "output"
        leftover.mkdir(parents=True)
        (leftover / "part").write_bytes(b"y" * 500_000)
    clean = ["cache", "--cache-dir", str(tmp_path), "clean"]
    capsys.readouterr()
    assert main([*clean, "--partial"]) == 0
    assert f"removed 3 folders (1.4 MiB) from {tmp_path}" in capsys.readouterr().out
    assert main([*clean, "--partial"]) == 0
    assert capsys.readouterr().out.strip() == f"nothing to remove in {tmp_path}"
    assert cache.lookup(KEY) is not None
    assert main(clean) == 0
    assert "removed 1 folder (1.9 MiB)" in capsys.readouterr().out
    assert main(clean) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_published_files_are_copies_an_edit_never_reaches_the_cache(tmp_path):
    from slimtune.engine.runner import publish_model
    from slimtune.models.ref import ModelRef

    cache = Cache(tmp_path / "cache")
    entry = commit(cache, {"genai_config.json": b'{"top_k": 50}', "model.onnx": b"x" * 1000})
    dest = publish_model(ModelRef(str(entry.output), "onnx"), tmp_path / "out" / "model")
    published = dest / "genai_config.json"
    assert published.stat().st_ino != (entry.output / "genai_config.json").stat().st_ino
    assert published.stat().st_nlink == 1
    published.write_bytes(b'{"top_k": 10}')
    assert (entry.output / "genai_config.json").read_bytes() == b'{"top_k": 50}'
    assert cache.lookup(KEY) is not None and cache.problems(entry) == []
    assert (dest / "model.onnx").read_bytes() == b"x" * 1000
