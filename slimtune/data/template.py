"""Turning a row into text: a Python format template over columns, text columns joined with newlines, or the
model's chat template (a messages column, or the template's prompt as the user turn and its answer field as
the assistant turn).

A template that ends with one field, e.g. `### Text: {phrase}\\n### The tone is:\\n{tone}`, splits into a
prompt (everything before `{tone}`: exactly what a model must continue) and an answer (the `tone` value).
Training with the loss on the answer only, the evaluator's prompts and label counts all rest on that split.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from slimtune.config.schema import PreProcessDataConfig
from slimtune.config.template_syntax import TemplatePart, parse_template
from slimtune.errors import DataError, UserError

_FORMATTER = string.Formatter()


def unescape_cli(text: str) -> str:
    r"""A template typed in a shell: a literal backslash-n means a newline (\t a tab, \\ a backslash)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class Template:
    """How rows become text, built from a `pre_process_data_config`. `columns` (the data's column names)
    fills the defaults (a `text` or `messages` column) and checks that every field exists."""

    def __init__(
        self,
        pre: PreProcessDataConfig,
        tokenizer: Any = None,
        columns: Sequence[str] | None = None,
        file: str | None = None,
    ):
        self.tokenizer = tokenizer
        self.pre = pre
        self.text_template = pre.text_template
        self.messages_col = pre.messages_col
        text_cols = [pre.text_cols] if isinstance(pre.text_cols, str) else pre.text_cols
        if not self.text_template and not text_cols and not self.messages_col:
            if columns is not None and "text" not in columns and "messages" in columns:
                self.messages_col = "messages"
            elif columns is None or "text" in columns:
                text_cols = ["text"]
            else:
                raise DataError(
                    f"no text_template, text_cols or messages_col: say which columns make the text; "
                    f"columns: {', '.join(columns)}",
                    file=file,
                )
        self.chat = bool(pre.chat_template or self.messages_col)
        if self.messages_col:
            self.parts: list[TemplatePart] = [TemplatePart("", self.messages_col)]
        elif self.text_template:
            self.parts = parse_template(self.text_template)
        else:
            self.parts = [TemplatePart("\n" if i else "", c) for i, c in enumerate(text_cols)]
        if self.chat and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "chat rendering asked for (chat_template / messages_col), but the model's tokenizer has "
                "no chat template; use text_template instead"
            )
        if columns is not None:
            self.check_columns(columns, file)

    # ------------------------------------------------------------------ structure

    @property
    def fields(self) -> list[str]:
        """Columns the template reads, in order of first use."""
        return list(dict.fromkeys(p.column for p in self.parts if p.column))

    @property
    def answer_column(self) -> str | None:
        """The last field when the text ends with it (whitespace after it allowed); None otherwise."""
        if self.messages_col:
            return None
        parts = self._trimmed()
        if not parts or not parts[-1].column:
            return None
        if len(parts) == 1 and not parts[0].literal:
            return None  # `{text}` alone: all of it is prompt, nothing to answer
        return parts[-1].column

    def describe(self) -> str:
        if self.messages_col:
            return f"chat template over column {self.messages_col!r}"
        text = self.text_template or "\n".join("{" + p.column + "}" for p in self.parts)
        return f"chat template around {text!r}" if self.chat else text

    def check_columns(self, columns: Sequence[str], file: str | None = None) -> None:
        for column in self.fields:
            if column not in columns:
                what = "messages_col" if column == self.messages_col else "the template"
                raise DataError(
                    f"{what} uses field {{{column}}}, which is not a column; columns: {', '.join(columns)}",
                    file=file,
                    column=column if file else None,
                )

    def _trimmed(self) -> list[TemplatePart]:
        """Parts without the trailing literal-only whitespace."""
        parts = list(self.parts)
        if parts and parts[-1].column is None and not parts[-1].literal.strip():
            parts.pop()
        return parts

    # ------------------------------------------------------------------ rendering

    def conversation(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A chat row as messages: the messages column, or the template's prompt as the user turn and its
        answer field (when it ends with one) as the assistant turn."""
        if self.messages_col:
            return self._messages(row)
        turns = [{"role": "user", "content": self._user_turn(row)}]
        if self.answer_column:
            turns.append({"role": "assistant", "content": self.answer(row)})
        return turns

    def render(self, row: Mapping[str, Any]) -> str:
        """The whole text of a row: what training sees."""
        if self.chat:
            return self._chat(self.conversation(row))
        return self._join(self.parts, row)

    def prompt(self, row: Mapping[str, Any]) -> str:
        """The text a model must continue to produce the answer (the whole text when there is no answer); for
        a conversation, every turn before its last assistant turn, and the generation prompt."""
        if self.messages_col:
            from slimtune.data.chat import last_assistant

            messages = self._messages(row)
            last = last_assistant(messages)
            return self._chat(messages if last is None else messages[:last], add_generation_prompt=True)
        if self.chat:
            return self._chat([{"role": "user", "content": self._user_turn(row)}], add_generation_prompt=True)
        if not self.answer_column:
            return self.render(row)
        parts = self._trimmed()
        return self._join(parts[:-1], row) + parts[-1].literal

    def answer(self, row: Mapping[str, Any]) -> str:
        """The expected answer: the answer field's value (or the last assistant message); '' when none."""
        if self.messages_col:
            from slimtune.data.chat import last_assistant

            messages = self._messages(row)
            last = last_assistant(messages)
            return "" if last is None else str(messages[last].get("content") or "")
        if not self.answer_column:
            return ""
        return self._value(row, self._trimmed()[-1])

    def completion(self, row: Mapping[str, Any]) -> str:
        """render(row) minus prompt(row): the answer plus whatever the template or chat format adds after it."""
        full, prompt = self.render(row), self.prompt(row)
        return full[len(prompt) :] if full.startswith(prompt) else self.answer(row)

    def _user_turn(self, row: Mapping[str, Any]) -> str:
        if not self.answer_column:
            return self._join(self.parts, row)
        return self._join(self._trimmed()[:-1], row) + self._trimmed()[-1].literal.rstrip()

    def _join(self, parts: Sequence[TemplatePart], row: Mapping[str, Any]) -> str:
        return "".join(p.literal + (self._value(row, p) if p.column else "") for p in parts)

    def _value(self, row: Mapping[str, Any], part: TemplatePart) -> str:
        if part.column not in row:
            self.check_columns(list(row))
        field = "{" + (part.expr or part.column) + (f"!{part.conversion}" if part.conversion else "")
        field += (f":{part.spec}" if part.spec else "") + "}"
        if row[part.column] is None:
            raise DataError(f"a row has no value (null) for {{{part.column}}}: {_short(row)}")
        if part.expr is None and isinstance(row[part.column], (list, dict)):
            # str() would put Python's repr of it into the training text
            kind = "a list" if isinstance(row[part.column], list) else "an object"
            raise DataError(
                f"{{{part.column}}} holds {kind}, not text: {_short(row)}; pick an item with a field such as "
                f"{{{part.column}[0]}}, or flatten the column"
            )
        try:
            value = row[part.column] if part.expr is None else _FORMATTER.get_field(part.expr, (), row)[0]
            if value is None:
                raise DataError(f"a row has no value (null) for {field}: {_short(row)}")
            if part.conversion:
                value = _FORMATTER.convert_field(value, part.conversion)
            return format(value, part.spec) if part.spec else str(value)
        except (LookupError, AttributeError, TypeError, ValueError) as err:  # {a[0]}, {a.b}, {a:d}
            raise DataError(
                f"the template field {field} cannot be filled from this row ({type(err).__name__}: {err}): "
                f"{_short(row)}"
            ) from None

    def _messages(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.messages_col not in row:
            self.check_columns(list(row))
        messages = row[self.messages_col]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise DataError(
                f"column {self.messages_col!r} must hold a list of {{role, content}} messages; got "
                f"{_short(messages)}"
            )
        if not messages:
            raise DataError(f"column {self.messages_col!r} holds no messages: nothing to train on")
        return messages

    def _chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        if self.tokenizer is None:
            raise UserError("chat rendering needs the model's tokenizer (give a model)")
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def _short(value: Any, limit: int = 120) -> str:
    text = repr(dict(value) if isinstance(value, Mapping) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
