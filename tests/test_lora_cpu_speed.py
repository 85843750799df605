"""The LoRA pass's CPU speed features: the head at scored positions only, bf16 compute where the CPU has it.
Both keep the loss (the first exactly, the second within bf16 rounding)."""

from __future__ import annotations

import pytest

from slimtune.passes.lora.speed import IGNORE, SCORED_SHARE_MAX, ScoredOnly, takes_logits_to_keep


def _answer_only_samples(vocab: int, seed: int = 0):
    """Rows whose last two tokens are scored (like answer-only classification rows)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    samples = []
    for n in (9, 17, 5, 12):
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        samples.append({"input_ids": ids, "labels": [IGNORE] * (n - 2) + ids[-2:], "attention_mask": [1] * n})
    return samples


def _peft_tiny(tmp_path, arch: str = "llama"):
    import transformers
    from peft import LoraConfig, get_peft_model
    from tiny_models import make_tiny_model

    folder = make_tiny_model(arch, tmp_path / arch)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False
    )
    return get_peft_model(model, lora)


def test_scored_only_keeps_the_positions_that_predict_a_label():
    from slimtune.passes.lora.progress import collate

    batch = ScoredOnly(lambda rows: collate(rows, 0))(_answer_only_samples(100))
    # row widths 9, 17, 5, 12: their answers are predicted from positions n-3 and n-2
    assert batch["logits_to_keep"].tolist() == [2, 3, 6, 7, 9, 10, 14, 15]
    assert batch["shift_labels"].shape == (4, 8)
    assert int(batch["shift_labels"].ne(IGNORE).sum()) == 8  # every scored label once
    full = {"input_ids": [list(range(1, 9))], "labels": [list(range(1, 9))]}
    import torch

    dense = ScoredOnly(lambda rows: {k: torch.tensor(v) for k, v in rows[0].items()})([full])
    assert "logits_to_keep" not in dense  # every position scored: the whole head runs as before
    assert SCORED_SHARE_MAX < 1


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_the_head_at_scored_positions_gives_the_same_loss_and_gradients(tmp_path, arch):
    import torch

    from slimtune.passes.lora.progress import collate

    model = _peft_tiny(tmp_path, arch)
    assert takes_logits_to_keep(model)
    samples = _answer_only_samples(model.config.vocab_size)
    results = []
    for collator in (lambda rows: collate(rows, 0), ScoredOnly(lambda rows: collate(rows, 0))):
        model.zero_grad()
        batch = collator(samples)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.item(), grads, batch))
    (full_loss, full_grads, full_batch), (kept_loss, kept_grads, kept_batch) = results
    assert "logits_to_keep" in kept_batch and "logits_to_keep" not in full_batch
    assert kept_loss == pytest.approx(full_loss, rel=1e-5)
    for a, b in zip(full_grads, kept_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_compute_is_the_auto_choice_on_cuda_and_on_bf16_cpus(monkeypatch):
    import slimtune.passes.lora.speed as speed
    from slimtune.passes.lora.train import bf16_compute

    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: True)
    assert bf16_compute("auto", "cpu") and bf16_compute("auto", "cuda")
    assert not bf16_compute("float32", "cpu")
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: False)
    assert not bf16_compute("auto", "cpu")
    assert bf16_compute("bfloat16", "cpu")  # asked for


def _train_losses(tmp_path, torch_dtype: str, steps: int = 10) -> tuple[list[float], dict]:
    """Loss per step of the pass's own Trainer set-up on the tiny model, with `torch_dtype`."""
    import torch
    import transformers
    from tiny_models import make_tiny_model

    from slimtune.passes.lora.params import LoRAParams
    from slimtune.passes.lora.train import _dtype, attach_adapter, make_trainer, training_arguments_for

    folder = make_tiny_model("llama", tmp_path / "tiny")
    params = LoRAParams(
        train_data_config="d",
        torch_dtype=torch_dtype,
        r=8,
        alpha=16,
        lora_dropout=0.0,
        training_args={
            "max_steps": steps,
            "per_device_train_batch_size": 4,
            "learning_rate": 3e-2,
            "logging_steps": 1,
            "save_strategy": "no",
            "warmup_steps": 0,
        },
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=_dtype(torch_dtype, "cpu"))
    model, _, _ = attach_adapter(model, params)
    generator = torch.Generator().manual_seed(1)
    # random text followed by the same 4-token answer, which alone is scored: something to learn quickly
    rows = []
    for _ in range(48):
        ids = torch.randint(3, 200, (12,), generator=generator).tolist() + [250, 251, 252, 253]
        rows.append({"input_ids": ids, "labels": [IGNORE] * 12 + ids[12:], "attention_mask": [1] * 16})
    args = training_arguments_for(params, tmp_path / f"out-{torch_dtype}", "cpu", has_eval=False, n_train=48)
    trainer, plan = make_trainer(model, _Tok(), rows, None, params, args, "cpu", 16)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    adapter_dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    return losses, {**plan, "adapter_dtypes": adapter_dtypes, "bf16": args.bf16}


class _Tok:
    pad_token_id = 0
    eos_token_id = 0


def test_bf16_compute_on_the_cpu_keeps_the_loss(tmp_path):
    """bf16 base under autocast with fp32 adapters learns as fp32 does: same curve within bf16 rounding."""
    import torch

    fp32, plan32 = _train_losses(tmp_path, "float32")
    bf16, plan16 = _train_losses(tmp_path, "bfloat16")
    assert not plan32["bf16"] and plan16["bf16"] and plan16["bf16_autocast"]
    assert plan16["adapter_dtypes"] == {torch.float32}  # adapters and their optimizer state stay fp32
    assert plan16["scored_positions_only"]
    assert plan16["block_attention"] and not plan32["block_attention"]  # bf16 only (cpu_attention.py)
    from slimtune.passes.lora.cpu_heap import glibc

    assert plan16["heap_kept"] == plan32["heap_kept"] == (glibc() is not None)  # cpu_heap.py
    assert fp32[-1] < 0.9 * fp32[0]  # it learns
    for a, b in zip(fp32, bf16, strict=True):
        assert b == pytest.approx(a, rel=0.02)


def test_compiled_artifacts_go_to_the_runs_cache(tmp_path, monkeypatch):
    """Inductor's caches (FX graphs, AOTAutograd, kernels) land under cache_dir/compiled, so a second run of
    the same shapes finds them; the engine hands every pass that folder."""
    import torch

    from slimtune.engine.cache import Cache
    from slimtune.passes.lora.speed import use_compile_cache

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    import torch._functorch.config as aot

    for config, name in (
        (torch._inductor.config, "fx_graph_cache"),
        (aot, "enable_autograd_cache"),
        (aot, "autograd_cache_allow_custom_autograd_functions"),
    ):
        monkeypatch.setattr(config, name, getattr(config, name))  # restored after the test
    folder = Cache(tmp_path / "cache").compiled_dir()
    assert folder == tmp_path / "cache" / "compiled"
    where = use_compile_cache(folder)
    assert where.parent == folder and torch.__version__ in where.name

    def f(x):
        return torch.nn.functional.silu(x) * 2 + 1

    torch._dynamo.reset()
    torch.compile(f)(torch.randn(8, 8))
    written = [p for p in (where / "inductor").rglob("*") if p.is_file()]
    assert any("fxgraph" in p.parts for p in written), sorted(map(str, written))[:10]
