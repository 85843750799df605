"""slimtune/files.py: whole-content hashing (also for big data files), the size+mtime sidecar, fingerprints,
folder sizes that skip symbolic links, and atomic writes that never leave a part or a temporary file."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from slimtune import files
from slimtune.data.fingerprint import data_fingerprint, file_digest

BIG = (64 << 20) + (3 << 20)  # past the 64 MiB above which data files used to be hashed only in part


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(files, "_memo", {})


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Paths that files.sha256_file read, in order."""
    seen: list[str] = []
    real = files.sha256_file

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(files, "sha256_file", counting)
    return seen


def sparse(path: Path, size: int, byte_at: int | None = None, byte: bytes = b"x") -> Path:
    """A file of `size` bytes that takes almost no disk: zeros, with one byte written at `byte_at`."""
    with open(path, "wb") as f:
        f.truncate(size)
        if byte_at is not None:
            f.seek(byte_at)
            f.write(byte)
    return path


def test_big_data_files_differing_only_in_the_middle_get_different_fingerprints(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    sparse(a / "train.jsonl", BIG, byte_at=BIG // 2, byte=b"x")
    sparse(b / "train.jsonl", BIG, byte_at=BIG // 2, byte=b"y")
    for path in (a / "train.jsonl", b / "train.jsonl"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # same size, same mtime, same first and last MiB
    config = {"name": "d", "load_dataset_config": {"data_files": "train.jsonl"}}  # the same config in both
    monkeypatch.chdir(a)
    in_a = data_fingerprint(config)
    monkeypatch.chdir(b)
    in_b = data_fingerprint(config)
    assert in_a != in_b
    assert file_digest(a / "train.jsonl") == hashlib.sha256((a / "train.jsonl").read_bytes()).hexdigest()


def test_a_data_file_is_read_once_per_path_size_and_mtime(tmp_path, reads):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n")
    config = {"name": "d", "load_dataset_config": {"data_files": str(path)}}
    first = data_fingerprint(config)
    assert data_fingerprint(config) == first and len(reads) == 1
    os.utime(path, ns=(1, 1))  # same content, new mtime: read again, same fingerprint
    assert data_fingerprint(config) == first and len(reads) == 2


def test_small_data_file_digest_is_the_plain_sha256(tmp_path):
    """Data files under 64 MiB keep the digest they had before hashing moved here (cache keys unchanged)."""
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "a"}\n')
    assert file_digest(path) == hashlib.sha256(b'{"text": "a"}\n').hexdigest()
    assert file_digest(tmp_path / "missing") == "missing"


def test_sidecar_spares_reading_an_unchanged_file(tmp_path, monkeypatch, reads):
    path, sidecar = tmp_path / "model.bin", tmp_path / "cache" / "hashes.json"
    path.write_bytes(b"weights" * 1000)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert files.sha256_remembered(path, sidecar) == expected and len(reads) == 1
    record = json.loads(sidecar.read_text())[str(path.resolve())]
    assert record == {"size": 7000, "mtime_ns": path.stat().st_mtime_ns, "sha256": expected}

    monkeypatch.setattr(files, "_memo", {})  # a new process: only the sidecar remembers
    assert files.sha256_remembered(path, sidecar) == expected and len(reads) == 1

    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime + 1, mtime + 1))  # a changed mtime: read again
    assert files.sha256_remembered(path, sidecar) == expected and len(reads) == 2

    mtime = path.stat().st_mtime_ns
    path.write_bytes(b"weights" * 1001)
    os.utime(path, ns=(mtime, mtime))  # a changed size, with the mtime put back: read again
    monkeypatch.setattr(files, "_memo", {})
    assert files.sha256_remembered(path, sidecar) == hashlib.sha256(b"weights" * 1001).hexdigest()
    assert len(reads) == 3


def test_sidecar_keeps_entries_of_other_files(tmp_path):
    sidecar = tmp_path / "hashes.json"
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    files.sha256_remembered(tmp_path / "a", sidecar)
    files.sha256_remembered(tmp_path / "b", sidecar)
    assert set(json.loads(sidecar.read_text())) == {str(tmp_path / "a"), str(tmp_path / "b")}


def test_a_corrupt_sidecar_means_hashing_again(tmp_path, reads):
    sidecar = tmp_path / "hashes.json"
    sidecar.write_text("{not json")
    (tmp_path / "a").write_text("a")
    assert files.sha256_remembered(tmp_path / "a", sidecar) == hashlib.sha256(b"a").hexdigest()
    assert len(reads) == 1 and str(tmp_path / "a") in json.loads(sidecar.read_text())


def test_fingerprint_of_a_folder_rereads_only_changed_files(tmp_path, monkeypatch, reads):
    model, sidecar = tmp_path / "model", tmp_path / "hashes.json"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\1" * 100)
    first = files.fingerprint(model, sidecar)
    assert len(reads) == 2
    monkeypatch.setattr(files, "_memo", {})
    assert files.fingerprint(model, sidecar) == first and len(reads) == 2
    (model / "config.json").write_text('{"a": 1}')
    second = files.fingerprint(model, sidecar)
    assert second != first and reads[2:] == [str((model / "config.json").resolve())]
    (model / "sub" / "weights.bin").rename(model / "weights.bin")  # same content, another name
    assert files.fingerprint(model, sidecar) not in (first, second)


def test_fingerprint_format_is_pinned(tmp_path):
    """Model cache keys are built on it: changing the format would miss every cache entry."""
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"a")
    (folder / "sub" / "b.txt").write_bytes(b"b")
    sha = {name: hashlib.sha256(name.encode()).hexdigest() for name in "ab"}
    expected = hashlib.sha256(f"a.txt\0{sha['a']}\nsub/b.txt\0{sha['b']}\n".encode()).hexdigest()
    assert files.fingerprint(folder) == expected
    single = hashlib.sha256(f"a.txt\0{sha['a']}\n".encode()).hexdigest()
    assert files.fingerprint(folder / "a.txt") == single


def test_folder_size_ignores_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"\0" * 1000)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"\0" * 10)
    (folder / "sub" / "b.bin").write_bytes(b"\0" * 5)
    (folder / "link.bin").symlink_to(outside / "big.bin")
    (folder / "linked_dir").symlink_to(outside, target_is_directory=True)
    assert files.folder_size(folder) == 15
    assert files.folder_size(folder / "a.bin") == 10


def test_atomic_write_replaces_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out" / "record.json"
    files.write_json_atomic(path, {"a": 1})
    files.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    files.write_bytes_atomic(tmp_path / "out" / "blob", b"\0\1")
    assert (tmp_path / "out" / "blob").read_bytes() == b"\0\1"
    assert sorted(p.name for p in path.parent.iterdir()) == ["blob", "record.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_atomic_write_keeps_the_old_content_and_no_temporary_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "report.md"
    path.write_text("old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)  # fsync fails after the new text is partly on its way
    with pytest.raises(OSError, match="No space"):
        files.write_text_atomic(path, "new " * 10_000)
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        files.write_text_atomic(tmp_path / "run.json", "{}")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_makes_files_others_can_read(tmp_path):
    """Reports are shared: the file gets the umask's permissions, not a temporary file's 0600."""
    old = os.umask(0o022)
    try:
        files.write_text_atomic(tmp_path / "report.html", "<html>")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644


def test_concurrent_atomic_writes_of_one_path_never_collide(tmp_path):
    path, errors = tmp_path / "shared.json", []
    texts = [str(n) * 5000 for n in range(4)]

    def writer(text):
        try:
            for _ in range(20):
                files.write_text_atomic(path, text)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


def test_files_module_imports_nothing_of_slimtune():
    tree = ast.parse(Path(files.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.split(".")[0] == "slimtune"]
