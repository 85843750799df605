"""Connecting to a Ray cluster and running passes there as tasks.

The driver (the `slimtune run` process) holds the cache key's lock and ships the pass as plain data (a PassJob);
the task runs it on whichever node has the resources and commits into the shared cache (systems/job.py). A task
whose worker or node is lost is retried (`max_failures`); a retry starts from an empty attempt folder, and the
pass's work folder keeps the checkpoints the lost attempt wrote. A failure inside the pass is not retried: it is
raised in the driver as the pass raised it, with the node it ran on.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from slimtune.errors import PassFailed, UserError
from slimtune.passes.registry import get_pass
from slimtune.systems import PassJob
from slimtune.systems.ray import node_name

DEFAULT_MAX_FAILURES = 2


def run_on_node(job: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: run the pass here and commit it into the shared cache."""
    from slimtune.systems.job import run_job

    node = node_name()
    try:
        return run_job(PassJob.from_json(job), node)
    except BaseException as err:
        err.node = node  # travels with the exception (pickled with its __dict__)
        raise


def connect(name: str, system: Any, device: str, loaded: Any = None) -> RayRunner:
    import ray

    where = f"systems.{name}"
    if ray.is_initialized():
        ray.shutdown()
    address = system.address
    shown = address or "a new local cluster"
    print(f"ray: connecting to {shown} ({where})", flush=True)
    _check_reachable(where, address)
    handlers = _signal_handlers()  # ray.init installs its own; close() puts these back
    try:
        ray.init(
            # "local": a new cluster even where one runs on this machine (Ray's own default, None, would join
            # the latest one started here, or RAY_ADDRESS's)
            address=address or "local",
            runtime_env=system.runtime_env,
            logging_level=logging.WARNING,
            configure_logging=True,
            **({} if address else {"include_dashboard": False}),
        )
    except ConnectionError as err:
        raise UserError(
            f"{where}.address: cannot reach the Ray cluster at {address}: {_first_line(err)}. Check that the "
            "head node runs (`ray status` there), the address and port, and that this machine can reach it"
        ) from None
    except (ValueError, TypeError) as err:
        if "runtime_env" in str(err) or "runtime env" in str(err).lower():
            raise UserError(f"{where}.runtime_env: {_first_line(err)}") from None
        raise UserError(f"{where}: Ray refused the settings: {_first_line(err)}") from None
    try:
        return RayRunner(name, system, device, handlers)
    except BaseException:  # refused (no node holds a worker): nothing of Ray stays behind
        RayRunner.close_with(handlers)
        raise


def _signal_handlers() -> dict[int, Any]:
    """The handlers of the signals Ray's driver takes over, as they are now (only the main thread may set them
    back): SIGTERM (ray.init), SIGINT (Ray Train's fit registers one that asks its controller to abort, and
    leaves it: after a data-parallel pass, a Ctrl-C in this process would no longer be a KeyboardInterrupt),
    SIGUSR1 (Ray Tune's)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
    return {sig: signal.getsignal(sig) for sig in wanted}


class RayRunner:
    def __init__(self, name: str, system: Any, device: str, handlers: dict[int, Any] | None = None) -> None:
        import ray

        self.name, self.system, self.device = name, system, device
        self.handlers = handlers or {}
        self.use_gpu = device == "cuda"
        wanted = dict(system.resources_per_worker or {})
        self.need = {
            "CPU": float(wanted.pop("CPU", 1)),
            "GPU": float(wanted.pop("GPU", 1 if self.use_gpu else 0)),
        }
        self.need.update({k: float(v) for k, v in wanted.items()})
        self.max_failures = DEFAULT_MAX_FAILURES if system.max_failures is None else system.max_failures
        self.workers = system.num_workers or 1
        self._check_feasible()
        self._task = ray.remote(run_on_node)

    def _nodes(self) -> list[dict[str, float]]:
        import ray

        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def _fits(self, node: dict[str, float]) -> int:
        """How many workers this node's resources hold."""
        counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in self.need.items() if v > 0]
        return min(counts) if counts else 1

    def _check_feasible(self) -> None:
        """A task no node can take would wait forever: say so now, with what the cluster has."""
        nodes = self._nodes()
        held = sum(self._fits(n) for n in nodes)
        workers = self.workers
        if held >= 1 and (workers == 1 or held >= workers):
            return
        wanted = ", ".join(f"{k} {v:g}" for k, v in self.need.items() if v > 0)
        has = "; ".join(
            f"node {i + 1}: "
            + ", ".join(f"{k} {_amount(k, v)}" for k, v in sorted(n.items()) if not k.startswith("node:"))
            for i, n in enumerate(nodes)
        )
        what = "one worker" if held < 1 else f"{workers} workers (num_workers)"
        raise UserError(
            f"systems.{self.name}.resources_per_worker: {what} of {wanted} each, and no node of the cluster "
            f"can hold that (the cluster has {len(nodes)} node{'s' if len(nodes) != 1 else ''}: {has}). Ask for "
            "less per worker, fewer workers, or add nodes that have it"
        )

    def capacity(self) -> int:
        return max(1, sum(self._fits(n) for n in self._nodes()))

    def options(self) -> dict[str, Any]:
        custom = {k: v for k, v in self.need.items() if k not in ("CPU", "GPU", "memory")}
        options: dict[str, Any] = {
            "num_cpus": self.need["CPU"],
            "num_gpus": self.need["GPU"],
            "max_retries": self.max_failures,
            "retry_exceptions": False,
        }
        if self.system.placement_strategy in ("SPREAD", "STRICT_SPREAD"):
            options["scheduling_strategy"] = "SPREAD"  # pass tasks too, not only Ray Train's workers
        if "memory" in self.need:
            options["memory"] = self.need["memory"]
        if custom:
            options["resources"] = custom
        return options

    def run_pass(self, job: PassJob) -> dict[str, Any]:
        spec = get_pass(job.pass_type)
        if spec.data_parallel and self.workers > 1:
            from slimtune.systems.ray.train import train_data_parallel

            return train_data_parallel(self, job, spec)
        return self.wait(self._task.options(**self.options()).remote(job.to_json()), job.pass_name)

    def wait(self, ref: Any, pass_name: str) -> dict[str, Any]:
        """The task's result; its failure as the pass raised it, or as a clear error of the system."""
        import ray
        from ray import exceptions as rx

        try:
            return ray.get(ref)
        except rx.RuntimeEnvSetupError as err:
            raise UserError(
                f"systems.{self.name}.runtime_env: the runtime environment failed to build on a worker: "
                f"{_first_line(err, skip_header=True)}"
            ) from None
        except rx.RayTaskError as err:
            cause = err.cause if isinstance(err.cause, Exception) else None
            if cause is None:
                raise PassFailed(
                    f"passes.{pass_name} failed on the Ray cluster: {_first_line(err)}"
                ) from None
            raise cause from None
        except (rx.WorkerCrashedError, rx.NodeDiedError, rx.ActorDiedError, rx.ObjectLostError) as err:
            raise PassFailed(
                f"passes.{pass_name}: the Ray worker running it was lost {self.max_failures + 1} times "
                f"(systems.{self.name}.max_failures {self.max_failures}): {_first_line(err)}"
            ) from None

    def close(self) -> None:
        self.close_with(self.handlers)
        self.handlers = {}

    @staticmethod
    def close_with(handlers: dict[int, Any]) -> None:
        """Shut Ray down and give the signals back the handlers they had before ray.init (its driver's would
        outlive it: a later Ctrl-C in the same process would not raise KeyboardInterrupt)."""
        import signal
        import threading

        import ray

        if ray.is_initialized():
            ray.shutdown()
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)


def _check_reachable(where: str, address: str | None) -> None:
    """A HOST:PORT that refuses connections is said at once (Ray's own client waits 30 s, then says less)."""
    if address is None or address == "auto":
        return
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise UserError(
            f"{where}.address: cannot reach the Ray cluster at {address} ({err.strerror or err}). Check that the "
            "head node runs (`ray status` there), the address and port, and that this machine can reach it"
        ) from None


def _amount(key: str, value: float) -> str:
    if key in ("memory", "object_store_memory"):
        from slimtune.units import fmt_bytes

        return fmt_bytes(int(value))
    return f"{value:g}"


def _first_line(err: BaseException, skip_header: bool = False) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if skip_header and len(lines) > 1:
        lines = lines[1:]
    return (lines[-1] if skip_header and lines else lines[0] if lines else type(err).__name__)[:500]
