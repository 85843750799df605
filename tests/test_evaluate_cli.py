"""`slimtune evaluate`: --json output, kinds told by folder contents, templates from slimtune.json, exit codes;
and the demo's int4 model on held-out phrases when `make demo` has produced it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slimtune.cli.main import main
from slimtune.models.loading import model_ref
from slimtune.models.ref import ModelMeta
from tests.test_evaluate_backends import export, make_adapter
from tests.tiny_models import make_tiny_model

pytest.importorskip("onnxruntime_genai")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "runs" / "demo" / "model"
HELDOUT = ROOT / "examples" / "emotion" / "heldout.jsonl"
TEMPLATE = "### Text: {phrase}\\n### The tone is:\\n{tone}"  # as typed in a shell
ROWS = [
    {"phrase": "I am so happy today!", "tone": "joy"},
    {"phrase": "The dark alley scares me.", "tone": "fear"},
    {"phrase": "I miss my old friends.", "tone": "sadness"},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate_cli")
    hf = make_tiny_model("llama", root / "hf")
    onnx = export(hf, root / "onnx")
    ModelMeta(template=TEMPLATE.replace("\\n", "\n"), answer_column="tone", labels=["joy", "surprise"]).save(
        onnx
    )
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return {"hf": hf, "onnx": onnx, "adapter": make_adapter(hf, root / "adapter", zero=True), "data": data}


def run_json(capsys, *argv: str) -> dict:
    code = main(["evaluate", *argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)  # stdout holds the JSON object and nothing else


def test_json_keys_with_template_from_the_folder(folders, capsys):
    result = run_json(
        capsys,
        "--model",
        str(folders["onnx"]),
        "--data",
        str(folders["data"]),
        "--metrics",
        "accuracy",
        "latency",
        "size",
    )
    assert {"accuracy", "n", "per_class", "latency", "size_bytes", "confusion", "invalid"} <= set(result)
    assert result["n"] == 3 and result["kind"] == "onnx"
    # label set: slimtune.json's labels, then the data's other values
    assert result["labels"] == ["joy", "surprise", "fear", "sadness"]
    assert set(result["per_class"]) == set(result["labels"])
    assert result["latency"]["runs"] == 20 and result["latency"]["warmup"] == 3


def test_hf_folder_with_template_flag_and_max_rows(folders, capsys):
    result = run_json(
        capsys,
        "--model",
        str(folders["hf"]),
        "--data",
        str(folders["data"]),
        "--template",
        TEMPLATE,
        "--metrics",
        "accuracy",
        "likelihood",
        "perplexity",
        "--max-rows",
        "2",
    )
    assert result["n"] == 2 and result["kind"] == "hf"
    assert result["labels"] == ["fear", "joy"]
    assert 0.0 <= result["likelihood_accuracy"] <= 1.0 and result["perplexity"] > 1.0


def test_text_output(folders, capsys):
    code = main(
        [
            "evaluate",
            "--model",
            str(folders["onnx"]),
            "--data",
            str(folders["data"]),
            "--metrics",
            "accuracy",
            "latency",
            "size",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for words in ("accuracy", "invalid", "precision", "confusion", "latency", "threads", "size"):
        assert words in out


def test_no_template_anywhere_is_exit_2(folders, capsys):
    code = main(["evaluate", "--model", str(folders["hf"]), "--data", str(folders["data"])])
    err = capsys.readouterr().err
    assert code == 2
    assert "--template" in err and "slimtune.json" in err


def test_bad_inputs_are_exit_2(folders, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--data", str(folders["data"])]) == 2
    assert main(["evaluate", "--model", str(tmp_path), "--data", str(folders["data"])]) == 2  # no model files
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(folders["onnx"]),
                "--data",
                str(folders["data"]),
                "--label-col",
                "mood",
            ]
        )
        == 2
    )
    assert main(["evaluate", "--model", str(folders["onnx"]), "--data", str(tmp_path / "none.jsonl")]) == 2
    capsys.readouterr()


def test_kinds_from_folder_contents(folders, tmp_path):
    assert model_ref(folders["hf"]).kind == "hf"
    assert model_ref(folders["onnx"]).kind == "onnx"
    adapter = model_ref(folders["adapter"])
    assert adapter.kind == "adapter" and Path(adapter.base_path) == folders["hf"].resolve()
    moved = shutil.copytree(folders["adapter"], tmp_path / "adapter")
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    from slimtune.errors import ModelError

    with pytest.raises(ModelError, match="base model"):
        model_ref(moved)


@pytest.mark.skipif(
    not (DEMO / "genai_config.json").is_file(), reason="runs/demo/model not built (make demo)"
)
def test_demo_model_on_held_out_phrases(capsys):
    result = run_json(
        capsys,
        "--model",
        str(DEMO),
        "--data",
        str(HELDOUT),
        "--max-rows",
        "24",
        "--metrics",
        "accuracy",
        "size",
    )
    assert result["n"] == 24 and result["kind"] == "onnx"
    assert set(result["labels"]) == {"joy", "sadness", "fear", "surprise"}
    assert result["accuracy"] > 0.25  # better than chance over four labels
    assert result["invalid"] <= result["n"] // 4
