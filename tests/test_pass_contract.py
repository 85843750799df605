"""Every registered pass keeps the contract the engine relies on (docs/adding-a-pass.md): its parameters
round-trip through JSON, its search values are valid, it estimates its memory, and it runs on a tiny model from
a plain-data context, producing the kind of model its spec declares in the folder it was given. Also: the
context's JSON form is all a pass needs in another process, and a new pass is one folder plus one registry line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from workflows import emotion_data_config

from slimtune.models.ref import ModelMeta, ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.memory import Estimate, MemoryQuery
from slimtune.passes.registry import all_passes
from tests.tiny_models import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
PASSES = sorted(all_passes())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def tiny_adapter(tiny, tmp_path_factory) -> Path:
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny)
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(folder)
    return folder


def _params(spec):
    return spec.params.model_validate(spec.example)


def _data_configs(spec, params) -> dict:
    """Each data config the example names, as the example's emotion data (20 rows)."""
    out = {}
    for name in spec.data_names(params).values():
        out[name] = {**emotion_data_config(20), "name": name}
    return out


@pytest.mark.parametrize("name", PASSES)
def test_parameters_round_trip_through_json(name):
    spec = all_passes()[name]
    params = _params(spec)
    dumped = json.loads(json.dumps(params.model_dump(mode="json")))
    assert spec.params.model_validate(dumped) == params
    # every field is in the dump (run.json records the settings in force, defaults included)
    assert set(dumped) == set(spec.params.model_fields)


@pytest.mark.parametrize("name", PASSES)
def test_search_values_are_valid(name):
    from slimtune.config.load import search_defaults

    spec = all_passes()[name]
    for field, values in search_defaults(spec.params).items():
        for value in values:
            spec.params.model_validate({**spec.example, field: value})


@pytest.mark.parametrize("name", PASSES)
def test_spec_is_complete(name, tiny):
    spec = all_passes()[name]
    assert (
        spec.version >= 1
        and spec.summary
        and spec.input_kinds
        and spec.output_kind in ("hf", "adapter", "onnx", "gguf")
    )
    assert set(spec.data_fields) <= set(spec.params.model_fields)
    assert spec.memory is not None and spec.memory_advice is not None
    params = _params(spec)
    from slimtune.config.schema import DataConfig

    data = {
        key: DataConfig.model_validate({**emotion_data_config(20), "name": value})
        for key, value in spec.data_names(params).items()
    }
    query = MemoryQuery("p", name, params, tiny, "cpu", data)
    estimate = spec.memory(query)
    assert isinstance(estimate, Estimate) and estimate.total > 0 and estimate.advice
    assert spec.memory_advice(query)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if "cpu" in all_passes()[n].devices else [pytest.mark.gpu]) for n in PASSES],
)
def test_runs_on_a_tiny_model_from_a_plain_context(name, tiny, tiny_adapter, tmp_path):
    spec = all_passes()[name]
    device = "cpu" if "cpu" in spec.devices else "cuda"
    if device == "cuda" and not _cuda():
        pytest.skip(f"{name} runs on {', '.join(spec.devices)} only")
    params = _params(spec)
    if "hf" in spec.input_kinds:
        model = ModelRef(str(tiny), "hf")
    else:
        model = ModelRef(str(tiny_adapter), "adapter", base_path=str(tiny))
    ctx = PassContext(
        input=model,
        meta=ModelMeta(),
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        device=device,
        execution_provider=device,
        data_configs=_data_configs(spec, params),
        log=lambda _message: None,
    )
    ctx.output_dir.mkdir()
    ctx = PassContext.from_json(json.loads(json.dumps(ctx.to_json())), log=ctx.log)  # plain data only
    produced = spec.load_run()(ctx, params)
    assert produced.kind == spec.output_kind
    assert Path(produced.path) == ctx.output_dir and any(ctx.output_dir.iterdir())


def test_a_training_pass_runs_in_another_process_from_its_json_form(tiny, tmp_path):
    """The multi-GPU workers' entry point (one per GPU under torchrun) run here as one plain process: it reads
    only the job's JSON (context + parameters) and trains."""
    from slimtune.files import write_json_atomic
    from slimtune.passes.lora import LoRAParams

    params = LoRAParams(train_data_config="train", training_args={"max_steps": 1})
    ctx = PassContext(
        input=ModelRef(str(tiny), "hf"),
        meta=ModelMeta(),
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        data_configs={"train": {**emotion_data_config(20), "name": "train"}},
    )
    ctx.output_dir.mkdir()
    job = tmp_path / "job.json"
    result = tmp_path / "result.json"
    write_json_atomic(
        job,
        {
            "context": ctx.to_json(),
            "params_model": "slimtune.passes.lora.params:LoRAParams",
            "params": params.model_dump(mode="json"),
            "result": str(result),
        },
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "slimtune.passes.lora.distributed", str(job)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(result.read_text())
    assert out["ref"]["kind"] == "adapter" and out["ref"]["path"] == str(ctx.output_dir)
    assert (ctx.output_dir / "adapter_config.json").is_file()
    assert out["meta"]["template"] == emotion_data_config()["pre_process_data_config"]["text_template"]


def test_a_new_pass_is_one_folder_and_one_registry_line(tiny, tmp_path, monkeypatch):
    """A pass written as a folder with its spec in __init__ and listed in PASS_MODULES runs from a config,
    with no engine change; a second run is a cache hit."""
    from slimtune.cli.main import main
    from slimtune.passes import registry

    folder = tmp_path / "src" / "copy_pass"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(
        textwrap.dedent(
            """
            from slimtune.config.base import Strict
            from slimtune.passes.memory import Estimate
            from slimtune.passes.registry import PassSpec, register_pass


            class CopyParams(Strict):
                note: str = "copied"


            def estimate(query):
                return Estimate(query.name, "CopyModel", 1, {"nothing": 1}, "cpu", "none")


            register_pass(
                PassSpec(
                    "CopyModel", CopyParams, "copy_pass.run:run", version=1, summary="copy the model",
                    memory=estimate, memory_advice=lambda query: "free memory",
                )
            )
            """
        )
    )
    (folder / "run.py").write_text(
        textwrap.dedent(
            """
            import shutil
            from pathlib import Path

            from slimtune.models.ref import ModelRef


            def run(ctx, params):
                shutil.copytree(ctx.input.path, ctx.output_dir, dirs_exist_ok=True)
                (Path(ctx.output_dir) / "NOTE").write_text(params.note)
                return ModelRef(str(ctx.output_dir), "hf")
            """
        )
    )
    monkeypatch.syspath_prepend(str(folder.parent))
    monkeypatch.setattr(registry, "PASS_MODULES", [*registry.PASS_MODULES, "copy_pass"])
    monkeypatch.setattr(registry, "_loaded", False)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "input_model": {"type": "HfModel", "model_path": str(tiny)},
                "passes": {"copy": {"type": "CopyModel", "note": "hello"}},
                "cache_dir": str(tmp_path / "cache"),
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    assert main(["run", "--config", str(config)]) == 0
    assert (tmp_path / "out" / "model" / "NOTE").read_text() == "hello"
    assert main(["run", "--config", str(config)]) == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["passes"][0]["cache_hit"] is True and record["passes"][0]["params"] == {"note": "hello"}
    monkeypatch.undo()
    registry._REGISTRY.pop("CopyModel", None)
