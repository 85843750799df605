"""The Trainer without its per-step walks over the whole model (passes/lora/lean_steps.py): the same run, step
for step, with evaluations in between; the walks are gone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _run(tmp_path, lean: bool, name: str):
    import transformers
    from peft import LoraConfig, get_peft_model
    from tiny_models import make_tiny_model

    from slimtune.passes.lora.eval_loss import token_weighted_trainer
    from slimtune.passes.lora.lean_steps import lean_trainer

    folder = make_tiny_model("llama", tmp_path / "tiny")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules="all-linear")
    )
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(32):
        ids = torch.randint(3, 200, (16,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": ids, "attention_mask": [1] * 16})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=8,
        learning_rate=5e-3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=3,  # evaluations between steps switch the model to eval and back
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    base = lean_trainer(transformers.Trainer) if lean else transformers.Trainer
    trainer = token_weighted_trainer(base)(model=model, args=args, train_dataset=rows, eval_dataset=rows[:8])
    walks = {"parameters": 0}
    counted = model.num_parameters

    def num_parameters(*a, **k):
        walks["parameters"] += 1
        return counted(*a, **k)

    model.num_parameters = num_parameters
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    return losses, evals, trainer, model, walks


def test_the_lean_trainer_trains_step_for_step_as_the_trainer(tmp_path):
    plain_losses, plain_evals, plain, plain_model, plain_walks = _run(tmp_path, lean=False, name="plain")
    losses, evals, lean, model, walks = _run(tmp_path, lean=True, name="lean")
    assert len(losses) == 8 and len(evals) >= 2
    # dropout on, evaluations in between: a step with the model left in eval mode, or gradients left over,
    # would change the losses that follow
    assert losses == plain_losses
    assert evals == plain_evals
    assert lean.state.total_flos == plain.state.total_flos  # the same FLOP estimate...
    assert (
        walks["parameters"] == 1 and plain_walks["parameters"] == 16
    )  # ...counted once, not per micro-batch
    assert "train" not in model.__dict__ and "zero_grad" not in model.__dict__  # nothing left on the model
    # each module left in the mode the plain Trainer leaves it in
    assert [m.training for m in model.modules()] == [m.training for m in plain_model.modules()]


def test_a_switch_to_eval_inside_a_step_still_happens():
    from slimtune.passes.lora.lean_steps import _already_training

    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 2)).train()
    model.train = _already_training(model)
    assert model.train() is model and model[0].training
    model.train(False)
    assert not any(m.training for m in model.modules())
    assert "train" not in model.__dict__
