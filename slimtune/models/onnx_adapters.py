"""LoRA adapters beside one ONNX base: the adapter's weights as graph inputs, its values in `.onnx_adapter` files
that ONNX Runtime GenAI loads (`og.Adapters`) and switches per request.

ModelBuilder, given a PEFT adapter and a float precision, writes the LoRA path of every adapted MatMul as two
MatMuls whose weights are initializers named `...lora_A.MatMul.weight` / `...lora_B.MatMul.weight` (B already
scaled by alpha / r). `make_lora_inputs` turns those into graph inputs with the rank as a free dimension and an
empty (rank 0) default, so the base runs alone too, and returns their values. The base folder records the inputs
(name, shape, dtype) and a fingerprint in `adapters.json`; an adapter file carries the fingerprint as its
model version (its first 28 bits), so an adapter made for another base is refused by `check_adapter_file` before loading.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from slimtune.errors import UserError

MANIFEST = "adapters.json"
ADAPTERS_DIR = "adapters"  # where the ExtractAdapters pass writes the adapter files, beside the base
RANK = "lora_rank"
_MARKERS = (".lora_A.", ".lora_B.")


def is_lora_weight(name: str) -> bool:
    return any(marker in name for marker in _MARKERS)


def make_lora_inputs(model: Any) -> dict[str, Any]:
    """Turns the LoRA weight initializers of an onnx ModelProto into graph inputs (in place) and returns their
    values by name; an empty dict when the graph has none."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    values: dict[str, Any] = {}
    kept = []
    for init in model.graph.initializer:
        if not is_lora_weight(init.name):
            kept.append(init)
            continue
        array = numpy_helper.to_array(init)
        if array.ndim != 2 or array.dtype != np.float32:
            raise UserError(
                f"LoRA weight {init.name} is {array.dtype}{list(array.shape)}; expected 2-D float32"
            )
        values[init.name] = array
        is_a = ".lora_A." in init.name
        shape = [array.shape[0], RANK] if is_a else [RANK, array.shape[1]]
        model.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, shape))
        empty = np.zeros((array.shape[0], 0) if is_a else (0, array.shape[1]), np.float32)
        kept.append(numpy_helper.from_array(empty, init.name))  # the default: no adapter
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return values


def lora_weights_of(model: Any) -> dict[str, Any]:
    """The LoRA weight initializers of an onnx ModelProto (a ModelBuilder export made from an adapter)."""
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if is_lora_weight(i.name)}


def default_adapter(base: Path) -> Path | None:
    """The adapter the base was exported with (ExtractAdapters' input adapter), which evaluation and `slimtune
    generate` apply unless told otherwise: the run's model is the fine-tuned one. None for a plain base."""
    manifest = base / MANIFEST
    if not manifest.is_file():
        return None
    name = json.loads(manifest.read_text()).get("default")
    return base / ADAPTERS_DIR / f"{name}.onnx_adapter" if name else None


def write_manifest(base: Path, values: dict[str, Any], default: str | None = None) -> str:
    """adapters.json: the LoRA inputs (shape with the rank free, dtype) and the base's fingerprint, a hash of
    its graph and weight files. Returns the fingerprint."""
    digest = hashlib.sha256()
    for path in sorted(base.glob("model.onnx*")):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    inputs = {
        name: {"shape": [v.shape[0], RANK] if ".lora_A." in name else [RANK, v.shape[1]], "dtype": "float32"}
        for name, v in sorted(values.items())
    }
    fingerprint = digest.hexdigest()
    manifest = {"fingerprint": fingerprint, "default": default, "inputs": inputs}
    (base / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return fingerprint


def model_version(fingerprint: str) -> int:
    """The base's fingerprint as an adapter file holds it: an int32 field, so its first 28 bits (a check
    against mixing bases up, not a security measure)."""
    return int(fingerprint[:7], 16)


def write_adapter(path: Path, values: dict[str, Any], fingerprint: str) -> None:
    import onnxruntime as ort

    path.parent.mkdir(parents=True, exist_ok=True)
    adapter = ort.AdapterFormat()
    adapter.set_model_version(model_version(fingerprint))
    adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in values.items()})
    adapter.export_adapter(str(path))


def check_adapter_file(base: Path, path: Path) -> None:
    """The adapter fits the base: made for it (fingerprint), every parameter a LoRA input of the base with the
    base's dimensions and dtype, and A and B of each weight of one rank. Raises UserError naming the mismatch."""
    import onnxruntime as ort

    manifest_path = base / MANIFEST
    if not manifest_path.is_file():
        raise UserError(
            f"adapter {path}: the base {base} has no {MANIFEST}: it was not exported with LoRA inputs, so no "
            "adapter can be applied to it; build it with the ExtractAdapters pass"
        )
    manifest = json.loads(manifest_path.read_text())
    if not path.is_file():
        raise UserError(f"adapter {path}: no such file")
    if path.suffix != ".onnx_adapter":
        raise UserError(f"adapter {path}: not an ONNX Runtime adapter file (.onnx_adapter)")
    try:
        adapter = ort.AdapterFormat.read_adapter(str(path))
    except Exception as err:  # onnxruntime raises plain exceptions for a corrupt file
        raise UserError(f"adapter {path}: onnxruntime could not read it: {err}") from None
    if adapter.get_model_version() != model_version(manifest["fingerprint"]):
        raise UserError(
            f"adapter {path} was exported for another base (its base fingerprint "
            f"{adapter.get_model_version():07x}, {base}'s is {manifest['fingerprint'][:7]})"
        )
    inputs = manifest["inputs"]
    params = {name: value.numpy() for name, value in adapter.get_parameters().items()}
    problems = []
    ranks: dict[str, set[int]] = {}
    for name, value in sorted(params.items()):
        spec = inputs.get(name)
        if spec is None:
            problems.append(f"{name} is no LoRA input of the base")
            continue
        if str(value.dtype) != spec["dtype"]:
            problems.append(f"{name} is {value.dtype}, the base takes {spec['dtype']}")
        fixed = 0 if spec["shape"][0] != RANK else 1
        if value.ndim != 2 or value.shape[fixed] != spec["shape"][fixed]:
            problems.append(f"{name} has shape {list(value.shape)}, the base takes {spec['shape']}")
            continue
        module = name.replace(".lora_A.", ".lora_X.").replace(".lora_B.", ".lora_X.")
        ranks.setdefault(module, set()).add(int(value.shape[1 - fixed]))
    problems += [
        f"{m.replace('.lora_X.', '.lora_A/B.')}: A and B ranks differ {sorted(r)}"
        for m, r in ranks.items()
        if len(r) > 1
    ]
    if problems:
        raise UserError(f"adapter {path} does not fit the base {base}: " + "; ".join(problems[:5]))


def adapter_rank(path: Path) -> int:
    """The largest LoRA rank in an adapter file."""
    import onnxruntime as ort

    params = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
    return max(min(v.numpy().shape) for v in params.values())
