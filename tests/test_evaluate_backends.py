"""Every backend kind on tiny Llama models: the same greedy ids for the same prompt ids (HF, zero-init adapter,
merged), ONNX fp32 close to HF in log-probs, likelihood ranking and accuracy on a model taught two answers,
and the evaluator's result keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimtune.evaluate.evaluator import evaluate_model, likelihood_predictions
from slimtune.evaluate.perplexity import perplexity_of
from slimtune.models.ref import ModelMeta, ModelRef
from slimtune.models.runtime import open_model
from slimtune.passes.context import PassContext
from slimtune.passes.model_builder import ModelBuilderParams
from slimtune.passes.model_builder.run import run as build
from tests.tiny_models import make_tiny_model

og = pytest.importorskip("onnxruntime_genai")
peft = pytest.importorskip("peft")

TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
ROWS = [
    {"phrase": "I am so happy today!", "tone": "joy"},
    {"phrase": "The dark alley scares me.", "tone": "fear"},
]
LABELS = ["joy", "sadness", "fear", "surprise"]


def export(hf: Path, out: Path, precision: str = "fp32") -> Path:
    ctx = PassContext(
        input=ModelRef(str(hf), "hf"),
        meta=ModelMeta(),
        output_dir=out,
        work_dir=out.with_suffix(".work"),
        device="cpu",
        execution_provider="cpu",
        log=lambda _: None,
    )
    build(ctx, ModelBuilderParams(precision=precision))
    return out


def make_adapter(base: Path, out: Path, *, zero: bool) -> Path:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model = peft.get_peft_model(model, config)  # lora_B starts at zero: the adapter changes nothing yet
    if not zero:
        torch.manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.2)
    model.save_pretrained(out)
    return out


def merge(base: Path, adapter: Path, out: Path) -> Path:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def teach(base: Path, out: Path) -> Path:
    """The tiny model trained for a few steps to answer ROWS (BOS prompt answer EOS, as training lays them)."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    texts = [TEMPLATE.format(**row) for row in ROWS]
    batch = [
        [tokenizer.bos_token_id]
        + tokenizer(t, add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
        for t in texts
    ]
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        for ids in batch:
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, ModelRef]:
    root = tmp_path_factory.mktemp("backends")
    hf = make_tiny_model("llama", root / "hf")
    zero = make_adapter(hf, root / "zero", zero=True)
    lora = make_adapter(hf, root / "lora", zero=False)
    taught = teach(hf, root / "taught")
    return {
        "hf": ModelRef(str(hf), "hf"),
        "zero": ModelRef(str(zero), "adapter", base_path=str(hf)),
        "lora": ModelRef(str(lora), "adapter", base_path=str(hf)),
        "merged": ModelRef(str(merge(hf, lora, root / "merged")), "hf"),
        "onnx": ModelRef(str(export(hf, root / "onnx")), "onnx"),
        "taught": ModelRef(str(taught), "hf"),
        "taught_onnx": ModelRef(str(export(taught, root / "taught_onnx")), "onnx"),
    }


def prompt_ids(backend, text: str = "### Text: I am so happy today!\n### The tone is:\n") -> list[int]:
    tokenizer = backend.tokenizer
    return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]


def test_same_greedy_ids_across_kinds(models):
    hf, zero, onnx = (open_model(models[k]) for k in ("hf", "zero", "onnx"))
    assert (hf.kind, zero.kind, onnx.kind) == ("hf", "adapter", "onnx")
    for text in ("### Text: I am so happy today!\n### The tone is:\n", "The quick brown fox"):
        ids = prompt_ids(hf, text)
        expected = hf.generate_ids(ids, 12)
        assert expected  # a random model rarely says EOS first; if it did, this test would show nothing
        assert zero.generate_ids(ids, 12) == expected
        assert onnx.generate_ids(ids, 12) == expected


def test_greedy_decoding_with_transformers_that_return_past_key_values(models):
    """transformers 5.1x outputs have `past_key_values` and no `cache` (the GPU machine's 5.17 did)."""
    from types import SimpleNamespace

    hf = open_model(models["hf"])
    ids = prompt_ids(hf)
    expected = hf.generate_ids(ids, 12)
    model, calls = hf.model, []

    def older_transformers(input_ids, use_cache, past_key_values=None, **kwargs):
        assert "cache" not in kwargs
        calls.append(past_key_values is not None)
        step = {} if past_key_values is None else {"cache": past_key_values}
        out = model(input_ids=input_ids, use_cache=use_cache, **step)
        return SimpleNamespace(logits=out.logits, past_key_values=out.cache)

    hf.model = older_transformers
    assert hf.generate_ids(ids, 12) == expected
    assert calls[0] is False and all(calls[1:]) and len(calls) == len(expected)


def test_adapter_applied_unmerged_matches_its_merge(models):
    lora, merged, hf = (open_model(models[k]) for k in ("lora", "merged", "hf"))
    ids = prompt_ids(hf)
    assert lora.generate_ids(ids, 10) == merged.generate_ids(ids, 10)
    assert lora.generate_ids(ids, 10) != hf.generate_ids(ids, 10)  # the adapter does change the model
    pairs = [(ids, [5, 6, 7])]
    assert lora.token_logprobs(pairs)[0] == pytest.approx(merged.token_logprobs(pairs)[0], abs=1e-3)


def test_onnx_logprobs_match_hf(models):
    hf, onnx = open_model(models["hf"]), open_model(models["onnx"])
    ids = prompt_ids(hf)
    conts = [hf.tokenizer(t, add_special_tokens=False)["input_ids"] for t in LABELS + ["The quick brown fox"]]
    # two contexts, several continuations each (one or many tokens): the ONNX path rewinds between them
    pairs = [(ids, c) for c in conts] + [(ids[:4], c) for c in conts]
    expected, got = hf.token_logprobs(pairs), onnx.token_logprobs(pairs)
    assert got == pytest.approx(expected, abs=1e-3)
    texts = ["### Text: I miss my old friends.", "Wow, I did not expect that at all!"]
    assert perplexity_of(onnx, texts)["perplexity"] == pytest.approx(
        perplexity_of(hf, texts)["perplexity"], rel=1e-4
    )
    # a reused (rewound) ONNX generator gives what a fresh one gives
    first = onnx.generate_ids(ids, 6)
    onnx.token_logprobs(pairs)
    assert onnx.generate_ids(ids, 6) == first


def test_timed_generation_decodes_exactly_n_tokens(models):
    for kind in ("hf", "onnx"):
        backend = open_model(models[kind])
        timing = backend.timed_generate(prompt_ids(backend), 7)
        assert len(timing.new_ids) == 7 and 0 < timing.ttft_s <= timing.total_s
        assert backend.threads() >= 1


@pytest.mark.parametrize("kind", ["taught", "taught_onnx"])
def test_likelihood_and_accuracy_on_a_taught_model(models, kind):
    backend = open_model(models[kind])
    prompts = [prompt_ids(backend, TEMPLATE.split("{tone}")[0].format(**row)) for row in ROWS]
    assert likelihood_predictions(backend, prompts, LABELS) == ["joy", "fear"]

    result = evaluate_model(
        models[kind],
        ROWS,
        TEMPLATE,
        labels=LABELS,
        metrics=["accuracy", "likelihood", "perplexity", "latency"],
        latency_runs=3,
        warmup=1,
        progress=False,
    )
    assert result["accuracy"] == 1.0 and result["likelihood_accuracy"] == 1.0
    assert result["n"] == 2 and result["invalid"] == 0 and result["invalid_examples"] == []
    assert result["per_class"]["joy"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert result["confusion"]["matrix"][0] == [1, 0, 0, 0, 0]
    assert 1.0 <= result["perplexity"] < 3.0  # it has learnt both rows
    latency = result["latency"]
    assert latency["runs"] == 3 and latency["warmup"] == 1 and latency["threads"] == result["threads"]
    assert set(latency["e2e_ms"]) >= {"avg", "p50", "p90", "p99"}
    assert (
        latency["ttft_ms"] > 0 and latency["decode_tokens_per_s"] > 0 and latency["prompt_tokens_per_s"] > 0
    )


def test_only_requested_metrics_and_sizes(models):
    result = evaluate_model(models["lora"], ROWS, TEMPLATE, labels=None, metrics=["size"], progress=False)
    assert "accuracy" not in result and "latency" not in result and "threads" not in result
    adapter, base = Path(models["lora"].path), Path(models["lora"].base_path)
    assert set(result["size"]) == {str(adapter), str(base)}
    assert result["size_bytes"] == sum(result["size"].values())
    assert result["size"][str(adapter)] == sum(p.stat().st_size for p in adapter.rglob("*") if p.is_file())


def test_memory_is_measured_in_a_child_process(models):
    result = evaluate_model(models["onnx"], ROWS, TEMPLATE, labels=None, metrics=["memory"], progress=False)
    memory = result["memory"]
    assert result["peak_memory_bytes"] == memory["peak_memory_bytes"] > 0
    assert memory["peak_rss_bytes"] == memory["baseline_rss_bytes"] + memory["peak_memory_bytes"]
    assert memory["prompts"] == 2


def test_unknown_metric_is_a_user_error(models):
    from slimtune.errors import UserError

    with pytest.raises(UserError, match="unknown metric"):
        evaluate_model(models["hf"], ROWS, TEMPLATE, labels=None, metrics=["acuracy"])
