"""LoRA, QLoRA and DoRA fine-tuning on transformers Trainer + peft.

Parameters follow Olive's LoRA pass (old names `lora_r`, `lora_alpha` still work). The training loop
itself is in `slimtune.passes.lora.train`, imported only when the pass runs. Every field is part of the
cache key and of the run record, defaults included.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from slimtune.config.base import Strict


class LoRAParams(Strict):
    renamed: ClassVar[dict[str, str]] = {"lora_r": "r", "lora_alpha": "alpha"}
    r: int = Field(
        16,
        gt=0,
        description="rank of the adapter matrices",
        json_schema_extra={"search_defaults": [8, 16, 32, 64]},
    )
    alpha: float = Field(32, gt=0, description="scaling numerator: the update is scaled by alpha / r")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | str | None = Field(
        None,
        description="linear layer names to adapt (fused/split names are mapped between architectures); "
        "None or 'all-linear': every linear layer but the output head",
    )
    modules_to_save: list[str] | None = Field(
        None, description="modules trained in full and saved with the adapter"
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype of the frozen base weights; auto: bfloat16 on CUDA and on CPUs with bf16 units (AVX-512 BF16, "
        "AMX, Arm BF16), float32 on other CPUs. With bfloat16 training runs under bf16 autocast and the "
        "adapters and optimizer state stay in float32. bf16 rounds away part of the first updates: on the "
        "real 135M default model its loss trailed float32's early in training (docs/benchmarks.md, 'Loss on "
        "real weights'); float32 keeps the reference loss, more slowly",
    )
    train_data_config: str = Field(description="name of the training data config")
    eval_data_config: str | None = Field(None, description="name of the evaluation data config")
    eval_dataset_size: float | None = Field(
        None, gt=0, description="held-out share (<1) or row count (>=1) split from the training data"
    )
    training_args: dict[str, Any] = Field(default_factory=dict, description="transformers TrainingArguments")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")
    init_lora_weights: str | bool = Field(True, description="peft init: true, gaussian, pissa, loftq ...")
    loftq_iter: int | None = Field(
        None, gt=0, description="LoftQ initialisation iterations (sets init to loftq)"
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    # QLoRA (bitsandbytes, CUDA only)
    quant_type: Literal["nf4", "fp4"] | None = Field(None, description="4-bit base weights (QLoRA)")
    double_quant: bool | None = Field(None, description="QLoRA: quantize the quantization constants")
    compute_dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        None, description="QLoRA compute dtype"
    )
    # quantization-aware training for the int4 export
    quantization_aware: Literal[None, "int4"] = Field(
        None,
        description="int4: before training, replace the frozen base weights by their int4 quantize-dequantize "
        "image on exactly the grid the ModelBuilder pass uses (onnxruntime MatMulNBits, symmetric RTN, blocks "
        "along the input dimension; a tied lm_head/embedding included), so the adapter learns to compensate "
        "for the int4 error. Send the adapter straight to ModelBuilder (precision int4, symmetric, int4_block_size "
        "equal to quantization_block_size) without MergeAdapterWeights: the builder quantizes the base onto the "
        "same grid and adds the adapter beside it. Merging such an adapter into the float base loses accuracy",
    )
    quantization_block_size: int = Field(
        32,
        description="quantization_aware: block size of the int4 grid; must equal ModelBuilder's int4_block_size",
    )
    # speed
    pack_sequences: bool | None = Field(
        None,
        description="lay each micro-batch's examples end to end without padding (position ids restart per "
        "example, so examples do not attend to each other); None: on for CUDA, off on the CPU",
    )
    compile_layers: bool | None = Field(
        None,
        description="torch.compile each decoder layer (CUDA only); None: on for CUDA when the run is long "
        "enough to repay the compile (parameters x training tokens >= 1e16, e.g. a 3.8B model on 2.6M tokens)",
    )
    fp8_base: bool | None = Field(
        None,
        description="run the frozen base's matrix products in fp8 (weights and activations scaled per row "
        "to float8_e4m3; the adapters stay bf16/fp32); about 2x the product rate on GPUs with fp8 tensor "
        "cores (compute capability 8.9+: Ada, Hopper). None: on where the GPU has them, the layers are "
        "compiled and the model's hidden size is at least 2048, for plain LoRA (on SmolLM2-135M's real "
        "weights, hidden size 576, fp8 raised the held-out loss well past run-to-run noise)",
    )
    distributed: Literal["auto", "off"] | int = Field(
        "auto",
        description="data-parallel training over several GPUs (one process per GPU, torch DDP): auto uses "
        "every visible CUDA device, off uses one, a number uses that many",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("empty list; leave it out to adapt every linear layer")
        return value

    @field_validator("quantization_block_size")
    @classmethod
    def _block_size(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError(f"must be a power of two >= 16 (what MatMulNBits accepts), got {value}")
        return value

    @model_validator(mode="after")
    def _quantization_aware_alone(self):
        if self.quantization_aware and self.quantized:
            raise ValueError(
                "quantization_aware trains on a fake-quantized float base; it cannot be combined "
                "with QLoRA settings (quant_type, double_quant, compute_dtype)"
            )
        return self

    @model_validator(mode="after")
    def _fp8_base_alone(self):
        if self.fp8_base and (self.quantized or self.use_dora or self.quantization_aware):
            raise ValueError(
                "fp8_base runs a plain bf16 base in fp8; it cannot be combined with QLoRA settings, DoRA "
                "(use_dora reads the base weights at every step) or quantization_aware"
            )
        return self

    @model_validator(mode="after")
    def _one_source_of_eval_data(self):
        if self.eval_dataset_size is not None and self.eval_data_config is not None:
            raise ValueError(
                "eval_dataset_size and eval_data_config both say where evaluation rows come from; keep one "
                "(a share split off the training data, or a separate data config)"
            )
        return self

    @field_validator("training_args")
    @classmethod
    def _known_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        from slimtune.passes.lora.training_args import check_training_args

        problems = check_training_args(value)
        lr = value.get("learning_rate")
        if isinstance(lr, (int, float)) and lr <= 0:
            problems.append(("learning_rate", f"must be > 0, got {lr}"))
        if problems:
            raise ValueError("; ".join(f"training_args.{k}: {m}" for k, m in problems))
        return value

    @classmethod
    def migrate_old(cls, entry: dict[str, Any], path: tuple, m: Any) -> None:
        """Olive's old LoRA pass took QLoRA settings (the seed's "QLoRA" example); transformers 5 renamed
        or removed some training arguments."""
        from slimtune.passes.lora.training_args import RENAMED_TRAINING_ARGS, migrate_training_args

        if entry.get("type") == "LoRA":
            if entry.get("double_quant") or entry.get("quant_type"):
                entry["type"] = "QLoRA"
                m.note(
                    (*path, "type"), "quantization settings on a LoRA pass: running it as QLoRA (CUDA only)"
                )
            elif "double_quant" in entry:
                entry.pop("double_quant")
                m.note((*path, "double_quant"), "false on a LoRA pass has no effect; key dropped")
        args = entry.get("training_args")
        if isinstance(args, dict):

            def moved(old: str, new: str) -> None:
                why = (
                    "deprecated in transformers 5"
                    if old in RENAMED_TRAINING_ARGS
                    else "removed in transformers 5"
                )
                m.moved((*path, "training_args", old), (*path, "training_args", new), why)

            entry["training_args"] = migrate_training_args(args, moved)

    @property
    def quantized(self) -> bool:
        return bool(self.quant_type or self.double_quant or self.compute_dtype)


class QLoRAParams(LoRAParams):
    quant_type: Literal["nf4", "fp4"] | None = Field("nf4", description="4-bit base weights")
    double_quant: bool | None = Field(False, description="quantize the quantization constants")
    compute_dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        "bfloat16", description="compute dtype"
    )


class DoRAParams(LoRAParams):
    use_dora: bool = Field(True, description="weight-decomposed LoRA (DoRA)")
