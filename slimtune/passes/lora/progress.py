"""Training helpers: batch collation with dynamic padding and a progress bar that shows tokens/s."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad to the longest row in the batch: input_ids with pad_id, labels with -100, attention_mask 0."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    batch: dict[str, Any] = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), -100, dtype=torch.long),
    }
    with_mask = "attention_mask" in rows[0]
    if with_mask:
        batch["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(row["input_ids"])
        batch["labels"][i, :n] = torch.tensor(row["labels"])
        if with_mask:
            batch["attention_mask"][i, :n] = torch.tensor(row["attention_mask"])
    return batch


class CountingCollator:
    """Wraps a collator and counts the real (non-padding) tokens it hands out, on the CPU: counting them on
    the GPU would make the host wait for the device at every micro-batch."""

    def __init__(self, inner, pad_id: int) -> None:
        self.inner = inner
        self.pad_id = pad_id
        self.tokens = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from slimtune.passes.lora.speed import real_length

        self.tokens += sum(
            real_length(r["input_ids"], r["labels"], r.get("attention_mask"), self.pad_id) for r in rows
        )
        return self.inner(rows)


class ProgressCallback(TrainerCallback):
    """One tqdm bar over optimizer steps with loss and tokens/s; also keeps the totals for the record.
    Tokens are the real tokens of this process's batches (`counter`) times the number of processes."""

    def __init__(self, counter: CountingCollator | None = None, processes: int = 1) -> None:
        self.counter = counter
        self.processes = processes
        self.bar = None
        self.tokens = 0
        self.tokens_per_second = 0.0
        self._start = 0.0
        self._start_tokens = 0
        self._loss: float | None = None
        self._eval_step: int | None = None  # the step whose eval loss was printed last

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self._start = time.perf_counter()
        self._start_tokens = self._seen(state)
        if not state.is_world_process_zero:  # one bar for a data-parallel run, from rank 0
            return
        self.bar = tqdm(
            total=state.max_steps,
            initial=state.global_step,
            desc="      training",
            unit="step",
            dynamic_ncols=True,
        )

    def on_step_end(self, args, state, control, **kwargs):
        self.tokens = self._seen(state)
        elapsed = time.perf_counter() - self._start
        if elapsed > 0:
            self.tokens_per_second = (self.tokens - self._start_tokens) / elapsed
        if self.bar is not None:
            self.bar.n = state.global_step
            postfix = {"tok/s": f"{self.tokens_per_second:,.0f}"}
            if self._loss is not None:
                postfix["loss"] = f"{self._loss:.3f}"
            self.bar.set_postfix(postfix, refresh=True)

    def _seen(self, state) -> int:
        if self.counter is None:
            return state.num_input_tokens_seen
        return self.counter.tokens * self.processes

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._loss = logs["loss"]
        if logs and "eval_loss" in logs and self.bar is not None and state.global_step != self._eval_step:
            self._eval_step = state.global_step
            self.bar.write(f"      step {state.global_step}: eval loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
