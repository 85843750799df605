"""Shared base for config models: unknown keys are errors, and every field carries its description."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A config section. `renamed` maps old (Olive) key names to current ones; the migration applies it
    and the nearest-key suggestions know both names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    renamed: ClassVar[dict[str, str]] = {}

    @classmethod
    def known_keys(cls) -> dict[str, str]:
        """Every key a user may write here -> the current name it stands for."""
        keys = {name: name for name in cls.model_fields}
        keys.update(cls.renamed)
        return keys
