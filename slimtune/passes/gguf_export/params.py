"""GGUFExport: a merged model (or base + adapter) to a .gguf file for llama.cpp, Ollama and LM Studio."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slimtune.config.base import Strict

QuantType = Literal["q4_0", "q4_k_m", "q5_k_m", "q8_0", "f16", "bf16", "f32"]


class GGUFExportParams(Strict):
    quant_type: QuantType = Field(
        "q4_k_m",
        description="llama.cpp weight type: q4_0, q4_k_m (Ollama's default), q5_k_m, q8_0, or unquantized "
        "f16 / bf16 / f32",
        json_schema_extra={"search_defaults": ["q4_0", "q4_k_m", "q8_0"]},
    )
    threads: int | None = Field(
        None, ge=1, description="threads llama.cpp quantizes with (default: every core)"
    )
