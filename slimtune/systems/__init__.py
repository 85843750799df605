"""Where a pass runs: this process (a `LocalSystem`, the default) or a system registered here by its `type`,
the name configs use (`Ray`, and any other package that registers one: Azure ML).

A system receives a `PassJob`: plain data (the pass's JSON context and parameters, its cache key and the cache
folder every node reads), runs `spec.load_run()` where it runs, commits the output into the cache through the
same atomic commit as a local run (slimtune.systems.job.run_job) and hands back the entry's information. The
engine calls a system in place of the local call (engine/chain._run_and_commit) and never names a system type:
it asks this registry which system runs a pass (the pass's `host`, else the run's `host`).

A system module is imported only when a config names its type, so the heavy client (ray, azure-ai-ml) loads
only for runs that use it.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

# modules that register the built-in systems (one line per system); imported on first lookup
SYSTEM_MODULES = ["slimtune.systems.ray", "slimtune.systems.azureml"]
LOCAL = "LocalSystem"


@dataclass
class PassJob:
    """One pass to run somewhere else, as plain data: what any process or node needs, nothing of the run's
    config. The output folder is made by whoever runs it (a retried attempt starts from an empty one)."""

    pass_name: str
    pass_type: str
    params: dict[str, Any]  # the pass's parameters as JSON
    context: dict[str, Any]  # PassContext.to_json()
    key: str  # the cache key of the output
    cache_root: str  # a folder every node reads and writes (a shared file system, or object storage)
    info: dict[str, Any] = field(default_factory=dict)  # what the cache entry records besides the run

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PassJob:
        return cls(**data)


class Runner(Protocol):
    """A connected system."""

    def run_pass(self, job: PassJob) -> dict[str, Any]:
        """Run the pass, commit its output under `job.key` in the cache; the cache entry's information (with
        `node`: where it ran). A failure of the pass is raised as it was raised there, with `node` set."""

    def capacity(self) -> int:
        """How many passes it can run at once (a search keeps that many candidates in flight)."""

    def close(self) -> None:
        """Disconnect (and stop what the system started for this run)."""


@dataclass(frozen=True)
class SystemSpec:
    type: str  # the name configs use (`type` of a system)
    # "module:function", imported only when used: connect(name, System, device, LoadedConfig) -> Runner
    connect: str
    summary: str
    # checks before the run, without connecting: (name, System) -> None, raising UserError
    check: Callable[[str, Any], None] | None = None

    def load_connect(self) -> Callable[..., Runner]:
        module, func = self.connect.split(":")
        return getattr(importlib.import_module(module), func)


_REGISTRY: dict[str, SystemSpec] = {}
_loaded = False


def register_system(spec: SystemSpec) -> SystemSpec:
    if spec.type in _REGISTRY and _REGISTRY[spec.type] is not spec:
        raise ValueError(f"system type {spec.type!r} registered twice")
    _REGISTRY[spec.type] = spec
    return spec


def get_system(type_name: str) -> SystemSpec | None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in SYSTEM_MODULES:
            importlib.import_module(module)
    return _REGISTRY.get(type_name)


def host_of(config: Any, pass_host: str | None) -> str | None:
    """The name of the system that runs a pass: its own `host`, else the run's."""
    return pass_host or config.host


def hosted_elsewhere(config: Any, pass_host: str | None) -> bool:
    """Whether a pass alone (its own `host`) runs on a system outside this process."""
    return bool(pass_host) and pass_host != config.host and needs_runner(config, pass_host)


def pass_device(config: Any, pass_host: str | None, run_device: str) -> str:
    """The device a pass runs on: the run's, unless the pass alone goes to another machine's system, whose
    accelerators then say (a pass trained on an Azure ML GPU from a CPU laptop is a CUDA pass)."""
    if not hosted_elsewhere(config, pass_host):
        return run_device
    accelerators = config.systems[pass_host].accelerators
    return "cuda" if any(a.device in ("gpu", "cuda") for a in accelerators) else "cpu"


def needs_runner(config: Any, name: str | None) -> bool:
    """Whether the system called `name` runs passes somewhere other than this process."""
    return (
        name is not None
        and config.systems[name].type != LOCAL
        and get_system(config.systems[name].type) is not None
    )


def this_node() -> str:
    """The name of the machine this process runs on (run.json's `node` of a pass that ran here)."""
    return socket.gethostname()
