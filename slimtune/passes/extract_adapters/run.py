"""ExtractAdapters: the adapter's base exported once, int4, with LoRA inputs; each adapter an `.onnx_adapter`.

1. ModelBuilder (fp32) from the base and the input adapter: the LoRA path of each adapted MatMul is written
   unmerged, its weights as initializers (`models/onnx_adapters.py` says how they are named).
2. Those initializers become graph inputs with the rank free and an empty default; their values are the
   input adapter's file.
3. With `quantize: int4`, onnxruntime's MatMulNBits quantizer puts every other MatMul on the int4 grid (the
   lm_head included); the LoRA MatMuls stay fp32.
4. Each further adapter in `adapters` goes through step 1 alone and gives only its LoRA weights, checked
   against the base's inputs.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from slimtune.errors import PassFailed, UserError
from slimtune.models.kind import GENAI_CONFIG, is_adapter_folder
from slimtune.models.onnx_adapters import (
    ADAPTERS_DIR,
    is_lora_weight,
    lora_weights_of,
    make_lora_inputs,
    write_adapter,
    write_manifest,
)
from slimtune.models.ref import ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.extract_adapters.params import ExtractAdaptersParams


def run(ctx: PassContext, params: ExtractAdaptersParams) -> ModelRef:
    import onnx

    base_path = ctx.input.base_path
    if not base_path:
        raise UserError("ExtractAdapters: the input adapter has no base model folder")
    for name, folder in params.adapters.items():
        if not is_adapter_folder(folder):
            raise UserError(f"ExtractAdapters: adapters.{name}: {folder} is not a PEFT adapter folder")
    if params.adapter_name in params.adapters:
        raise UserError(f"ExtractAdapters: adapters.{params.adapter_name} has the input adapter's name")
    out = Path(ctx.output_dir)
    work = Path(ctx.work_dir)
    ctx.log(f"ExtractAdapters: fp32 export of {base_path} with the LoRA path of {ctx.input.path} kept apart")
    float_dir = _float_export(ctx, ctx.input.path, work / "float")
    model = onnx.load(str(float_dir / "model.onnx"))
    values = make_lora_inputs(model)
    if not values:
        raise PassFailed(
            "ExtractAdapters: the export holds no LoRA weights (ModelBuilder merged or dropped the adapter); "
            "an adapter of LoRA type on Linear layers is needed"
        )
    if params.quantize == "int4":
        model = _int4(model, params.block_size)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(
        model,
        str(out / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
    )
    for file in float_dir.iterdir():
        if not file.name.startswith("model.onnx") and file.is_file():
            shutil.copyfile(file, out / file.name)
    fingerprint = write_manifest(out, values, default=params.adapter_name)
    write_adapter(out / ADAPTERS_DIR / f"{params.adapter_name}.onnx_adapter", values, fingerprint)
    for name, folder in params.adapters.items():
        ctx.log(f"ExtractAdapters: adapter {name} from {folder}")
        other = lora_weights_of(
            onnx.load(str(_float_export(ctx, folder, work / f"float-{name}") / "model.onnx"))
        )
        missing, extra = sorted(set(values) - set(other)), sorted(set(other) - set(values))
        if missing or extra:
            raise UserError(
                f"ExtractAdapters: adapters.{name} ({folder}) adapts other modules than the input adapter: "
                f"missing {missing[:3]}, extra {extra[:3]}; train it with the same target_modules"
            )
        write_adapter(out / ADAPTERS_DIR / f"{name}.onnx_adapter", other, fingerprint)
    if not (out / GENAI_CONFIG).is_file():
        raise PassFailed(f"ExtractAdapters: no {GENAI_CONFIG} came out of the export")
    ctx.metrics.update(lora_inputs=len(values), adapters=1 + len(params.adapters), quantize=params.quantize)
    return ModelRef(path=str(out), kind="onnx")


def _float_export(ctx: PassContext, adapter: str, folder: Path) -> Path:
    from slimtune.passes.model_builder import ModelBuilderParams
    from slimtune.passes.model_builder.run import run as build

    shutil.rmtree(folder, ignore_errors=True)
    sub = PassContext(
        input=ModelRef(str(adapter), "adapter", base_path=ctx.input.base_path),
        meta=ctx.meta,
        output_dir=folder,
        work_dir=folder.with_name(folder.name + ".work"),
        device="cpu",
        execution_provider="cpu",
        log=ctx.log,
    )
    return Path(build(sub, ModelBuilderParams(precision="fp32")).path)


def _int4(model, block_size: int):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quant_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quant_logger.level
    quant_logger.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        # the LoRA MatMuls' weights are inputs with an (empty) default initializer: left alone, the quantizer
        # would take that default for a constant weight and drop the input
        lora = [
            n.name for n in model.graph.node if n.op_type == "MatMul" and any(map(is_lora_weight, n.input))
        ]
        quantizer = MatMulNBitsQuantizer(
            model, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=4, nodes_to_exclude=lora
        )
        quantizer.process()
    finally:
        quant_logger.setLevel(level)
    return quantizer.model.model
