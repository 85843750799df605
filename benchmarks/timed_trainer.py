"""Runs one tool's CLI (Olive's or slimtune's) in this process with every transformers Trainer timed: seconds
per optimizer step, tokens per micro-batch, loss per step. Used by benchmarks/cpu_train.py in each tool's
own Python environment, so it imports nothing of slimtune.

    python benchmarks/timed_trainer.py OUT.json olive run --config olive.json
    python benchmarks/timed_trainer.py OUT.json slimtune run --config slimtune.json
"""

from __future__ import annotations

import json
import runpy
import sys
import time


def _instrument(record: dict) -> None:
    import transformers

    class Timing(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            record["step_s"].append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                record["loss"].append([state.global_step, logs["loss"]])

    init = transformers.Trainer.__init__
    training_step = transformers.Trainer.training_step

    def timed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(Timing())
        record["bf16"] = bool(self.args.bf16)
        record["dtype"] = str(next(self.model.parameters()).dtype)

    def counted_step(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")
        record["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        record["positions"] += int(
            inputs["input_ids"].numel()
        )  # what the step computes over, padding included
        record["micro_batches"] += 1
        return training_step(self, model, inputs, *args, **kwargs)

    transformers.Trainer.__init__ = timed_init
    transformers.Trainer.training_step = counted_step


def main() -> int:
    out, tool, *argv = sys.argv[1:]
    record = {"tool": tool, "step_s": [], "loss": [], "tokens": 0, "positions": 0, "micro_batches": 0}
    _instrument(record)
    start = time.perf_counter()
    sys.argv = [tool, *argv]
    code = 0
    try:
        runpy.run_module(tool, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Exception as err:  # noqa: BLE001 - the steps timed so far are kept, and the error with them
        record["error"] = f"{type(err).__name__}: {err}"
        code = 1
    finally:
        record["wall_s"] = time.perf_counter() - start
        record["exit_code"] = code
        with open(out, "w") as f:
            json.dump(record, f)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
