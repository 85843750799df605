"""The contract between the engine and a pass's run function:

    def run(ctx: PassContext, params: <the pass's params model>) -> ModelRef

The pass reads `ctx.input`, writes its whole output into `ctx.output_dir` (an empty temporary folder that
the engine renames into the cache once `run` returns; never write elsewhere except `ctx.work_dir`), records
numbers in `ctx.metrics`, and returns a ModelRef whose path is `ctx.output_dir`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtune.models.ref import ModelMeta, ModelRef


@dataclass
class PassContext:
    input: ModelRef  # the previous pass's output (or the input model)
    meta: ModelMeta  # task metadata so far; the pass may update it, the engine saves it into output_dir
    output_dir: Path  # empty; becomes the cache entry when run returns
    work_dir: Path  # kept across interrupted attempts of this same pass (checkpoints for resume)
    run_config: Any  # slimtune.config.schema.RunConfig: data configs, systems
    device: str  # "cpu" or "cuda" (from the host system's accelerators and what is present)
    execution_provider: str  # "cpu", "cuda", ... (from the target system's accelerators)
    metrics: dict[str, Any] = field(default_factory=dict)  # recorded in run.json (e.g. loss curves)
    log: Callable[[str], None] = print

    def load_kwargs(self) -> dict[str, Any]:
        """from_pretrained arguments the config gives for the input model (input_model.load_kwargs):
        trust_remote_code only when set (and said so), attention implementation, revision."""
        if self.run_config is None:
            return {}
        given = self.run_config.input_model.load_kwargs
        kwargs: dict[str, Any] = {}
        if given.trust_remote_code:
            self.log("      trust_remote_code is on (input_model.load_kwargs): the model's own code will run")
            kwargs["trust_remote_code"] = True
        for key in ("attn_implementation", "revision", "variant"):
            if getattr(given, key) is not None:
                kwargs[key] = getattr(given, key)
        return kwargs

    def data_config(self, name: str):
        """The DataConfig called `name` (names were checked at validation)."""
        for data in self.run_config.data_configs:
            if data.name == name:
                return data
        raise KeyError(name)
