"""One chain of passes, run through the cache: the session a run's chains share, the cache key of every pass
of a chain, and the run of one chain. The plain run and the search are both built on this module.

The engine knows passes only through their PassSpec (slimtune.passes.registry): what they read, what they
need, what they produce. It hands each pass a plain-data PassContext, never the run's config.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtune.config.load import LoadedConfig, PassPlan
from slimtune.engine.cache import Cache
from slimtune.engine.execute import execute
from slimtune.engine.fingerprint import cache_key, hash_sidecar, library_versions
from slimtune.engine.shared_cache import open_cache
from slimtune.errors import PassFailed
from slimtune.files import fingerprint
from slimtune.models.hub import origin
from slimtune.models.ref import ModelMeta, ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.registry import PassSpec, get_pass
from slimtune.redact import mask_secret_keys, redact
from slimtune.storage.fs import is_remote_url
from slimtune.systems import PassJob, get_system, host_of, needs_runner, pass_device, this_node


@dataclass
class Stage:
    """A model the chain produced (or its input): the pass that made it, its cache key, its metadata."""

    name: str
    model: ModelRef
    key: str
    meta: ModelMeta


@dataclass
class Session:
    """What every chain of passes in one run shares."""

    loaded: LoadedConfig
    cache: Cache
    libraries: dict[str, Any]
    device: str
    ep: str
    input: Stage
    eval_plan: Any = None  # engine.evaluation.EvalPlan, when the run evaluates
    started: float = field(default_factory=time.time)
    read_only: bool = False  # keys only (a dry run): write nothing into the cache
    runners: dict[str, Any] = field(default_factory=dict)  # connected systems by name
    _connecting: threading.Lock = field(default_factory=threading.Lock)

    def hash_sidecar(self) -> Path | None:
        return None if self.read_only else hash_sidecar(self.cache.root)

    def runner(self, name: str | None):
        """The connected system called `name` (connected on first use), or None for this process."""
        cfg = self.loaded.config
        if not needs_runner(cfg, name):
            return None
        with self._connecting:  # a search's candidates ask from several threads
            if name not in self.runners:
                system = cfg.systems[name]
                connect = get_system(system.type).load_connect()
                self.runners[name] = connect(name, system, self.device, self.loaded)
            return self.runners[name]

    def width(self) -> int:
        """How many candidates a search keeps in flight: what the systems its passes run on take at once."""
        cfg = self.loaded.config
        hosts = {host_of(cfg, plan.host) for plan in self.loaded.passes}
        runners = [self.runner(name) for name in hosts]
        return max([r.capacity() for r in runners if r is not None], default=1)

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        self.runners.clear()


@dataclass
class Chain:
    """The passes of one candidate, run: a record per pass and the model after each stage."""

    records: list[dict[str, Any]] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)  # input first

    @property
    def final(self) -> ModelRef:
        return self.stages[-1].model


@dataclass
class Outcome:
    chain: Chain
    evaluation: dict[str, Any] | None
    goals: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the search's candidates


def open_session(loaded: LoadedConfig, read_only: bool = False) -> Session:
    """Device, input model, cache and library versions: what keys and runs need (no checks, no evaluation).
    `read_only`: write nothing (no hash sidecar in the cache), e.g. for a dry run."""
    from slimtune.engine import preflight

    device, ep = preflight.device_for(loaded)
    ref = input_model(loaded)
    cache = open_cache(loaded.config.cache_dir)
    meta = ModelMeta.load(ref.path) or ModelMeta(base_model=_base_name(loaded))
    stage = Stage("input", ref, _input_key(ref, cache, read_only), meta)
    return Session(loaded, cache, library_versions(), device, ep, stage, read_only=read_only)


def _input_key(ref: ModelRef, cache: Cache, read_only: bool) -> str:
    """The identity of the input model: an intact entry of this cache is its entry key (so a chain continued
    from a stage of an earlier run gets the keys that run gave the same passes), any other model its content."""
    path = Path(ref.path).resolve()
    entries = (cache.root / "entries").resolve()
    if path.name == "output" and path.parent.parent == entries:
        key = path.parent.name
        if cache.lookup(key) is not None:
            return key
    content = fingerprint(ref.path, None if read_only else hash_sidecar(cache.root))
    source = origin(ref.path)  # a hub snapshot: the repository and commit too (a moved branch is a new input)
    if source is None:
        return content
    return hashlib.sha256(json.dumps({"content": content, **source}, sort_keys=True).encode()).hexdigest()


def input_model(loaded: LoadedConfig) -> ModelRef:
    from slimtune.models.loading import input_model_folder

    model = loaded.config.input_model
    path = input_model_folder(model, loaded.config.azureml_client)
    if model.type == "ONNXModel":
        return ModelRef(str(path), "onnx")
    if model.adapter_path:
        return ModelRef(str(_adapter_folder(model.adapter_path)), "adapter", base_path=str(path))
    return ModelRef(str(path), "hf")


def _adapter_folder(path: str) -> Path:
    from slimtune.errors import ModelError
    from slimtune.models.kind import is_adapter_folder

    folder = Path(path)
    if not is_adapter_folder(folder):
        raise ModelError(
            f"input_model.adapter_path: {folder} holds no adapter_config.json (not a PEFT adapter)"
        )
    return folder


def _base_name(loaded: LoadedConfig) -> str:
    path = loaded.config.input_model.model_path
    return path if isinstance(path, str) else str(path)


# ---------------------------------------------------------------- keys


def chain_keys(session: Session, plans: list[PassPlan]) -> list[str]:
    """The cache key of each pass of a chain, computed without running anything: a pass's key depends on
    its input's key, its parameters, its data and the library versions."""
    keys, fingerprint, kind = [], session.input.key, session.input.model.kind
    for plan in plans:
        fingerprint = pass_key(session, plan, fingerprint, kind)
        kind = get_pass(plan.type).output_kind
        keys.append(fingerprint)
    return keys


def cached_passes(session: Session, plans: list[PassPlan]) -> set[str]:
    """Names of the passes whose output the cache already holds (they need no memory this run)."""
    keys = chain_keys(session, plans)
    return {plan.name for plan, key in zip(plans, keys, strict=True) if session.cache.has(key)}


def pass_key(session: Session, plan: PassPlan, fingerprint: str, input_kind: str) -> str:
    """The cache key of a pass's output: everything that shapes it, and nothing else."""
    from slimtune.data.fingerprint import data_fingerprint

    spec = get_pass(plan.type)
    data = _data_configs(session, spec, plan)
    model = session.loaded.config.input_model
    return cache_key(
        input_fingerprint=fingerprint,
        pass_type=spec.type,
        pass_version=spec.version,
        params=mask_secret_keys(plan.params.model_dump(mode="json")),
        data_fingerprints={
            key: data_fingerprint(config, session.hash_sidecar()) for key, config in data.items()
        },
        libraries={**session.libraries, **library_versions(spec.libraries)},
        extra={
            "device": pass_device(session.loaded.config, plan.host, session.device),
            "execution_provider": session.ep,
            "input_kind": input_kind,
            # how the passes load the input model (dtype, attention, remote code) shapes their output
            "load_kwargs": model.load_kwargs.model_dump(mode="json"),
        },
    )


def _data_configs(session: Session, spec: PassSpec, plan: PassPlan) -> dict[str, Any]:
    """{params field: DataConfig} of the data configs the pass names (names were checked at validation)."""
    by_name = {d.name: d for d in session.loaded.config.data_configs}
    return {key: by_name[name] for key, name in spec.data_names(plan.params).items()}


# ---------------------------------------------------------------- running


def run_chain(session: Session, plans: list[PassPlan], prefix: str = "", chain: Chain | None = None) -> Chain:
    """Run passes in order, each through the cache. `chain`, when given, is filled as passes finish, so
    that a caller still has the passes that ran before one failed."""
    chain = chain if chain is not None else Chain()
    chain.stages.append(session.input)
    for index, plan in enumerate(plans, 1):
        print(f"{prefix}[{index}/{len(plans)}] {plan.name} ({plan.type})", flush=True)
        stage, record = run_pass(session, plan, chain.stages[-1])
        chain.records.append(record)
        chain.stages.append(stage)
        status = "cache hit" if record["cache_hit"] else f"done in {record['wall_s']:.1f} s"
        print(f"{prefix}      {status}: {stage.model.path}", flush=True)
    return chain


def run_pass(session: Session, plan: PassPlan, previous: Stage) -> tuple[Stage, dict[str, Any]]:
    """The output of one pass on `previous`: from the cache, or run (one process at a time per key)."""
    spec = get_pass(plan.type)
    params = redact(plan.params.model_dump(mode="json"), session.loaded.secrets)
    key = pass_key(session, plan, previous.key, previous.model.kind)
    record: dict[str, Any] = {"name": plan.name, "type": plan.type, "key": key, "params": params}
    cache = session.cache
    entry = cache.lookup(key)
    if entry is None:
        with cache.lock(key):
            entry = cache.lookup(key)  # another run may have finished it while we waited
            if entry is None:
                entry = _run_and_commit(session, spec, plan, previous, key)
                record["cache_hit"] = False
    record.setdefault("cache_hit", True)
    info = entry.info
    produced = ModelRef(str(entry.output), info["kind"], info.get("base_path"))
    record.update(
        {
            "wall_s": info["wall_s"] if not record["cache_hit"] else 0.0,
            "original_wall_s": info["wall_s"],
            "peak_rss_bytes": info["peak_rss_bytes"],
            "output_size_bytes": info["size_bytes"],
            "metrics": info["metrics"],
            "library_versions": info["library_versions"],
            "output_path": str(entry.output),
            "node": info.get("node"),  # where the output was made (by an earlier run, for a cache hit)
        }
    )
    return Stage(plan.name, produced, key, ModelMeta.load(entry.output) or previous.meta), record


def pass_context(session: Session, spec: PassSpec, plan: PassPlan, previous: Stage, attempt: Path, key: str):
    """The plain-data context a pass runs with: what it may read, and nothing of the run's config besides."""
    cfg = session.loaded.config
    meta = ModelMeta(**vars(previous.meta))
    meta.history = [*previous.meta.history, plan.type]
    return PassContext(
        input=previous.model,
        meta=meta,
        output_dir=attempt / "output",
        work_dir=session.cache.work_dir(key),
        device=pass_device(cfg, plan.host, session.device),
        execution_provider=session.ep,
        data_configs={c.name: c.model_dump(mode="json") for c in _data_configs(session, spec, plan).values()},
        model_load=cfg.input_model.load_kwargs.model_dump(mode="json"),
        options={
            "skip_memory_check": bool(cfg.skip_memory_check),
            "compiled_dir": str(session.cache.compiled_dir()),
        },
    )


def _run_and_commit(session: Session, spec: PassSpec, plan: PassPlan, previous: Stage, key: str):
    """Run the pass where its system runs it (this process unless a `host` names another system) and commit
    its output under `key`; the caller holds the key's lock."""
    from slimtune.engine.memory_check import memory_query

    cache = session.cache
    info = {
        "pass_name": plan.name,
        "pass_type": plan.type,
        "pass_version": spec.version,
        "params": redact(
            plan.params.model_dump(mode="json"), session.loaded.secrets
        ),  # no tokens in the cache
        "input": previous.model.to_json(),
        "input_fingerprint": previous.key,
        "library_versions": session.libraries,
    }
    runner = session.runner(host_of(session.loaded.config, plan.host))
    if runner is not None:  # plain data to another system; it commits into the shared cache
        ctx = pass_context(session, spec, plan, previous, cache.root / "tmp" / key, key)
        params = plan.params.model_dump(mode="json")  # the pass needs its tokens; the entry's record has none
        job = PassJob(plan.name, plan.type, params, ctx.to_json(), key, str(cache.root), info)
        runner.run_pass(job)
        entry = cache.lookup(key)
        if entry is None:
            raise PassFailed(f"passes.{plan.name}: the system reported success but left no cache entry {key}")
        return entry
    attempt = cache.new_attempt(key)
    ctx = pass_context(session, spec, plan, previous, attempt, key)
    advice = "Free memory or use a larger machine."
    if spec.memory_advice is not None:
        advice = spec.memory_advice(
            memory_query(plan, session.loaded, Path(previous.model.path), session.device)
        )
    output_dir = session.loaded.config.output_dir
    watched = [] if is_remote_url(output_dir) else [Path(output_dir)]
    return execute(spec, plan.params, ctx, cache, key, attempt, info, this_node(), advice, watched=watched)
