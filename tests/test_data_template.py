"""Templates: fields, the answer column, prompt/answer split, text columns, CLI escapes, errors."""

from __future__ import annotations

import pytest

from slimtune.config.schema import PreProcessDataConfig
from slimtune.config.template_syntax import parse_template
from slimtune.data.template import Template, unescape_cli
from slimtune.errors import DataError, UserError

SEED = "### Text: {phrase}\n### The tone is:\n{tone}"
ROW = {"phrase": "I am happy", "tone": "joy", "id": 7}


def make(template=None, **kw):
    return Template(PreProcessDataConfig(text_template=template, **kw))


def test_seed_template_splits_into_prompt_and_answer():
    t = make(SEED)
    assert t.fields == ["phrase", "tone"]
    assert t.answer_column == "tone"
    assert t.render(ROW) == "### Text: I am happy\n### The tone is:\njoy"
    assert t.prompt(ROW) == "### Text: I am happy\n### The tone is:\n"
    assert t.answer(ROW) == "joy"
    assert t.prompt(ROW) + t.completion(ROW) == t.render(ROW)


@pytest.mark.parametrize(
    ("template", "answer"),
    [
        ("Q {phrase} A {tone}", "tone"),
        ("Q {phrase} A {tone} \n", "tone"),  # whitespace after the field is allowed
        ("Q {phrase} A {tone}.", None),  # text after it is not
        ("{phrase}", None),  # a lone field is all prompt
        ("Label: {tone}", "tone"),
        ("{{literal}} {phrase} -> {tone!s:>5}", "tone"),
    ],
)
def test_answer_column(template, answer):
    assert make(template).answer_column == answer


def test_trailing_whitespace_goes_to_the_completion():
    t = make("Q {phrase} A {tone}\n")
    assert t.prompt(ROW) == "Q I am happy A "
    assert t.answer(ROW) == "joy"
    assert t.completion(ROW) == "joy\n"


def test_format_specs_and_escaped_braces():
    t = make("{{x}} #{id:03d} {phrase!r}")
    assert t.render(ROW) == "{x} #007 'I am happy'"
    assert t.fields == ["id", "phrase"]


def test_text_cols_join_with_newlines():
    t = Template(PreProcessDataConfig(text_cols=["phrase", "tone"]))
    assert t.render(ROW) == "I am happy\njoy"
    assert t.answer_column == "tone"
    assert t.prompt(ROW) == "I am happy\n"
    one = Template(PreProcessDataConfig(text_cols="phrase"))
    assert one.answer_column is None and one.prompt(ROW) == "I am happy"


def test_default_is_the_text_column():
    assert Template(PreProcessDataConfig(), columns=["text", "x"]).fields == ["text"]


def test_no_text_source_names_the_columns():
    with pytest.raises(DataError, match="no text_template, text_cols or messages_col.*columns: phrase, tone"):
        Template(PreProcessDataConfig(), columns=["phrase", "tone"])


def test_missing_field_names_the_field_and_the_columns():
    with pytest.raises(DataError) as err:
        Template(
            PreProcessDataConfig(text_template="{phrase} {mood}"), columns=["phrase", "tone"], file="d.json"
        )
    assert (
        "d.json" in str(err.value)
        and "{mood}" in str(err.value)
        and "columns: phrase, tone" in str(err.value)
    )
    assert err.value.column == "mood"
    with pytest.raises(DataError, match=r"\{mood\}.*columns: phrase, tone, id"):
        make("{phrase} {mood}").render(ROW)


def test_malformed_template():
    with pytest.raises(UserError, match="not a valid format string"):
        parse_template("{phrase")
    with pytest.raises(UserError, match="must name columns"):
        parse_template("{} {0}")
    for bad in ("{phrase", "{} {0}"):  # and a config holding one is refused when it is read
        with pytest.raises(ValueError, match="text_template"):
            PreProcessDataConfig(text_template=bad)
    # `data inspect --template` replaces the config's template without validation: Template checks it too
    with pytest.raises(UserError, match="not a valid format string"):
        Template(PreProcessDataConfig().model_copy(update={"text_template": "{phrase"}))


def test_field_that_a_row_cannot_fill():
    template = make("{q[0]} {a:d}")
    for row in ({"q": {}, "a": 1}, {"q": "", "a": 1}, {"q": "x", "a": "not a number"}):
        with pytest.raises(DataError, match="cannot be filled from this row"):
            template.render(row)
    assert template.render({"q": "xyz", "a": 7}) == "x 7"


def test_unescape_cli():
    assert unescape_cli(r"### Text: {phrase}\n### The tone is:\n{tone}") == SEED
    assert unescape_cli(r"a\tb\\n") == "a\tb\\n"
    assert unescape_cli("real\nnewline") == "real\nnewline"


def test_chat_needs_a_tokenizer_with_a_chat_template():
    class NoChat:
        chat_template = None

    with pytest.raises(UserError, match="no chat template"):
        Template(PreProcessDataConfig(text_template=SEED, chat_template=True), NoChat())
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        Template(PreProcessDataConfig(text_template=SEED, chat_template=True)).render(ROW)
