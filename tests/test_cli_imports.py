"""`import slimtune`, `slimtune --help`, `slimtune validate` and `slimtune config upgrade` stay light: no torch,
transformers, datasets or peft (each costs seconds to import). Timing lives in benchmarks/cli_startup.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = str(ROOT / "tests" / "configs" / "seed_azure.json")
HEAVY = ("torch", "transformers", "datasets", "peft", "onnxruntime", "onnxruntime_genai", "onnx")

CHECK = """
import sys
{body}
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
assert not heavy, f"imported: {{heavy}}"
print("light")
"""

CALL_MAIN = """
from slimtune.cli.main import main
try:
    rc = main({argv!r})
except SystemExit as exit_:
    rc = exit_.code
assert rc == 0, rc
"""


@pytest.mark.parametrize(
    "body",
    [
        "import slimtune",
        "import slimtune.config.load, slimtune.config.summary, slimtune.passes.registry\n"
        "slimtune.passes.registry.all_passes()",
        CALL_MAIN.format(argv=["--help"]),
        CALL_MAIN.format(argv=["validate", "--config-only", SEED]),
        CALL_MAIN.format(
            argv=[
                "-v",
                "validate",
                "--config-only",
                str(ROOT / "tests" / "configs" / "seed_local_current.yaml"),
            ]
        ),
        CALL_MAIN.format(argv=["config", "upgrade", SEED]),
        CALL_MAIN.format(argv=["passes"]),
    ],
    ids=["import", "config-modules", "help", "validate", "validate-yaml", "upgrade", "passes"],
)
def test_stays_light(body):
    code = CHECK.format(body=body, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith("light")


def test_validate_loads_data_and_the_tokenizer_but_no_model():
    """Without --config-only, validate reads the data (datasets), the model's headers and, to size the LoRA
    micro-batch as run will, the tokenizer (transformers): what run does before the weights load. It loads no
    model class, no peft and no ONNX runtime."""
    body = CALL_MAIN.format(argv=["validate", str(ROOT / "examples" / "emotion" / "config.yaml")])
    heavy = ("peft", "onnxruntime", "onnxruntime_genai", "transformers.modeling_utils")
    code = CHECK.format(body=body, heavy=heavy)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith("light")
