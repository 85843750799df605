"""Warnings that a library raises from its own internal calls, which slimtune cannot avoid by what it passes.

Each is silenced by its exact message, only around the calls that raise it, with the reason beside it; any
other warning (and this one raised elsewhere) still shows. Warnings that slimtune's own arguments cause are
fixed at the call instead (current argument names; the config's old names are mapped by the migration).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (category, exact message)
UNAVOIDABLE: list[tuple[type[Warning], str]] = [
    # peft 0.21 (PeftModel.__init__, used by get_peft_model and PeftModel.from_pretrained) reads
    # `model.is_gradient_checkpointing`, a property transformers 5 deprecated: every adapter attached or loaded
    # printed this, whatever slimtune passed.
    (
        FutureWarning,
        "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` "
        "instead.",
    ),
]


@contextmanager
def peft_calls() -> Iterator[None]:
    """Around a peft call that wraps a transformers model (get_peft_model, PeftModel.from_pretrained)."""
    with warnings.catch_warnings():
        for category, message in UNAVOIDABLE:
            warnings.filterwarnings("ignore", message=re.escape(message) + r"\Z", category=category)
        yield
