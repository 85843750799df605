"""MergeAdapterWeights: fold a LoRA / QLoRA / DoRA adapter into its base and save a plain model folder."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slimtune.config.base import Strict


class MergeParams(Strict):
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the merged weights; auto keeps the base model's (fp32 for a QLoRA base)"
    )
