"""The `Ray` system: passes run as Ray tasks on a cluster, search candidates side by side, data-parallel training
through Ray Train (docs/scale-out.md). Nothing here imports ray: run.py does, when a config uses the system."""

from __future__ import annotations

import re
from typing import Any

from slimtune.errors import UserError
from slimtune.systems import SystemSpec, register_system

_ADDRESS = re.compile(r"^(auto|ray://[^\s:/]+:\d+|[^\s:/]+:\d+)$")


def check(name: str, system: Any) -> None:
    """What can be told without connecting: ray installed, the address's form, the resources' shape."""
    import importlib.util

    where = f"systems.{name}"
    if importlib.util.find_spec("ray") is None:
        raise UserError(
            f"{where} is a Ray system, and the ray package is not installed here: "
            "pip install 'slimtune[ray]' (ray[default,train])"
        )
    if system.address is not None and not _ADDRESS.match(system.address):
        raise UserError(
            f"{where}.address: {system.address!r} is not a Ray address: `auto` (join the cluster this machine "
            "belongs to), `ray://HOST:PORT` (a remote cluster's client port, 10001 by default), `HOST:PORT` "
            "(its head node), or leave it out to start a cluster here"
        )
    for key, value in (system.resources_per_worker or {}).items():
        if value <= 0:
            raise UserError(
                f"{where}.resources_per_worker.{key}: {value:g}; give a positive amount or leave it out"
            )


def node_name() -> str:
    """This Ray node as run.json names it: its address and the start of its node id (nodes of one machine
    share the address)."""
    import ray

    context = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{context.get_node_id()[:12]}"


register_system(
    SystemSpec(
        type="Ray",
        connect="slimtune.systems.ray.run:connect",
        summary="passes as Ray tasks on a cluster; data-parallel training through Ray Train",
        check=check,
    )
)
