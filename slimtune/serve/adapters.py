"""The adapters `slimtune serve` loads: `--adapter NAME=PATH` pairs, or those the ExtractAdapters pass wrote
beside the base; each checked against the base before onnxruntime_genai loads it (models/onnx_adapters.py),
since onnxruntime_genai itself fails only at the first request, with an obscure message."""

from __future__ import annotations

from pathlib import Path

from slimtune.errors import UserError
from slimtune.models.onnx_adapters import ADAPTERS_DIR, check_adapter_file


def parse_adapter_args(values: list[str] | None) -> dict[str, Path]:
    """NAME=PATH pairs from --adapter, checked: names unique and usable in a model id (no ':')."""
    out: dict[str, Path] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(
                f"--adapter {value!r}: write NAME=PATH, e.g. --adapter tone=adapters/tone.onnx_adapter"
            )
        if ":" in name or "/" in name:
            raise UserError(f"--adapter {value!r}: the name may not hold ':' or '/'")
        if name in out:
            raise UserError(f"--adapter {name!r} is given twice")
        out[name] = Path(path)
    return out


def check_adapters(base: Path, kind: str | None, adapters: dict[str, Path]) -> None:
    if kind != "onnx":
        raise UserError(
            f"--adapter: adapters are served on an ONNX Runtime GenAI base; {base} is not one (merge the "
            "adapter into the model, or export the base with the ExtractAdapters pass)"
        )
    for name, path in adapters.items():
        try:
            check_adapter_file(base, path)
        except UserError as err:
            raise UserError(f"--adapter {name}: {err}") from None


def found_adapters(base: Path) -> dict[str, Path]:
    """The adapters the ExtractAdapters pass wrote beside the base (adapters/NAME.onnx_adapter), by name."""
    return {p.stem: p for p in sorted((base / ADAPTERS_DIR).glob("*.onnx_adapter"))}
