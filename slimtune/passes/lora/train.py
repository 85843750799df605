"""One process's LoRA / QLoRA / DoRA training: transformers Trainer + peft. The pass's entry point is
slimtune.passes.lora.run; parameters are in slimtune.passes.lora.params."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from slimtune.errors import UserError
from slimtune.models.ref import ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.lora.params import LoRAParams

# what we use where the config says nothing (TrainingArguments' own defaults otherwise)
DEFAULT_TRAINING_ARGS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "num_train_epochs": 1,
    "logging_steps": 10,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0.03,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 1,
    "seed": 0,
}
MAX_LABELS = 50  # an answer column with more distinct values than this is free text, not a label


def train(ctx: PassContext, params: LoRAParams) -> ModelRef:
    """One process's training run (the only one, or one rank of a data-parallel run)."""
    import transformers

    from slimtune.passes.lora.data import prepare_datasets
    from slimtune.passes.lora.progress import ProgressCallback

    transformers.utils.logging.disable_progress_bar()
    base = Path(ctx.input.path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_set, evaluation, task = prepare_datasets(ctx, params, tokenizer)
    ctx.meta.template, ctx.meta.answer_column = task.template, task.answer_column
    ctx.meta.chat_template = task.chat_template
    ctx.meta.add_special_tokens = task.add_special_tokens
    ctx.meta.messages_col, ctx.meta.loss_on_answer_only = task.messages_col, task.loss_on_answer_only
    if task.labels is not None and len(task.labels) <= MAX_LABELS:
        ctx.meta.labels = task.labels
    ctx.log(
        f"      data: {len(train_set)} training samples, "
        f"{len(evaluation) if evaluation else 0} evaluation samples"
    )

    loading = ctx.load_kwargs()  # trust_remote_code (logged), attn_implementation, revision, variant
    given = ctx.model_load.get("dtype")
    if params.torch_dtype == "auto" and given not in (None, "auto"):
        params = params.model_copy(update={"torch_dtype": given})  # input_model.load_kwargs.dtype
    choice = choose_batch(ctx, params, task.longest)  # before the weights load: what is free now
    params = params.model_copy(update={"training_args": choice.training_args(params.training_args)})
    ctx.log(f"      batch: {choice.describe()}")
    ctx.metrics["batch"] = choice.metrics(int(os.environ.get("WORLD_SIZE", "1")))
    model = load_base_model(base, params, ctx.device, **loading)
    if params.quantized:
        # the merge rebuilds this 4-bit image of the base and merges into its dequantized weights
        ctx.meta.quantized_base = qlora_grid(params)
    if params.quantization_aware == "int4":
        from slimtune.models.fake_quant import fake_quantize_model_int4

        changed = fake_quantize_model_int4(model, params.quantization_block_size)
        ctx.log(
            f"      quantization-aware: {len(changed)} linear layers put on the int4 grid "
            f"(block {params.quantization_block_size}) before training"
        )
        ctx.metrics["quantization_aware"] = {
            "scheme": "int4",
            "block_size": params.quantization_block_size,
            "layers": len(changed),
        }
        ctx.meta.quantized_base = {"scheme": "int4", "block_size": params.quantization_block_size}
    model, targets, notes = attach_adapter(model, params)
    for note in notes:
        ctx.log(f"      {note}")
    trainable, total = model.get_nb_trainable_parameters()

    args = training_arguments(params, ctx, has_eval=evaluation is not None, n_train=len(train_set))
    row_len = ctx.data_config(params.train_data_config).pre_process_data_config.max_seq_len
    trainer, plan = make_trainer(
        model,
        tokenizer,
        train_set,
        evaluation,
        params,
        args,
        ctx.device,
        row_len,
        compiled_dir=ctx.options.get("compiled_dir"),
    )
    progress = ProgressCallback(trainer.data_collator, int(os.environ.get("WORLD_SIZE", "1")))
    trainer.add_callback(progress)
    ctx.log(
        "      speed: "
        + ", ".join(f"{k} {('on' if v else 'off') if isinstance(v, bool) else v}" for k, v in plan.items())
    )
    checkpoints = complete_checkpoints(Path(args.output_dir))
    if checkpoints:
        ctx.log(f"      resuming from {checkpoints[-1].name}")
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    except BaseException:
        complete_checkpoints(Path(args.output_dir))  # a failure mid-save leaves no half checkpoint behind
        raise
    final_eval = {}
    if evaluation is not None:
        # the Trainer evaluates at its last step by itself when that step is an eval step: reuse that result
        # rather than print and record the same evaluation twice
        final_eval = eval_at_step(trainer.state.log_history, trainer.state.global_step) or trainer.evaluate()

    if trainer.is_world_process_zero():
        model.save_pretrained(ctx.output_dir, safe_serialization=True)
        tokenizer.save_pretrained(ctx.output_dir)
    ctx.metrics.update(
        {
            "train_loss": result.training_loss,
            "eval_loss": final_eval.get("eval_loss"),
            "eval_perplexity": math.exp(final_eval["eval_loss"])
            if final_eval.get("eval_loss") is not None
            else None,
            "loss_curve": [
                {"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h
            ],
            "eval_curve": eval_curve(trainer.state.log_history),
            "steps": trainer.state.global_step,
            "train_samples": len(train_set),
            "eval_samples": len(evaluation) if evaluation is not None else 0,
            "tokens_seen": progress.tokens,
            "tokens_per_s": progress.tokens_per_second,
            "trainable_params": trainable,
            "total_params": total,
            "target_modules": targets,
            "target_module_notes": notes,
            "device": ctx.device,
            "speed": plan,
            "resumed_from": checkpoints[-1].name if checkpoints else None,
        }
    )
    return ModelRef(str(ctx.output_dir), "adapter", base_path=str(base))


def choose_batch(ctx: PassContext, params: LoRAParams, longest: int | None, available: int | None = None):
    """The micro-batch the engine's memory check planned for (fit.py), made again in this process: the
    libraries the estimate counts are loaded already, so they are added back to what is available."""
    from slimtune.passes.lora.fit import available_bytes
    from slimtune.passes.lora.memory import batch_choice
    from slimtune.passes.memory import LIBRARIES_BYTES, MemoryQuery

    data = {"train_data_config": ctx.data_config(params.train_data_config)}
    query = MemoryQuery("", "LoRA", params, Path(ctx.input.path), ctx.device, data)
    if available is None and "per_device_train_batch_size" not in params.training_args:
        available = available_bytes(ctx.device) + (LIBRARIES_BYTES if ctx.device == "cpu" else 0)
    return batch_choice(query, available, longest)


def load_base_model(base: Path, params: LoRAParams, device: str, **load_kwargs: Any):
    """The frozen base: bf16 on CUDA and on CPUs with bf16 units (or torch_dtype), 4-bit through bitsandbytes for QLoRA (left where
    loading puts it: the trainer moves it)."""
    from slimtune.models.hf import load_causal_lm

    grid = qlora_grid(params) if params.quantized else None
    model = load_causal_lm(
        base, _dtype(params.torch_dtype, device), device=None, quantized_base=grid, **load_kwargs
    )
    if params.quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def qlora_grid(params: LoRAParams) -> dict[str, Any]:
    """The 4-bit grid of a QLoRA base, as slimtune.json records it (ModelMeta.quantized_base)."""
    return {
        "scheme": "bnb-4bit",
        "quant_type": params.quant_type or "nf4",
        "double_quant": bool(params.double_quant),
        "compute_dtype": params.compute_dtype or "bfloat16",
    }


def attach_adapter(model: Any, params: LoRAParams):
    """(peft model, resolved target modules, notes on how the names were mapped)."""
    from peft import LoraConfig, get_peft_model

    from slimtune.models.loading import linear_layer_names
    from slimtune.passes.lora.targets import resolve_target_modules

    targets, notes = resolve_target_modules(params.target_modules, linear_layer_names(model))
    init = params.init_lora_weights
    lora_kwargs: dict[str, Any] = {}
    if params.loftq_iter:
        from peft import LoftQConfig

        init, lora_kwargs["loftq_config"] = "loftq", LoftQConfig(loftq_bits=4, loftq_iter=params.loftq_iter)
    lora = LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.lora_dropout,
        target_modules=targets,
        modules_to_save=params.modules_to_save,
        bias=params.bias,
        use_dora=params.use_dora,
        init_lora_weights=init,
        task_type="CAUSAL_LM",
        **lora_kwargs,
    )
    from transformers import set_seed

    from slimtune.library_warnings import peft_calls

    # the adapter's random initial weights come from the training seed, not from whatever the process drew
    # before (data loading, checks): the same config gives the same adapter whatever code ran first
    set_seed(int((params.training_args or {}).get("seed", DEFAULT_TRAINING_ARGS["seed"])))
    with peft_calls():
        return get_peft_model(model, lora), targets, notes


def make_trainer(
    model: Any,
    tokenizer: Any,
    train_set: Any,
    evaluation: Any,
    params: LoRAParams,
    args: Any,
    device: str,
    row_len: int,
    callbacks: list[Any] = (),
    compiled_dir: str | Path | None = None,
):
    """(transformers Trainer with slimtune's speed settings applied, the settings used). Compiled layers
    keep their compiled artifacts in `compiled_dir` (the run's cache) when given."""
    import transformers

    from slimtune.passes.lora.progress import CountingCollator, collate
    from slimtune.passes.lora.speed import (
        PackedCollator,
        ScoredOnly,
        compile_layers,
        speed_plan,
        takes_logits_to_keep,
        training_work,
        trimmed,
        use_compile_cache,
    )

    model.config.use_cache = False  # a training forward needs no KV cache (and packing needs none)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    plan = speed_plan(
        params,
        device,
        training_work(model, train_set, args, pad) if device == "cuda" else None,
        hidden=getattr(model.config, "hidden_size", None),
    )
    if plan["pack_sequences"]:
        inner = PackedCollator(pad, row_len)
    else:

        def inner(rows):  # padded to the micro-batch's longest row, not max_seq_len (fit.py)
            return collate([trimmed(r, pad) for r in rows], pad)

    plan["scored_positions_only"] = takes_logits_to_keep(model)
    if plan["scored_positions_only"]:
        inner = ScoredOnly(inner)
    plan["bf16_autocast"] = bool(args.bf16)
    collator = CountingCollator(inner, pad)

    if plan["fp8_base"]:
        from slimtune.passes.lora.fp8 import convert_frozen_linears

        # quantize on the GPU the Trainer would move it to (seconds, not minutes on the CPU)
        model.to(args.device)
        plan["fp8_layers"] = convert_frozen_linears(model)
    callbacks = list(callbacks) + (_cpu_speed(model, plan) if device == "cpu" else [])
    if plan["compile_layers"]:
        if compiled_dir is not None:
            plan["compiled_cache"] = str(use_compile_cache(compiled_dir))
        compile_layers(model)
    from slimtune.passes.lora.eval_loss import token_weighted_trainer
    from slimtune.passes.lora.lean_steps import lean_trainer

    trainer = token_weighted_trainer(lean_trainer(transformers.Trainer))(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=evaluation,
        data_collator=collator,
        callbacks=callbacks,
    )
    trainer.remove_callback(transformers.PrinterCallback)  # ProgressCallback reports instead
    plan["cudnn_attention"] = not (device == "cuda" and plan["pack_sequences"])
    if not plan["cudnn_attention"]:
        from slimtune.passes.lora.speed import without_cudnn_attention

        trainer.add_callback(without_cudnn_attention())
    return trainer, plan


def _cpu_speed(model: Any, plan: dict) -> list[Any]:
    """The CPU's speed settings, each recorded in `plan`: the adapters' dropout and inputs changed on `model`
    (cpu_adapters.py); the TrainerCallbacks that hold the rest while training runs: causal attention from batched
    products in place of sdpa's CPU flash kernel (cpu_attention.py), large blocks kept in the heap (cpu_heap.py)."""
    from slimtune.passes.lora.cpu_adapters import keep_input_dtype, use_fast_dropout
    from slimtune.passes.lora.cpu_attention import block_attention
    from slimtune.passes.lora.cpu_heap import glibc, heap_kept_while_training

    plan["fast_dropout"] = use_fast_dropout(model) > 0  # torch's draws its mask one element at a time
    plan["adapter_inputs_bf16"] = plan["bf16_autocast"] and keep_input_dtype(model) > 0
    plan["block_attention"] = plan["bf16_autocast"] and model.config._attn_implementation == "sdpa"
    plan["heap_kept"] = glibc() is not None
    callbacks = []
    if plan["block_attention"]:
        callbacks.append(block_attention())
    if plan["heap_kept"]:
        callbacks.append(heap_kept_while_training())
    return callbacks


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in step order, leaving out any a kill cut short: trainer_state.json is written last (a
    kill while it is written leaves it unreadable), and rotating out an old checkpoint deletes its files one
    by one. The incomplete ones are removed so the Trainer never picks them."""
    import json
    import shutil

    found = []
    for path in folder.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            complete = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        except (OSError, ValueError):
            complete = False
        if complete:
            found.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))


def eval_at_step(log_history: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """The evaluation the Trainer logged at `step`, if it did."""
    return next((h for h in reversed(log_history) if h.get("step") == step and "eval_loss" in h), None)


def eval_curve(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One eval loss per step (the last logged at that step)."""
    by_step = {h["step"]: h["eval_loss"] for h in log_history if "eval_loss" in h}
    return [{"step": step, "eval_loss": loss} for step, loss in by_step.items()]


def _report_to(given: Any) -> list[str]:
    """`report_to: mlflow` logs the Trainer to MLflow (the run's `tracking.mlflow` sets where, through the MLFLOW_*
    variables); every other integration stays off, so a run never sends anything elsewhere unasked."""
    names = [given] if isinstance(given, str) else list(given or [])
    return ["mlflow"] if "mlflow" in names else []


def _dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if bf16_compute(name, device) else torch.float32
    return getattr(torch, name)


def bf16_compute(torch_dtype: str, device: str) -> bool:
    """Whether the base is bf16 and training runs under bf16 autocast (adapters and optimizer in fp32):
    asked for, or `auto` on CUDA and on a CPU with bf16 units (twice its fp32 product rate there)."""
    from slimtune.passes.lora.speed import cpu_has_bf16

    if torch_dtype == "auto":
        return device == "cuda" or (device == "cpu" and cpu_has_bf16())
    return torch_dtype == "bfloat16"


def training_arguments(params: LoRAParams, ctx: PassContext, *, has_eval: bool, n_train: int):
    return training_arguments_for(
        params, ctx.work_dir / "checkpoints", ctx.device, has_eval=has_eval, n_train=n_train
    )


def training_arguments_for(
    params: LoRAParams, output_dir: Path, device: str, *, has_eval: bool, n_train: int
):
    import transformers

    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = training_argument_values(params, output_dir, device, has_eval=has_eval, world=world)
    try:
        return transformers.TrainingArguments(**args)
    except (TypeError, ValueError) as err:
        raise UserError(f"training_args: {err}") from None


def training_argument_values(
    params: LoRAParams, output_dir: Path, device: str, *, has_eval: bool, world: int
) -> dict[str, Any]:
    """The Trainer's arguments: the config's training_args over slimtune's defaults, and what this device and
    this number of data-parallel ranks need unless the config says otherwise."""
    given = dict(params.training_args)
    args = {**DEFAULT_TRAINING_ARGS, **given}
    if has_eval and "eval_strategy" not in given:
        args["eval_strategy"] = "steps"
        args.setdefault("eval_steps", args.get("save_steps", 50))
    if not has_eval:
        args["eval_strategy"] = "no"
    if (
        args.get("eval_strategy") == "steps"
        and args.get("save_strategy") == "steps"
        and args.get("load_best_model_at_end")
    ):
        args["save_steps"] = args.get("eval_steps", args["save_steps"])
    args.update(
        output_dir=str(output_dir),
        report_to=_report_to(given.get("report_to")),
        disable_tqdm=True,  # ProgressCallback shows one bar with tokens/s
        remove_unused_columns=False,
        use_cpu=device == "cpu",
        dataloader_pin_memory=device == "cuda",
    )
    if device == "cuda" and "logging_nan_inf_filter" not in given:
        args["logging_nan_inf_filter"] = (
            False  # its check makes the host wait for the GPU at every micro-batch
        )
    if world > 1:
        if "ddp_find_unused_parameters" not in given:
            args["ddp_find_unused_parameters"] = False  # every adapter weight takes part in each step
        if "ddp_broadcast_buffers" not in given:
            # every rank loads the same frozen base, so its buffers are equal everywhere; DDP's default
            # re-sends them from rank 0 before each forward, and the fp8 base keeps its weights as
            # buffers: measured on two H200s, 28 broadcasts a step of the whole fp8 base (Phi-3-mini)
            args["ddp_broadcast_buffers"] = False
    if "bf16" not in given and "fp16" not in given and bf16_compute(params.torch_dtype, device):
        args["bf16"] = True
    return args
