"""The pass's work: a plain copy of the input folder, plus MARKER.txt."""

import shutil
from pathlib import Path

from slimtune.models.ref import ModelRef


def run(ctx, params):
    shutil.copytree(ctx.input.path, ctx.output_dir, dirs_exist_ok=True)
    Path(ctx.output_dir, "MARKER.txt").write_text(params.text + "\n")
    ctx.metrics["marker"] = params.text
    return ModelRef(str(ctx.output_dir), "hf")
