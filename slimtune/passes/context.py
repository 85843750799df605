"""The contract between the engine and a pass's run function:

    def run(ctx: PassContext, params: <the pass's params model>) -> ModelRef

The pass reads `ctx.input`, writes its whole output into `ctx.output_dir` (an empty temporary folder that
the engine renames into the cache once `run` returns; never write elsewhere except `ctx.work_dir`), records
numbers in `ctx.metrics`, and returns a ModelRef whose path is `ctx.output_dir`.

The context is plain data: `to_json()` gives a JSON-serialisable dict and `from_json()` rebuilds it, so a pass
can run in another process or on another machine (the multi-GPU workers start from that form). It holds only
what a pass may read: no reference to the run's whole config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimtune.models.ref import ModelMeta, ModelRef


@dataclass
class PassContext:
    input: ModelRef  # the previous pass's output (or the input model)
    meta: ModelMeta  # task metadata so far; the pass may update it, the engine saves it into output_dir
    output_dir: Path  # empty; becomes the cache entry when run returns
    work_dir: Path  # kept across interrupted attempts of this same pass (checkpoints for resume)
    device: str = "cpu"  # "cpu" or "cuda" (from the host system's accelerators and what is present)
    execution_provider: str = "cpu"  # "cpu", "cuda", ... (from the target system's accelerators)
    data_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> DataConfig as JSON
    model_load: dict[str, Any] = field(default_factory=dict)  # input_model.load_kwargs as JSON
    options: dict[str, Any] = field(default_factory=dict)  # run-wide switches, e.g. skip_memory_check
    metrics: dict[str, Any] = field(default_factory=dict)  # recorded in run.json (e.g. loss curves)
    log: Callable[[str], None] = print

    def load_kwargs(self) -> dict[str, Any]:
        """from_pretrained arguments the config gives for the input model (input_model.load_kwargs):
        trust_remote_code only when set (and said so), attention implementation, revision; use_safetensors
        only when false (pickled weights allowed)."""
        kwargs: dict[str, Any] = {}
        if self.model_load.get("trust_remote_code"):
            self.log("      trust_remote_code is on (input_model.load_kwargs): the model's own code will run")
            kwargs["trust_remote_code"] = True
        for key in ("attn_implementation", "revision", "variant"):
            if self.model_load.get(key) is not None:
                kwargs[key] = self.model_load[key]
        if self.model_load.get("use_safetensors") is False:
            kwargs["use_safetensors"] = False
        return kwargs

    def data_config(self, name: str):
        """The DataConfig called `name` (one the pass's spec declares in data_fields)."""
        from slimtune.config.schema import DataConfig

        if name not in self.data_configs:
            raise KeyError(
                f"data config {name!r} was not given to this pass (known: {sorted(self.data_configs)})"
            )
        return DataConfig.model_validate(self.data_configs[name])

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input.to_json(),
            "meta": asdict(self.meta),
            "output_dir": str(self.output_dir),
            "work_dir": str(self.work_dir),
            "device": self.device,
            "execution_provider": self.execution_provider,
            "data_configs": self.data_configs,
            "model_load": self.model_load,
            "options": self.options,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], log: Callable[[str], None] = print) -> PassContext:
        return cls(
            input=ModelRef.from_json(data["input"]),
            meta=ModelMeta(**data["meta"]),
            output_dir=Path(data["output_dir"]),
            work_dir=Path(data["work_dir"]),
            device=data["device"],
            execution_provider=data["execution_provider"],
            data_configs=data.get("data_configs", {}),
            model_load=data.get("model_load", {}),
            options=data.get("options", {}),
            metrics=data.get("metrics", {}),
            log=log,
        )
