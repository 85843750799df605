"""The syntax of a `text_template`: a Python format string whose fields name columns.

Parsing lives here, below both the config schema (which rejects a malformed template when the config loads)
and `slimtune.data.template` (which renders rows with the parts), so neither imports the other.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from slimtune.errors import UserError

_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class TemplatePart:
    literal: str
    column: str | None = None  # the row key a field reads
    expr: str | None = None  # the full field expression ({a[0]}, {a.b}); None: plain column lookup
    spec: str = ""
    conversion: str | None = None


def parse_template(template: str) -> list[TemplatePart]:
    """The template as literal text and fields. Raises UserError on a malformed format string."""
    try:
        items = list(_FORMATTER.parse(template))
    except ValueError as err:
        raise UserError(
            f"text_template {template!r} is not a valid format string: {err} "
            "(write a literal brace as {{ or }})"
        ) from None
    parts = []
    for literal, field, spec, conversion in items:
        if field is None:
            parts.append(TemplatePart(literal))
            continue
        if not field or field.isdigit():
            raise UserError(
                f"text_template {template!r}: fields must name columns, like {{phrase}}; got {{{field}}}"
            )
        column = field.split(".")[0].split("[")[0]
        parts.append(
            TemplatePart(literal, column, None if field == column else field, spec or "", conversion)
        )
    return parts
