"""`slimtune generate` on a tiny Llama: an ONNX GenAI folder and a Hugging Face folder, --prompt and --input;
--input hands the model the prompt ids evaluation gives it for the same row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slimtune.cli.main import main
from slimtune.evaluate.generate import prompt_ids_from_row
from slimtune.models.decoding import StreamCutter, answer_end
from slimtune.models.hf import HfModel, load_tokenizer
from slimtune.models.kind import is_onnx_genai_folder
from slimtune.models.onnx_genai import OnnxGenaiModel
from slimtune.models.ref import ModelMeta, ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.model_builder import ModelBuilderParams
from slimtune.passes.model_builder.run import run as build
from tests.tiny_models import CHAT_TEMPLATE, make_tiny_model

pytest.importorskip("onnxruntime_genai")

TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
PROMPT = "### Text: I am so happy today!\n### The tone is:\n"
BOS = "<|im_start|>"  # tests/tiny_models.py's BOS: training samples start with it, so prompts must too


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    hf = make_tiny_model("llama", root / "hf")
    found = {"hf": hf}
    for precision in ("fp32", "int4"):
        ctx = PassContext(
            input=ModelRef(str(hf), "hf"),
            meta=ModelMeta(),
            output_dir=root / precision,
            work_dir=root / f"{precision}.work",
            device="cpu",
            execution_provider="cpu",
            log=lambda _: None,
        )
        found[precision] = Path(build(ctx, ModelBuilderParams(precision=precision)).path)
    return found


def with_meta(folder: Path, tmp_path: Path, **meta) -> Path:
    """A copy of `folder` (symlinked files) carrying a slimtune.json."""
    copy = tmp_path / folder.name
    copy.mkdir()
    for file in folder.iterdir():
        (copy / file.name).symlink_to(file)
    ModelMeta(**meta).save(copy)
    return copy


def ids_of(folder: Path, text: str) -> list[int]:
    """`text` encoded as written (a BOS written out in it becomes the BOS id), nothing added."""
    return load_tokenizer(folder)(text, add_special_tokens=False)["input_ids"]


def row_prompt(folder: Path, row: str) -> tuple[list[int], bool]:
    return prompt_ids_from_row(folder, row, load_tokenizer(folder))


def test_is_onnx_genai_folder(folders):
    assert is_onnx_genai_folder(folders["int4"])
    assert not is_onnx_genai_folder(folders["hf"])


@pytest.mark.parametrize("kind", ["int4", "hf"])
def test_generate_streams_to_stdout(folders, capsys, kind):
    assert main(["generate", "--model", str(folders[kind]), "--prompt", PROMPT, "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")


def test_onnx_fp32_and_transformers_agree(folders):
    """Same weights, same greedy decoding: the exported model continues the prompt as transformers does."""
    onnx_text = OnnxGenaiModel(folders["fp32"]).generate(PROMPT, 8)
    hf_text = HfModel(folders["hf"]).generate(PROMPT, 8)
    # a random model emits stray byte tokens: transformers decodes them as U+FFFD, the GenAI stream drops them
    assert onnx_text.replace("\ufffd", "") == hf_text.replace("\ufffd", "")
    assert len(onnx_text) > 3


def test_streamed_pieces_make_the_returned_text(folders):
    pieces: list[str] = []
    text = OnnxGenaiModel(folders["int4"]).generate(PROMPT, 12, stream_callback=pieces.append)
    assert "".join(pieces) == text


def test_prompt_longer_than_the_context_is_a_user_error(folders):
    from slimtune.errors import UserError

    with pytest.raises(UserError, match="takes at most 256"):
        OnnxGenaiModel(folders["int4"]).generate("a " * 400, 4)


def test_input_row_uses_the_recorded_template(folders, tmp_path, capsys, monkeypatch):
    folder = with_meta(
        folders["int4"],
        tmp_path,
        template=TEMPLATE,
        answer_column="tone",
        labels=["joy", "fear", "sadness", "surprise"],
    )
    assert row_prompt(folder, '{"phrase": "I am so happy today!"}') == (ids_of(folder, BOS + PROMPT), True)

    seen = {}
    real = OnnxGenaiModel.generate

    def spy(self, prompt, max_new_tokens, stream_callback=None, stop_at_newline=False, stop_text=None):
        seen.update(prompt=prompt, stop_at_newline=stop_at_newline)
        return real(self, prompt, max_new_tokens, stream_callback, stop_at_newline, stop_text)

    monkeypatch.setattr(OnnxGenaiModel, "generate", spy)
    row = '{"phrase": "I am so happy today!", "tone": "joy"}'  # the answer column, if given, is not used
    assert main(["generate", "--model", str(folder), "--input", row, "--max-new-tokens", "6"]) == 0
    assert seen == {"prompt": ids_of(folder, BOS + PROMPT), "stop_at_newline": True}
    assert "\n" not in capsys.readouterr().out.strip()


def test_input_row_without_special_tokens_has_no_bos(folders, tmp_path):
    folder = with_meta(
        folders["int4"], tmp_path, template=TEMPLATE, answer_column="tone", add_special_tokens=False
    )
    assert row_prompt(folder, '{"phrase": "I am so happy today!"}') == (ids_of(folder, PROMPT), False)


def test_input_row_with_a_chat_template(folders, tmp_path):
    folder = with_meta(folders["hf"], tmp_path, template=TEMPLATE, answer_column="tone", chat_template=True)
    prompt, one_line = row_prompt(folder, '{"phrase": "hi"}')
    assert prompt == ids_of(folder, "<|user|>\n### Text: hi\n### The tone is:<|end|>\n<|assistant|>\n")
    assert CHAT_TEMPLATE and not one_line


@pytest.mark.parametrize(
    ("meta", "row", "message"),
    [
        (None, '{"phrase": "x"}', "has no slimtune.json"),
        ({"template": TEMPLATE, "answer_column": "tone"}, '{"text": "x"}', "lacks column.*phrase"),
        ({"template": TEMPLATE, "answer_column": "tone"}, '{"phrase": x}', "not valid JSON"),
        ({"template": TEMPLATE, "answer_column": "tone"}, '["x"]', "must be a JSON object"),
        ({"template": None}, '{"phrase": "x"}', "no text template"),
    ],
)
def test_input_errors_exit_2_with_a_clear_message(folders, tmp_path, capsys, meta, row, message):
    folder = with_meta(folders["int4"], tmp_path, **meta) if meta is not None else folders["int4"]
    assert main(["generate", "--model", str(folder), "--input", row]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_not_a_model_folder(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi"]) == 2
    assert "neither an ONNX GenAI folder" in capsys.readouterr().err


def test_answer_end_and_stream_cutter():
    assert answer_end("joy") is None
    assert answer_end("\n\n") is None
    assert answer_end("\n joy\n###") == 5
    pieces: list[str] = []
    cutter = StreamCutter(pieces.append, one_line=True)
    assert [cutter.feed(p) for p in ["\n", "jo", "y\n### Text", ": more"]] == [False, False, True, True]
    assert cutter.text == "\njoy" and "".join(pieces) == "\njoy"
    plain = StreamCutter(None, one_line=False)
    assert not plain.feed("a\nb\n") and plain.text == "a\nb\n"


@pytest.mark.parametrize("meta", [{}, {"chat_template": True}, {"add_special_tokens": False}])
def test_generate_input_and_evaluation_give_the_model_the_same_ids(
    folders, tmp_path, capsys, monkeypatch, meta
):
    """`slimtune generate --input ROW` and `slimtune evaluate` on ROW hand the model the same prompt ids."""
    folder = with_meta(
        folders["hf"], tmp_path, template=TEMPLATE, answer_column="tone", labels=["joy"], **meta
    )
    row = {"phrase": "I am so happy today!", "tone": "joy"}
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(row) + "\n")
    seen: list[list[int]] = []
    real = HfModel.generate_ids

    def spy(self, prompt_ids, max_new_tokens, *, stop=None):
        seen.append(list(prompt_ids))
        return real(self, prompt_ids, max_new_tokens, stop=stop)

    monkeypatch.setattr(HfModel, "generate_ids", spy)
    assert (
        main(["generate", "--model", str(folder), "--input", json.dumps(row), "--max-new-tokens", "4"]) == 0
    )
    assert (
        main(["evaluate", "--model", str(folder), "--data", str(data), "--metrics", "accuracy", "--json"])
        == 0
    )
    capsys.readouterr()
    assert len(seen) == 2 and seen[0] == seen[1]
    bos = load_tokenizer(folder).bos_token_id
    if not meta:  # training samples start with BOS, so the prompt does (once)
        assert seen[0][0] == bos and bos not in seen[0][1:]
    if meta.get("add_special_tokens") is False:
        assert bos not in seen[0]
