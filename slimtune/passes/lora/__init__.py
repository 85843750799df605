"""LoRA, QLoRA and DoRA fine-tuning on transformers Trainer + peft.

params.py declares the parameters (Olive's names, old ones too); run.py is the run (train.py one process's
training, distributed.py several GPUs), imported only when the pass runs; memory.py estimates what training needs before it starts.
"""

from slimtune.passes.lora.memory import out_of_memory_advice, training_estimate
from slimtune.passes.lora.params import DoRAParams, LoRAParams, QLoRAParams
from slimtune.passes.registry import PassSpec, Training, register_pass

__all__ = ["DoRAParams", "LoRAParams", "QLoRAParams"]


def training(params: LoRAParams) -> Training:
    return Training(params.train_data_config, params.eval_data_config, params.eval_dataset_size)


def _spec(
    type_name: str, params: type[LoRAParams], summary: str, devices: tuple[str, ...] = ("cpu", "cuda")
) -> PassSpec:
    return PassSpec(
        type_name,
        params,
        "slimtune.passes.lora.run:run",
        version=8,  # 3: micro-batch chosen to fit, padding trimmed per micro-batch (fit.py); 4: every assistant
        # turn learns, the eval loss is token-weighted; 5: the adapter's initial weights drawn from the seed;
        # 6: bf16 base under bf16 autocast on CPUs with bf16 units, the head only at scored positions;
        # 7: the adapters' dropout masks on the CPU drawn by numpy (cpu_adapters.py); 8: causal attention on the
        # CPU in bf16 from batched products (cpu_attention.py)
        summary=summary,
        output_kind="adapter",
        data_fields=("train_data_config", "eval_data_config"),
        training=training,
        memory=training_estimate,
        memory_advice=out_of_memory_advice,
        devices=devices,
        data_parallel="slimtune.passes.lora.distributed",
        example={"train_data_config": "train", "training_args": {"max_steps": 1}},
    )


register_pass(_spec("LoRA", LoRAParams, "LoRA fine-tuning (transformers + peft)"))
register_pass(_spec("QLoRA", QLoRAParams, "LoRA on a 4-bit base (bitsandbytes, CUDA)", devices=("cuda",)))
register_pass(_spec("DoRA", DoRAParams, "weight-decomposed LoRA (peft use_dora)"))
