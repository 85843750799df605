"""Several LoRA adapters on one int4 base: the ExtractAdapters pass builds the base with LoRA inputs and one
`.onnx_adapter` per adapter; `slimtune serve` picks one per request from the `model` field, `slimtune generate
--adapter` applies one; an adapter that does not fit the base is refused before the model loads.

The adapters are PEFT LoRA adapters with random (non-zero) weights on tests/tiny_models.py's Llama, of two
ranks, so that each changes the model's answers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimtune.cli.main import main
from slimtune.models.onnx_adapters import MANIFEST, write_adapter
from slimtune.models.ref import ModelMeta, ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.extract_adapters import ExtractAdaptersParams
from slimtune.passes.extract_adapters.run import run as extract
from tests.serve_helpers import REPO, Server, tiny_long_context

openai = pytest.importorskip("openai")
og = pytest.importorskip("onnxruntime_genai")

PROMPT_IDS = [1, 40, 41, 42, 43, 44]


def peft_adapter(base: Path, folder: Path, seed: int, rank: int) -> Path:
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    peft.get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    hf = tiny_long_context(root / "hf")
    first = peft_adapter(hf, root / "first", seed=1, rank=4)
    second = peft_adapter(hf, root / "second", seed=2, rank=8)
    ctx = PassContext(
        input=ModelRef(str(first), "adapter", base_path=str(hf)),
        meta=ModelMeta(),
        output_dir=root / "int4",
        work_dir=root / "work",
        device="cpu",
        execution_provider="cpu",
        log=lambda _: None,
    )
    params = ExtractAdaptersParams(adapter_name="first", adapters={"second": str(second)})
    base = Path(extract(ctx, params).path)
    return {"hf": hf, "first": first, "second": second, "base": base}


def onnx_logits(base: Path, adapter: str | None) -> np.ndarray:
    model = og.Model(str(base))
    adapters = og.Adapters(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=32)
    generator = og.Generator(model, params)
    if adapter:
        adapters.load(str(base / "adapters" / f"{adapter}.onnx_adapter"), adapter)
        generator.set_active_adapter(adapters, adapter)
    generator.append_tokens(PROMPT_IDS)
    return np.array(generator.get_logits()).reshape(-1)


def torch_logits(hf: Path, adapter: Path | None) -> np.ndarray:
    import torch

    from slimtune.models.hf import load_causal_lm

    model = load_causal_lm(hf, adapter=adapter).eval()
    with torch.inference_mode():
        return model(input_ids=torch.tensor([PROMPT_IDS])).logits[0, -1].float().numpy()


def test_one_int4_base_with_lora_inputs(built):
    import onnx

    graph = onnx.load(str(built["base"] / "model.onnx"), load_external_data=False).graph
    lora = [i.name for i in graph.input if ".lora_" in i.name]
    assert len(lora) == 2 * 3 * 2  # A and B, three modules, two layers
    assert (
        sum(n.op_type == "MatMulNBits" for n in graph.node) >= 2 * 7
    )  # every base projection on the int4 grid
    assert (built["base"] / MANIFEST).is_file()
    assert sorted(p.name for p in (built["base"] / "adapters").iterdir()) == [
        "first.onnx_adapter",
        "second.onnx_adapter",
    ]


@pytest.mark.parametrize("adapter", ["first", "second"])
def test_adapter_on_the_int4_base_follows_the_peft_adapter(built, adapter):
    """The base + adapter's logits are near those of the PEFT model (int4 noise aside), farther from the
    base's: the adapter is applied, with its scaling."""
    ours = onnx_logits(built["base"], adapter)
    with_adapter = torch_logits(built["hf"], built[adapter])
    without = torch_logits(built["hf"], None)
    assert np.abs(ours - with_adapter).max() < 0.5 * np.abs(ours - without).max()
    base_alone = onnx_logits(built["base"], None)
    assert np.abs(base_alone - without).max() < np.abs(base_alone - with_adapter).max()


def test_server_picks_the_adapter_per_request(built):
    server = Server(built["base"], "--name", "tiny")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny", "tiny:first", "tiny:second"]
        answers = {}
        for model in ["tiny", "base", "tiny:first", "base:second"]:
            reply = client.completions.create(
                model=model, prompt="The quick brown fox", max_tokens=12, temperature=0
            )
            answers[model] = reply.choices[0].text
        assert answers["tiny"] == answers["base"]
        assert len({answers["tiny"], answers["tiny:first"], answers["base:second"]}) == 3
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="tiny:third", prompt="x", max_tokens=2)
    finally:
        assert server.stop()[0] == 0
    # generate --adapter gives the same text as the server's greedy answer; without it, the base's own adapter
    for flag, model in [(["--adapter", "second"], "base:second"), ([], "tiny:first")]:
        command = [sys.executable, "-m", "slimtune", "generate", "--model", str(built["base"]), *flag]
        command += ["--prompt", "The quick brown fox", "--max-new-tokens", "12", "--raw"]
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        assert out.stdout.rstrip("\n") == answers[model]


def test_an_adapter_that_does_not_fit_is_refused(built, tmp_path, capsys):
    foreign = tmp_path / "foreign.onnx_adapter"
    write_adapter(
        foreign, {"model.layers.0.attn.q_proj.lora_A.MatMul.weight": np.ones((64, 4), np.float32)}, "0" * 64
    )
    wrong_shape = tmp_path / "wrong.onnx_adapter"
    fingerprint = __import__("json").loads((built["base"] / MANIFEST).read_text())["fingerprint"]
    write_adapter(
        wrong_shape,
        {
            "model.layers.0.attn.q_proj.lora_A.MatMul.weight": np.ones((32, 4), np.float32),
            "model.layers.0.attn.v_proj.lora_A.MatMul.weight": np.ones((64, 4), np.float32),
            "model.layers.0.attn.v_proj.lora_B.MatMul.weight": np.ones((2, 32), np.float32),
            "model.layers.9.attn.q_proj.lora_A.MatMul.weight": np.ones((64, 4), np.float32),
        },
        fingerprint,
    )
    cases = [
        (foreign, "exported for another base"),
        (wrong_shape, "has shape [32, 4], the base takes [64, 'lora_rank']"),
        (wrong_shape, "no LoRA input of the base"),
        (wrong_shape, "A and B ranks differ"),
        (tmp_path / "missing.onnx_adapter", "no such file"),
    ]
    for path, message in cases:
        code = main(["serve", "--model", str(built["base"]), "--adapter", f"x={path}", "--port", "0"])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
        assert "Traceback" not in err
    plain = built["hf"]  # a Hugging Face folder takes no .onnx_adapter
    assert main(["serve", "--model", str(plain), "--adapter", f"x={foreign}"]) == 2
    assert "ONNX Runtime GenAI base" in capsys.readouterr().err


def test_a_config_builds_the_base_and_the_server_answers_with_a_label(tmp_path):
    """LoRA -> ExtractAdapters from one config: the run's model is the int4 base with the trained adapter
    beside it; the server streams through the adapter and predicts a recorded label."""
    from tests.tiny_models import make_tiny_model
    from tests.workflows import EMOTION_TEMPLATE, emotion_data_config, run_config

    tiny = make_tiny_model("llama", tmp_path / "tiny")
    lora = {"type": "LoRA", "train_data_config": "emotion", "r": 4, "training_args": {"max_steps": 2}}
    config = {
        "input_model": {"type": "HfModel", "model_path": str(tiny)},
        "data_configs": [emotion_data_config(40)],
        "passes": {"lora": lora, "extract": {"type": "ExtractAdapters", "adapter_name": "tone"}},
        "cache_dir": "cache",
        "output_dir": "out",
    }
    record = run_config(tmp_path, config)
    model = tmp_path / "out" / "model"
    assert (model / "adapters" / "tone.onnx_adapter").is_file()
    labels = ModelMeta.load(model).labels
    server = Server(model)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        prompt = EMOTION_TEMPLATE.split("{tone}")[0].format(phrase="I am so happy today!")
        stream = client.completions.create(
            model="model:tone", prompt=prompt, max_tokens=4, temperature=0, stream=True
        )
        assert [c.choices[0].finish_reason for c in stream][-1] in ("stop", "length")
        import json
        import urllib.request

        request = urllib.request.Request(
            server.url + "/v1/slimtune/predict",
            data=json.dumps({"model": "model:tone", "input": {"phrase": "I am so happy today!"}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["label"] in labels
    finally:
        assert server.stop()[0] == 0
    assert [s["kind"] for s in record["stages"]] == ["hf", "adapter", "onnx"]


def test_requests_share_a_batch_only_on_the_same_adapter(built):
    """Four requests waiting together, two on each adapter: batched by adapter (the generator applies one
    adapter to all its rows), each answered as when sent alone."""
    import threading

    from slimtune.models.hf import load_tokenizer
    from tests.serve_helpers import generator_busy, health

    server = Server(
        built["base"], "--name", "tiny", "--parallel", "8", "--batch-size", "8", "--max-tokens-cap", "8000"
    )
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
        asks = [(m, p) for m in ("tiny:first", "tiny:second") for p in ("The quick brown fox", "Hello")]

        def ask(model: str, prompt: str, stream: bool = False) -> str:
            reply = client.completions.create(
                model=model, prompt=prompt, max_tokens=12, temperature=0, stream=stream
            )
            return "".join(c.choices[0].text for c in reply) if stream else reply.choices[0].text

        alone = [ask(m, p) for m, p in asks]
        assert alone[0] != alone[2]  # the adapters answer differently
        together: dict[int, str] = {}
        threads = [
            threading.Thread(target=lambda i=i: together.__setitem__(i, ask(*asks[i], stream=True)))
            for i in range(4)
        ]
        # a long answer (EOS banned) keeps the one generator busy while the four arrive
        ban = {str(load_tokenizer(built["base"]).eos_token_id): -100}
        long = {"model": "tiny", "prompt": "Wow", "max_tokens": 8000, "temperature": 0, "logit_bias": ban}
        with generator_busy(server, long, then_running=5):
            for thread in threads:
                thread.start()
        for thread in threads:
            thread.join(120)
        assert [together[i] for i in range(4)] == alone
        assert health(server)["largest_batch"] == 2
    finally:
        assert server.stop()[0] == 0
