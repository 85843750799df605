"""The micro-batch and sequence length LoRA trains with, chosen to fit this machine's memory.

Where the config sets `training_args.per_device_train_batch_size`, that is the micro-batch (and the memory
check refuses it when it cannot fit). Where it leaves it to slimtune, the effective batch is 8 (times
`gradient_accumulation_steps` when that is given) and the micro-batch is the largest divisor of it whose
estimate fits in HEADROOM of the memory available; gradient accumulation makes up the rest, so the optimiser
sees the same batch. The engine's memory check and the training process make the same choice (both call
`plan_batch` through memory.batch_choice).

The sequence length is what a micro-batch really holds: `max_seq_len` when rows are joined into blocks, and
the longest row after the template (at most `max_seq_len`) when each row is a sample: the pass pads each
micro-batch to its longest sample, whatever `pad_to_max_len` laid out (padding is masked and carries no
labels, so dropping it changes nothing but the work).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_EFFECTIVE_BATCH = 8
HEADROOM = 0.85  # share of the available memory an automatic choice plans for (the rest: other processes)


@dataclass
class BatchChoice:
    micro_batch: int  # per_device_train_batch_size
    accumulation: int  # gradient_accumulation_steps
    seq_len: int  # tokens of the longest micro-batch row
    automatic: bool  # False: the config set per_device_train_batch_size
    seq_source: str  # "longest row" or "max_seq_len"
    needed: int | None = None  # bytes the estimate gives for this choice (None: no estimate)
    available: int | None = None  # bytes available when the choice was made

    @property
    def effective(self) -> int:
        return self.micro_batch * self.accumulation

    def training_args(self, given: dict[str, Any]) -> dict[str, Any]:
        """`given` with the chosen micro-batch and accumulation (an explicit setting is left as it is)."""
        if not self.automatic:
            return dict(given)
        out = {**given, "per_device_train_batch_size": self.micro_batch}
        out["gradient_accumulation_steps"] = self.accumulation
        out.setdefault("per_device_eval_batch_size", self.micro_batch)
        return out

    def describe(self) -> str:
        from slimtune.passes.memory import gib

        how = "chosen to fit" if self.automatic else "as configured"
        text = (
            f"micro-batch {self.micro_batch} x {self.accumulation} accumulation step"
            f"{'s' if self.accumulation != 1 else ''} = effective batch {self.effective} ({how}), "
            f"rows of up to {self.seq_len} tokens ({self.seq_source})"
        )
        if self.needed is not None and self.available is not None:
            text += f"; estimate {gib(self.needed)} of {gib(self.available)} available"
        return text

    def metrics(self, ranks: int = 1) -> dict[str, Any]:
        """`ranks`: the data-parallel world; each rank steps on its own micro-batches, so the optimiser's
        batch is this rank's times the ranks."""
        return {**asdict(self), "ranks": ranks, "effective_batch": self.effective * ranks}


def sequence_length(pre: Any, longest: int | None) -> tuple[int, str]:
    """(tokens per micro-batch row, where the number comes from) for a data config's pre-processing."""
    if pre.strategy == "line-by-line" and longest:
        if longest < pre.max_seq_len:
            return longest, "longest row"
    return pre.max_seq_len, "max_seq_len"


def plan_batch(
    training_args: dict[str, Any],
    seq_len: int,
    seq_source: str,
    need: Callable[[int], int] | None,
    available: int | None,
) -> BatchChoice:
    """The micro-batch and accumulation for `training_args`; `need(micro_batch)` is the memory estimate in
    bytes (None: no estimate, so the default micro-batch), `available` the bytes available."""
    given = training_args.get("per_device_train_batch_size")
    accumulation = int(training_args.get("gradient_accumulation_steps") or 1)
    if given is not None:
        batch = int(given)
        needed = need(batch) if need else None
        return BatchChoice(batch, accumulation, seq_len, False, seq_source, needed, available)
    effective = DEFAULT_EFFECTIVE_BATCH * accumulation
    candidates = [b for b in range(effective, 0, -1) if effective % b == 0]
    batch = candidates[0]
    if need is not None and available is not None:
        fitting = [b for b in candidates if need(b) <= HEADROOM * available]
        batch = fitting[0] if fitting else 1
    needed = need(batch) if need else None
    return BatchChoice(batch, effective // batch, seq_len, True, seq_source, needed, available)


def available_bytes(device: str) -> int:
    """Memory available now: GPU memory free on this process's device, or RAM."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def longest_of(rows: Any, pre: Any, tokenizer: Any, template: Any) -> int | None:
    """Tokens of the longest row as training lays it out (template, special tokens), before truncation."""
    from slimtune.data.tokenize import row_token_lengths

    lengths = row_token_lengths(rows, pre, tokenizer, template)
    return max(lengths) if lengths else None


_LONGEST: dict[str, int | None] = {}


def longest_row(data_config: Any, model_folder: str) -> int | None:
    """longest_of for a data config with the tokenizer of `model_folder`, before the run (loads the rows and
    the tokenizer, no weights); None when it cannot be told here (joined rows, remote data, no tokenizer: the
    pass itself reports real problems). Remembered per data config and model in this process."""
    pre = data_config.pre_process_data_config
    if pre.strategy != "line-by-line" or data_config.load_dataset_config.data_files is None:
        return None
    key = json.dumps([data_config.model_dump(mode="json"), str(model_folder)], sort_keys=True)
    if key not in _LONGEST:
        _LONGEST[key] = _measure(data_config, model_folder)
    return _LONGEST[key]


def _measure(data_config: Any, model_folder: str) -> int | None:
    try:
        import transformers

        from slimtune.data.template import Template
        from slimtune.data.user_script import load_data

        rows = load_data(data_config)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_folder)
        pre = data_config.pre_process_data_config
        return longest_of(rows, pre, tokenizer, Template(pre, tokenizer, columns=rows.column_names))
    except Exception:  # noqa: BLE001 - an estimate falls back to max_seq_len; the pass names the problem
        return None
