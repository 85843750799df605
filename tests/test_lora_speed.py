"""The LoRA pass's speed features that run anywhere: packing keeps the loss, settings resolve per device."""

from __future__ import annotations

import pytest

from slimtune.passes.lora import LoRAParams
from slimtune.passes.lora.speed import (
    COMPILE_MIN_WORK,
    FP8_MIN_HIDDEN,
    PackedCollator,
    pack_rows,
    real_length,
    speed_plan,
    training_work,
)


def test_pack_rows_places_every_example_once_within_the_row_length():
    lengths = [700, 300, 20, 1000, 5, 512, 512, 90]
    rows = pack_rows(lengths, 1024)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 1024 for row in rows)
    assert len(rows) == 4  # 3139 tokens need at least 4 rows of 1024


def test_an_example_longer_than_a_row_gets_a_row_of_its_own():
    assert pack_rows([2000, 10], 1024) == [[0], [1]]


def test_real_length_reads_the_mask_or_the_padding_tail():
    assert real_length([5, 6, 0, 0], [5, 6, -100, -100], [1, 1, 0, 0], pad_id=0) == 2
    assert real_length([5, 6, 0, 0], [5, 6, -100, -100], None, pad_id=0) == 2
    # a trailing pad id that is learned (EOS used as pad) is a real token
    assert real_length([5, 0], [5, 0], None, pad_id=0) == 2


def test_packed_collator_restarts_positions_and_masks_each_first_label():
    batch = PackedCollator(pad_id=0, row_len=8)(
        [
            {"input_ids": [3, 4, 5], "labels": [3, 4, 5]},
            {"input_ids": [6, 7], "labels": [-100, 7]},
            {"input_ids": [8, 9, 10, 11, 12], "labels": [8, 9, 10, 11, 12]},
        ]
    )
    assert batch["input_ids"].tolist() == [[8, 9, 10, 11, 12, 3, 4, 5], [6, 7, 0, 0, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch["labels"].tolist() == [
        [-100, 9, 10, 11, 12, -100, 4, 5],
        [-100, 7, -100, -100, -100, -100, -100, -100],
    ]


def test_packed_batch_gives_the_padded_batch_loss(tmp_path):
    """Examples packed into one row do not see each other: the loss equals the padded batch's."""
    import torch
    import transformers
    from tiny_models import make_tiny_model

    from slimtune.passes.lora.progress import collate

    folder = make_tiny_model("llama", tmp_path / "tiny")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    generator = torch.Generator().manual_seed(0)
    samples = []
    for n in (9, 17, 5, 12):
        ids = torch.randint(3, model.config.vocab_size, (n,), generator=generator).tolist()
        samples.append({"input_ids": ids, "labels": ids, "attention_mask": [1] * n})
    padded = collate(samples, pad_id=0)
    packed = PackedCollator(pad_id=0, row_len=64)(samples)
    assert packed["input_ids"].shape[0] == 1  # all four share one row
    with torch.no_grad():
        loss_padded = model(**padded, use_cache=False).loss
        loss_packed = model(**packed).loss
        # and the same row with the positions left running on (examples see each other) differs
        crossed = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
        loss_crossed = model(**crossed).loss
    assert loss_packed.item() == pytest.approx(loss_padded.item(), rel=1e-5)
    assert abs(loss_crossed.item() - loss_padded.item()) > 1e-4


def test_speed_features_default_to_on_for_cuda_only():
    params = LoRAParams(train_data_config="d")
    off = {"pack_sequences": False, "compile_layers": False, "fp8_base": False}
    assert speed_plan(params, "cpu") == off
    assert speed_plan(params, "cpu", work=1e20) == off
    on = speed_plan(params, "cuda", work=1e17)
    assert on["pack_sequences"] is True and on["compile_layers"] is True
    qlora = LoRAParams(train_data_config="d", quant_type="nf4")
    assert speed_plan(qlora, "cuda", work=1e17)["compile_layers"] is False  # 4-bit layers run eagerly
    forced = LoRAParams(train_data_config="d", pack_sequences=True, compile_layers=True)
    assert speed_plan(forced, "cpu") == {"pack_sequences": True, "compile_layers": False, "fp8_base": False}


def test_short_runs_are_not_compiled_and_then_get_no_fp8_base(monkeypatch):
    import slimtune.passes.lora.fp8 as fp8

    monkeypatch.setattr(fp8, "fp8_available", lambda device: device == "cuda")
    params = LoRAParams(train_data_config="d")
    short = speed_plan(params, "cuda", work=COMPILE_MIN_WORK / 10)
    assert short == {"pack_sequences": True, "compile_layers": False, "fp8_base": False}
    long = speed_plan(params, "cuda", work=COMPILE_MIN_WORK, hidden=FP8_MIN_HIDDEN)
    assert long == {"pack_sequences": True, "compile_layers": True, "fp8_base": True}
    asked = LoRAParams(train_data_config="d", compile_layers=True, fp8_base=True)
    assert speed_plan(asked, "cuda", work=1.0, hidden=576) == long  # explicit settings win over size
    dora = LoRAParams(train_data_config="d", use_dora=True)
    assert speed_plan(dora, "cuda", work=COMPILE_MIN_WORK, hidden=FP8_MIN_HIDDEN)["fp8_base"] is False


def test_small_models_get_no_automatic_fp8_base(monkeypatch):
    """fp8 raised SmolLM2-135M's held-out loss past noise (FP8_MIN_HIDDEN): narrow models keep bf16."""
    import slimtune.passes.lora.fp8 as fp8

    monkeypatch.setattr(fp8, "fp8_available", lambda device: device == "cuda")
    params = LoRAParams(train_data_config="d")
    small = speed_plan(params, "cuda", work=COMPILE_MIN_WORK * 10, hidden=576)
    assert small == {"pack_sequences": True, "compile_layers": True, "fp8_base": False}
    assert speed_plan(params, "cuda", work=COMPILE_MIN_WORK, hidden=3072)["fp8_base"] is True
    assert speed_plan(params, "cuda", work=COMPILE_MIN_WORK)["fp8_base"] is False  # width unknown


def test_training_work_counts_parameters_times_real_tokens():
    from types import SimpleNamespace

    import torch

    model = torch.nn.Linear(10, 10)  # 110 parameters
    rows = [
        {"input_ids": [5, 6, 7, 0, 0], "labels": [5, 6, 7, -100, -100], "attention_mask": [1, 1, 1, 0, 0]},
        {"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "attention_mask": [1, 1, 1, 1, 1]},
    ]
    epochs = SimpleNamespace(
        max_steps=-1, num_train_epochs=3, per_device_train_batch_size=2, gradient_accumulation_steps=1
    )
    assert (
        training_work(model, rows, epochs, pad_id=0) == 110 * 4 * 2 * 3
    )  # mean 4 real tokens, 2 rows, 3 epochs
    steps = SimpleNamespace(
        max_steps=5, num_train_epochs=3, per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    assert training_work(model, rows, steps, pad_id=0) == 110 * 4 * 5 * 2 * 2
    assert training_work(model, [], epochs, pad_id=0) == 0


def test_speed_settings_are_recorded_at_their_defaults():
    """run.json records the settings in force and the cache key covers them (packing, compiling, fp8 and the
    GPU count change the weights up to rounding and dropout draws)."""
    dumped = LoRAParams(train_data_config="d").model_dump()
    assert {
        "pack_sequences": None,
        "compile_layers": None,
        "fp8_base": None,
        "distributed": "auto",
    }.items() <= (dumped.items())
    assert LoRAParams(train_data_config="d", distributed=2).model_dump()["distributed"] == 2


def test_distributed_uses_one_process_on_the_cpu():
    from slimtune.passes.lora.distributed import per_rank_params, world_size

    assert world_size("auto", "cpu") == 1
    assert world_size(4, "cpu") == 1
    notes: list[str] = []
    params = LoRAParams(train_data_config="d", training_args={"gradient_accumulation_steps": 4})
    assert per_rank_params(params, 2, notes.append).training_args["gradient_accumulation_steps"] == 2
    assert "same effective batch" in notes[0]
    odd = LoRAParams(train_data_config="d", training_args={"gradient_accumulation_steps": 3})
    assert per_rank_params(odd, 2, notes.append).training_args["gradient_accumulation_steps"] == 3


def test_rows_of_one_full_example_carry_no_position_ids():
    """Nothing was packed and nothing padded: plain causal attention, no boundary search."""
    batch = PackedCollator(pad_id=0, row_len=4)([{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}] * 2)
    assert "position_ids" not in batch
    assert batch["labels"][:, 0].tolist() == [-100, -100]


def test_cudnn_attention_is_off_while_training_and_restored_after():
    import torch

    from slimtune.passes.lora.speed import without_cudnn_attention

    callback = without_cudnn_attention()
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        callback.on_train_begin(None, None, None)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        callback.on_train_end(None, None, None)
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


@pytest.mark.parametrize("given", [None, True])
def test_data_parallel_ranks_do_not_resend_the_frozen_base_unless_asked(tmp_path, given):
    """The fp8 base keeps its weights as buffers; DDP's default broadcast re-sent them before every forward."""
    from slimtune.passes.lora.train import training_argument_values

    extra = {} if given is None else {"ddp_broadcast_buffers": given}
    params = LoRAParams(train_data_config="d", training_args={"max_steps": 1, **extra})
    args = training_argument_values(params, tmp_path, "cuda", has_eval=False, world=2)
    assert args["ddp_broadcast_buffers"] is (False if given is None else given)
    assert args["ddp_find_unused_parameters"] is False
    alone = training_argument_values(params, tmp_path, "cuda", has_eval=False, world=1)
    assert alone.get("ddp_broadcast_buffers") == extra.get("ddp_broadcast_buffers")
