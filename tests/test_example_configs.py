"""The example's two configs (old and current schema) describe the same run."""

from __future__ import annotations

from pathlib import Path

from slimtune.config.load import load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "emotion"


def test_old_and_current_schema_examples_are_the_same_run():
    old, new = load_config(EXAMPLE / "config.json"), load_config(EXAMPLE / "config.yaml")
    assert old.config.model_dump() == new.config.model_dump()
    assert [(p.name, p.type, p.params.model_dump()) for p in old.passes] == [
        (p.name, p.type, p.params.model_dump()) for p in new.passes
    ]
    assert old.notes and not new.notes  # only the old one needed mapping


def test_search_example_is_the_example_with_a_searched_builder():
    base, search = load_config(EXAMPLE / "config.yaml"), load_config(EXAMPLE / "search.yaml")
    lora = [p for p in search.passes if p.name == "lora"][0]
    assert lora.params.model_dump() == base.passes[0].params.model_dump()  # same LoRA: same cache entry
    builder = [p for p in search.passes if p.name == "builder"][0]
    points = [dict(p.values) for p in builder.space.points()]
    assert points == [{"int4_accuracy_level": a, "int4_block_size": b} for b in (32, 128) for a in (1, 4)]
    assert search.config.search_strategy.sampler == "exhaustive"
