"""`slimtune report RUN_DIR`: renders both reports from run.json; a folder without one is a user error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from slimtune.errors import EXIT_OK, EXIT_USER

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(__file__).parent / "fixtures" / "run_sample.json"
_SCRIPT = Path(sys.executable).with_name("slimtune")
SLIMTUNE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "slimtune"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SLIMTUNE, *args], capture_output=True, text=True, cwd=ROOT)


def test_report_renders_a_run_folder(tmp_path):
    shutil.copy(SAMPLE, tmp_path / "run.json")
    result = cli("report", str(tmp_path))
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / "report.md"), str(tmp_path / "report.html")]
    assert "| builder (int4 ONNX) | onnx | 90.7% |" in (tmp_path / "report.md").read_text()
    assert 'id="chart-tradeoff"' in (tmp_path / "report.html").read_text()


def test_report_renders_again_over_old_reports(tmp_path):
    shutil.copy(SAMPLE, tmp_path / "run.json")
    (tmp_path / "report.md").write_text("stale")
    assert cli("report", str(tmp_path)).returncode == EXIT_OK
    assert (tmp_path / "report.md").read_text().startswith("# slimtune run report")


def test_report_without_run_json_is_a_user_error(tmp_path):
    result = cli("report", str(tmp_path))
    assert result.returncode == EXIT_USER
    assert f"{tmp_path / 'run.json'}: not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "report.md").exists()


def test_report_with_broken_run_json_is_a_user_error(tmp_path):
    (tmp_path / "run.json").write_text('{"status": "ok", "passes": [\n')
    result = cli("report", str(tmp_path))
    assert result.returncode == EXIT_USER
    assert "run.json:2: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
