"""What a pass receives and returns: a model on disk, its kind, and what it was trained with.

A model folder made by slimtune carries `slimtune.json` (MODEL_META): the prompt template, the answer column
and the label set it was trained with, and the base model. Later commands (`generate`, `evaluate`) read it
so they can format inputs without the config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

MODEL_META = "slimtune.json"
ModelKind = Literal["hf", "adapter", "onnx", "gguf"]


@dataclass
class ModelRef:
    path: str  # folder (hf, adapter, onnx, gguf: the folder GGUFExport writes, or a .gguf file)
    kind: ModelKind
    base_path: str | None = None  # adapter: the folder of the base model it applies to

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRef:
        return cls(**data)


@dataclass
class ModelMeta:
    """Task metadata kept beside the weights (slimtune.json)."""

    template: str | None = None  # e.g. "### Text: {phrase}\n### The tone is:\n{tone}"
    answer_column: str | None = None  # the template's last field, when the template ends with it
    labels: list[str] | None = None  # the label set seen in training, when the answer is a label
    chat_template: bool = False  # prompts were rendered through the tokenizer's chat template
    messages_col: str | None = None  # rows were conversations in this column (role/content messages)
    loss_on_answer_only: bool = (
        False  # the loss was on the answer (assistant turns) only: perplexity scores those
    )
    add_special_tokens: bool = True  # training samples were BOS + text + EOS (the prompt starts with BOS)
    base_model: str | None = None  # name or path of the original base model
    # an adapter trained against the int4 grid (LoRA quantization_aware): {"scheme": "int4", "block_size": 32};
    # it is evaluated on the base quantized the same way, which is how ModelBuilder will run it
    quantized_base: dict | None = None
    history: list[str] = field(default_factory=list)  # passes applied, in order

    def pre_process(self) -> Any:
        """The PreProcessDataConfig that formats rows as training did (None when nothing is recorded)."""
        from slimtune.config.schema import PreProcessDataConfig

        if self.messages_col:
            return PreProcessDataConfig(
                messages_col=self.messages_col,
                loss_on_answer_only=self.loss_on_answer_only,
                add_special_tokens=self.add_special_tokens,
            )
        if not self.template:
            return None
        return PreProcessDataConfig(
            text_template=self.template,
            chat_template=self.chat_template,
            add_special_tokens=self.add_special_tokens,
            loss_on_answer_only=self.loss_on_answer_only,
        )

    def save(self, folder: str | Path) -> None:
        Path(folder, MODEL_META).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> ModelMeta | None:
        path = Path(folder, MODEL_META)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
