"""ModelBuilder on tiny Llama / Phi-3 models: the builder's output loads in onnxruntime_genai and generates,
and every option reaches the builder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slimtune.errors import ModelError, PassFailed, ResourceError, UserError
from slimtune.models.ref import ModelMeta, ModelRef
from slimtune.models.shape import fp32_weight_bytes
from slimtune.passes.context import PassContext
from slimtune.passes.model_builder import ModelBuilderParams
from slimtune.passes.model_builder import run as model_builder_run
from tests.tiny_models import make_tiny_model

og = pytest.importorskip("onnxruntime_genai")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch) for arch in ("llama", "phi3")}


@pytest.fixture(scope="module")
def tiny_adapter(tiny, tmp_path_factory) -> Path:
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny["llama"])
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model = peft.get_peft_model(model, config)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero so that the adapter changes the output
            torch.nn.init.normal_(param, std=0.2)
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(folder)
    return folder


def build(
    tmp_path: Path, ref: ModelRef, messages: list[str] | None = None, **params
) -> tuple[Path, PassContext]:
    out = tmp_path / "out"
    ctx = PassContext(
        input=ref,
        meta=ModelMeta(),
        output_dir=out,
        work_dir=tmp_path / "work",
        device="cpu",
        execution_provider="cpu",
        log=(messages.append if messages is not None else lambda _: None),
    )
    result = model_builder_run.run(ctx, ModelBuilderParams(**params))
    assert result.kind == "onnx" and Path(result.path) == out
    return out, ctx


def generate_exactly(folder: Path, n: int) -> list[int]:
    """Greedy-generate exactly n tokens (min_length keeps a random model from stopping at EOS)."""
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.encode("### Text: I am so happy today!\n### The tone is:\n")
    params = og.GeneratorParams(model)
    total = len(prompt) + n
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    return list(generator.get_sequence(0))[len(prompt) :]


def matmul_nbits(folder: Path) -> list:
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return [node for node in graph.node if node.op_type == "MatMulNBits"]


def attribute(node, name: str):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
@pytest.mark.parametrize("precision", ["int4", "fp32"])
def test_builds_a_folder_that_onnxruntime_genai_runs(tiny, tmp_path, capfd, arch, precision):
    messages: list[str] = []
    out, ctx = build(tmp_path, ModelRef(str(tiny[arch]), "hf"), messages, precision=precision)

    for name in ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "builder.log"):
        assert (out / name).is_file(), name
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["type"] == {"llama": "llama", "phi3": "phi3"}[arch]
    assert len(generate_exactly(out, 6)) == 6
    assert bool(matmul_nbits(out)) == (precision == "int4")

    assert ctx.metrics["precision"] == precision and ctx.metrics["execution_provider"] == "cpu"
    assert ctx.metrics["output_size_bytes"] > 0
    # the builder's chatter goes to builder.log; the user sees two lines
    assert len(messages) == 2 and "building" in messages[0] and "done" in messages[1]
    captured = capfd.readouterr()
    assert "Reading layer" not in captured.out + captured.err
    assert "Reading layer" in (out / "builder.log").read_text()
    assert not (tmp_path / "work" / "builder_cache").exists()


@pytest.mark.parametrize("block_size", [32, 128])
def test_int4_options_reach_the_builder(tiny, tmp_path, block_size):
    out, ctx = build(
        tmp_path,
        ModelRef(str(tiny["llama"]), "hf"),
        int4_block_size=block_size,
        int4_accuracy_level=1,
        exclude_lm_head=False,
    )
    nodes = matmul_nbits(out)
    assert nodes
    assert {attribute(n, "block_size") for n in nodes} == {block_size}
    assert {attribute(n, "accuracy_level") for n in nodes} == {1}
    assert ctx.metrics["builder_options"] == {
        "block_size": str(block_size),
        "accuracy_level": "1",
        "exclude_lm_head": "false",
    }


def test_extra_options_pass_through_with_legacy_int4_names(tiny, tmp_path):
    # `int4_block_size` is the builder's old name; 0.18 documents it as an alias but ignores it, so we map it
    out, ctx = build(
        tmp_path,
        ModelRef(str(tiny["llama"]), "hf"),
        extra_options={"int4_block_size": 64, "op_types_to_quantize": ["MatMul", "Gather"]},
    )
    assert {attribute(n, "block_size") for n in matmul_nbits(out)} == {64}
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert any(n.op_type == "GatherBlockQuantized" for n in graph.node)
    assert ctx.metrics["builder_options"] == {"block_size": "64", "op_types_to_quantize": "MatMul/Gather"}


def test_int8(tiny, tmp_path):
    out, _ = build(tmp_path, ModelRef(str(tiny["llama"]), "hf"), precision="int8")
    assert {attribute(n, "bits") for n in matmul_nbits(out)} == {8}
    assert len(generate_exactly(out, 3)) == 3


def test_adapter_input_is_exported_with_the_builders_adapter_support(tiny, tiny_adapter, tmp_path):
    ref = ModelRef(str(tiny_adapter), "adapter", base_path=str(tiny["llama"]))
    out, ctx = build(tmp_path, ref)
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert any("lora" in n.name for n in graph.node)
    assert ctx.metrics["builder_options"]["adapter_path"] == str(tiny_adapter)
    assert len(generate_exactly(out, 4)) == 4


def test_unknown_extra_option_is_an_error_with_a_suggestion(tiny, tmp_path):
    with pytest.raises(UserError, match="blok_size.*did you mean 'block_size'"):
        build(tmp_path, ModelRef(str(tiny["llama"]), "hf"), extra_options={"blok_size": 64})


def test_conflicting_option_is_an_error(tiny, tmp_path):
    with pytest.raises(UserError, match="conflicts"):
        build(
            tmp_path, ModelRef(str(tiny["llama"]), "hf"), int4_block_size=32, extra_options={"block_size": 64}
        )


def test_precision_the_provider_lacks_is_an_error(tiny, tmp_path):
    with pytest.raises(UserError, match="'fp16' is not supported on execution provider 'cpu'"):
        build(tmp_path, ModelRef(str(tiny["llama"]), "hf"), precision="fp16")


def test_input_that_is_not_a_model_folder(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        build(tmp_path, ModelRef(str(tmp_path), "hf"))


def test_memory_check_refuses_before_the_build_and_can_be_skipped(tiny, tmp_path, monkeypatch):
    """The engine's check (one, before any pass) uses the pass's estimate; the pass's own switch
    extra_options.ignore_memory_check turns it off and never reaches the builder."""
    import psutil

    from slimtune.config.load import load_config_dict
    from slimtune.engine.memory_check import check_memory

    class Tiny:
        available = 1024

    def loaded(extra: dict):
        return load_config_dict(
            {
                "input_model": {"type": "HfModel", "model_path": str(tiny["llama"])},
                "passes": {"builder": {"type": "ModelBuilder", "precision": "int4", "extra_options": extra}},
                "cache_dir": str(tmp_path / "cache"),
                "output_dir": str(tmp_path / "out"),
            }
        )

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    with pytest.raises(ResourceError, match="ignore_memory_check"):
        check_memory(loaded({}), tiny["llama"], "cpu")
    check_memory(loaded({"ignore_memory_check": True}), tiny["llama"], "cpu")
    monkeypatch.undo()
    out, ctx = build(
        tmp_path, ModelRef(str(tiny["llama"]), "hf"), extra_options={"ignore_memory_check": True}
    )
    assert (out / "model.onnx").is_file()
    assert "ignore_memory_check" not in ctx.metrics["builder_options"]


def test_memory_estimate_counts_fp32_weights(tiny):
    # tiny llama: embed + lm_head 2*384*64, 2 layers of q,k,v,o (64*64 + 2*32*64 + 64*64) and mlp 3*64*128, norms
    per_layer = 64 * 64 * 2 + 2 * 32 * 64 + 3 * 64 * 128 + 2 * 64
    params = 2 * 384 * 64 + 2 * per_layer + 64
    assert fp32_weight_bytes(tiny["llama"]) == 4 * params


def test_builder_option_names_are_read_from_the_installed_builder():
    names = model_builder_run.builder_option_names()
    assert {"block_size", "accuracy_level", "algo_config", "is_symmetric", "adapter_path"} <= names
    assert "parser" not in names


def test_a_builder_failure_names_the_log_that_survives_it(tiny, tmp_path):
    # a Phi-3 whose context was extended without LongRoPE factors: the builder fails with KeyError 'multi_cache'
    broken = tmp_path / "phi3-long"
    shutil.copytree(tiny["phi3"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["original_max_position_embeddings"] = 128
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(PassFailed, match=r"multi_cache.*work/builder.log"):
        build(tmp_path, ModelRef(str(broken), "hf"))
    assert "Traceback" in (tmp_path / "work" / "builder.log").read_text()


def test_session_options_reach_genai_config_and_onnxruntime_genai_runs_them(tiny, tmp_path):
    """Nothing is added by default (the builder's session_options stay as written); given options are added,
    a config key ONNX Runtime reads (allow_spinning) among them, and the run record says which."""
    ref = ModelRef(str(tiny["llama"]), "hf")
    out, ctx = build(tmp_path / "default", ref)
    options = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert set(options) == {"log_id", "provider_options"} and ctx.metrics["session_options"] == {}

    given = {
        "session.intra_op.allow_spinning": "0",
        "graph_optimization_level": "ORT_ENABLE_BASIC",
        "enable_cpu_mem_arena": False,
    }
    out, ctx = build(tmp_path / "given", ref, session_options=given)
    options = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert {k: options[k] for k in given} == given and ctx.metrics["session_options"] == given
    assert len(generate_exactly(out, 4)) == 4
