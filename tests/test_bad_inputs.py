"""The bad input catalogue: every folder under tests/bad_inputs/<kind>/<case>/ is one bad config, data file or
model, run through the real CLI. Each must end with exit code 2 and a message that names the problem and where
it is (tests/bad_inputs/README.md), with no traceback and nothing written to output_dir.

`expect.json` in each case folder says what the message must contain, so no case can pass by failing for some
other reason: `problem` fragments name what is wrong, `where` fragments the key path, file:line or folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from slimtune.cli.main import main

CATALOGUE = Path(__file__).parent / "bad_inputs"
KINDS = ("config", "data", "model")
CASES = sorted(p for kind in KINDS for p in (CATALOGUE / kind).iterdir() if (p / "expect.json").is_file())


@pytest.fixture(autouse=True)
def _forget_secrets():
    """Secrets a config names are remembered for the process (as in one CLI run); not across tests."""
    from slimtune import redact

    yield
    redact.forget()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("catalogue") / "tiny-llama")


@pytest.fixture
def workspace(tmp_path, tiny_model, monkeypatch) -> Path:
    """A copy of the catalogue's shared files; cases are copied beside it so their relative paths hold."""
    shutil.copytree(CATALOGUE / "_shared", tmp_path / "_shared")
    monkeypatch.setenv("SLIMTUNE_TEST_MODEL", str(tiny_model))
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "home"))  # GGUF conversions land here, not in ~
    monkeypatch.delenv("SLIMTUNE_TEST_NOT_SET", raising=False)
    return tmp_path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """main() in this process, its stdout and stderr together. Log handlers from an earlier call write to
    that test's (closed) capture; main() sets logging up afresh when there are none, as in a new process."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out + err


def run_only(case: Path) -> str | None:
    """Why a case cannot be checked by `slimtune validate` (it needs the GPU, or fails only once weights load), or
    None: then validate must refuse it as run does."""
    return json.loads((case / "expect.json").read_text()).get("run_only")


def run_case(case: Path, command: str, workspace: Path, capsys) -> tuple[int, str, Path, dict]:
    """`slimtune run --config CONFIG` or `slimtune validate CONFIG` on a copy of the case beside the shared files.
    The config's own output_dir and cache_dir are used (relative: inside the case folder), so a case about them
    means the same to both commands. validate writes nothing; a refused run writes no output_dir and no cache
    entry (a run-only case, refused inside its pass, leaves the cache's locks and work folders)."""
    from slimtune.config.load import load_config

    expect = json.loads((case / "expect.json").read_text())
    folder = workspace / case.parent.name / case.name
    shutil.copytree(case, folder)
    before = files_under(folder)
    config = folder / expect.get("config", "config.json")
    argv = ["run", "--config", str(config)] if command == "run" else ["validate", str(config)]
    code, text = run_cli(argv, capsys)
    written = sorted(files_under(folder) - before)
    if command == "run" and run_only(case):
        cache = Path(load_config(config).config.cache_dir).relative_to(folder)
        written = [w for w in written if Path(w).parts[0] != cache.parts[0] or "entries" in Path(w).parts]
    assert not written, f"files were written next to the config (output_dir, cache entries): {written}"
    return code, text, folder, expect


def test_catalogue_size():
    counts = {kind: sum(1 for c in CASES if c.parent.name == kind) for kind in KINDS}
    assert counts["config"] >= 30 and counts["data"] >= 10 and counts["model"] >= 6, counts


def test_few_cases_are_run_only():
    """validate checks what run checks before weights load; the cases it cannot see are few, each with a reason."""
    excluded = {f"{c.parent.name}/{c.name}": run_only(c) for c in CASES if run_only(c) is not None}
    assert all(isinstance(why, str) and len(why) > 20 for why in excluded.values()), excluded
    assert len(excluded) <= 5, excluded


LEGS = [
    (case, command)
    for case in CASES
    for command in ("run", "validate")
    if command == "run" or not run_only(case)
]


@pytest.mark.parametrize(
    ("case", "command"), LEGS, ids=[f"{c.parent.name}/{c.name}-{command}" for c, command in LEGS]
)
def test_bad_input(case, command, workspace, capsys):
    """The same exit code (2) and the same named problem and place from `run` and from `validate`."""
    code, text, folder, expect = run_case(case, command, workspace, capsys)
    assert expect["problem"] and expect["where"], "a case must say what the message names"
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    assert code == 2, f"exit code {code}:\n{text}"
    for fragment in expect["problem"]:
        assert fragment in text, f"problem {fragment!r} not named in:\n{text}"
    for fragment in expect["where"]:
        assert fragment in text, f"place {fragment!r} not named in:\n{text}"
    assert text.count("\n") < 40, f"the message is not short:\n{text}"


@pytest.mark.parametrize("name", ["valid.json", "valid_old_form.json"])
def test_the_configs_the_cases_are_made_from_are_valid(name, workspace, capsys):
    """Each config case is one of these with one thing broken: they themselves must pass validation, or the
    cases would prove nothing about the one thing."""
    folder = workspace / "config" / "valid"
    folder.mkdir(parents=True)
    shutil.copy(CATALOGUE / "_shared" / name, folder / "config.json")
    code, text = run_cli(["validate", str(folder / "config.json")], capsys)
    assert code == 0, text
    assert "warning" not in text.lower(), text  # e.g. a data file that is not found


def test_the_shared_data_runs(workspace, capsys, monkeypatch):
    """The data and model the data cases share go through slimtune's checks before any pass (the cases break
    one thing each). Stops right after the checks: no training here."""
    from slimtune.engine import chain

    reached = []

    def stop(*args, **kwargs):
        reached.append(True)
        raise SystemExit(0)

    monkeypatch.setattr(chain, "run_pass", stop)
    folder = workspace / "config" / "valid"
    folder.mkdir(parents=True)
    shutil.copy(CATALOGUE / "_shared" / "valid.json", folder / "config.json")
    code, text = run_cli(["run", "--config", str(folder / "config.json")], capsys)
    assert reached and code == 0, text
    assert os.environ["SLIMTUNE_TEST_MODEL"]


@pytest.mark.parametrize(
    "case", ["config/r_zero", "data/latin1_bytes", "model/gguf_unsupported_architecture"]
)
def test_a_case_per_kind_through_a_real_process(case, workspace, tiny_model):
    """The same answers from `python -m slimtune` in its own process (logging, exit code, stderr as a user
    sees them), not only from main() called in this one."""
    import subprocess
    import sys

    expect = json.loads((CATALOGUE / case / "expect.json").read_text())
    folder = workspace / case
    shutil.copytree(CATALOGUE / case, folder)
    out = workspace / "run-output"
    argv = ["run", "--config", str(folder / expect["config"]), "--output-dir", str(out)]
    env = {**os.environ, "SLIMTUNE_TEST_MODEL": str(tiny_model), "SLIMTUNE_HOME": str(workspace / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "slimtune", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    for fragment in expect["problem"] + expect["where"]:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert not out.exists()
