"""The example's two configs (old and current schema) describe the same run."""

from __future__ import annotations

from pathlib import Path

from slimtune.config.validate import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "emotion"


def test_old_and_current_schema_examples_are_the_same_run():
    old, new = load_config(EXAMPLE / "config.json"), load_config(EXAMPLE / "config.yaml")
    assert old.config.model_dump() == new.config.model_dump()
    assert [(p.name, p.type, p.params.model_dump()) for p in old.passes] == [
        (p.name, p.type, p.params.model_dump()) for p in new.passes
    ]
    assert old.notes and not new.notes  # only the old one needed mapping
