"""Plan -> run passes (each through the cache) -> publish the final model and the run record."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtune.config.validate import LoadedConfig, PassPlan
from slimtune.engine import preflight
from slimtune.engine.cache import Cache, folder_size
from slimtune.engine.context import PassContext
from slimtune.engine.evaluation import (
    EvalPlan,
    check_goals,
    evaluate_stage,
    plan_evaluation,
    print_stage_table,
)
from slimtune.engine.fingerprint import cache_key, fingerprint_path, library_versions
from slimtune.engine.memory_check import check_memory
from slimtune.engine.monitor import PeakMemory, Stopwatch
from slimtune.engine.resources import PassGuard, named_error
from slimtune.errors import EXIT_GOALS, EXIT_OK
from slimtune.models.ref import ModelMeta, ModelRef


@dataclass
class Session:
    """What every chain of passes in one run shares."""

    loaded: LoadedConfig
    cache: Cache
    libraries: dict[str, str]
    device: str
    ep: str
    input_ref: ModelRef
    input_fingerprint: str
    input_meta: ModelMeta
    eval_plan: EvalPlan | None
    started: float


@dataclass
class Chain:
    """The passes of one candidate, run: a record per pass and the model after each stage."""

    records: list[dict[str, Any]]
    stages: list[tuple[str, ModelRef, str, ModelMeta]]  # (name, model, cache key, metadata), input first

    @property
    def final(self) -> ModelRef:
        return self.stages[-1][1]


@dataclass
class Outcome:
    chain: Chain
    evaluation: dict[str, Any] | None
    goals: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the search's candidates


def run_workflow(loaded: LoadedConfig, verbose: bool = False) -> int:
    session = prepare(loaded, verbose)
    if any(plan.searched for plan in loaded.passes):
        from slimtune.engine.search import run_search

        outcome = run_search(session)
    else:
        chain = run_chain(session, loaded.passes)
        evaluation, goals = None, []
        if session.eval_plan is not None:
            evaluation, goals = evaluate_chain(session, chain)
        outcome = Outcome(chain, evaluation, goals)
    return finish(session, outcome)


def prepare(loaded: LoadedConfig, verbose: bool = False) -> Session:
    """Every check that can fail fast, then what the passes share: cache, input model, evaluation rows."""
    started = time.time()
    from slimtune.engine.input_checks import check_before_run

    check_before_run(loaded)  # systems, remote inputs, cross-section problems, data: before any model
    device, ep = preflight.device_for(loaded)
    input_ref = _input_model(loaded)
    preflight.check_pass_chain(loaded, input_ref.kind)
    if verbose and loaded.notes:
        print("config keys mapped from the old schema:")
        for note in loaded.notes:
            print(f"  {note}")
    cache = Cache(loaded.config.cache_dir)
    meta = ModelMeta.load(input_ref.path) or ModelMeta(base_model=_base_name(loaded))
    session = Session(
        loaded,
        cache,
        library_versions(),
        device,
        ep,
        input_ref,
        fingerprint_path(input_ref.path, cache.root),
        meta,
        None,
        started,
    )
    check_memory(loaded, input_ref.path, device, cached=_cached_passes(session))
    session.eval_plan = plan_evaluation(loaded)
    return session


def _cached_passes(session: Session) -> set[str]:
    """Names of the passes whose output the cache already holds (they need no memory this run)."""
    from slimtune.passes.registry import get_pass

    found, fingerprint, kind = set(), session.input_fingerprint, session.input_ref.kind
    for plan in session.loaded.passes:
        key = pass_key(plan, fingerprint, kind, session.loaded, session.libraries, session.device, session.ep)
        if session.cache.lookup(key) is not None:
            found.add(plan.name)
        fingerprint, kind = key, get_pass(plan.type).output_kind
    return found


def run_chain(session: Session, plans: list[PassPlan], prefix: str = "", chain: Chain | None = None) -> Chain:
    """Run passes in order, each through the cache. `chain`, when given, is filled as passes finish, so
    that a caller still has the passes that ran before one failed."""
    current, fingerprint, meta = session.input_ref, session.input_fingerprint, session.input_meta
    chain = chain if chain is not None else Chain([], [])
    records, stages = chain.records, chain.stages
    stages.append(("input", current, fingerprint, meta))
    for index, plan in enumerate(plans, 1):
        print(f"{prefix}[{index}/{len(plans)}] {plan.name} ({plan.type})", flush=True)
        current, fingerprint, meta, record = _run_pass(
            plan,
            current,
            fingerprint,
            meta,
            session.loaded,
            session.cache,
            session.libraries,
            session.device,
            session.ep,
        )
        records.append(record)
        stages.append((plan.name, current, fingerprint, meta))
        status = "cache hit" if record["cache_hit"] else f"done in {record['wall_s']:.1f} s"
        print(f"{prefix}      {status}: {current.path}", flush=True)
    return chain


def evaluate_chain(session: Session, chain: Chain, only: set[str] | None = None):
    """(evaluation record, goal verdicts) for a chain's stages: all of them, or those named in `only` (the
    final stage is always evaluated: goals are checked on it)."""
    plan = session.eval_plan
    assert plan is not None
    needs_input = any(
        r.goal is not None and (r.goal.baseline or "input") == "input" and r.goal.type != "threshold"
        for r in plan.refs
    )
    evaluate_input = session.loaded.config.evaluate_input_model or needs_input
    stages = []
    last = len(chain.stages) - 1
    for index, (name, ref, key, meta) in enumerate(chain.stages):
        if index == 0 and not evaluate_input:
            continue
        if only is not None and index != last and name not in only:
            continue
        print(f"evaluating {name} ({ref.kind}) on {len(plan.rows)} rows...", flush=True)
        metrics = evaluate_stage(plan, ref, key, session.cache.root, meta)
        stages.append(
            {
                "stage": name,
                "label": "input model" if index == 0 else name,
                "kind": ref.kind,
                "path": ref.path,
                "metrics": metrics,
            }
        )
    goals = check_goals(plan, stages) if stages else []
    evaluation = {
        "data": {"source": plan.source, "rows": len(plan.rows), "data_config": plan.data_name},
        "metrics": plan.metrics,
        "stages": stages,
    }
    return evaluation, goals


def finish(session: Session, outcome: Outcome) -> int:
    """Publish the final model, write the run record and reports, print the summary; the exit code."""
    loaded, cfg = session.loaded, session.loaded.config
    records, current = outcome.chain.records, outcome.chain.final
    goals_met = all(g["met"] for g in outcome.goals)
    output_dir = Path(cfg.output_dir)
    final = publish_model(current, output_dir / "model")
    record = {
        "slimtune_version": session.libraries.get("slimtune"),
        "status": "ok" if goals_met else "goals_not_met",
        "started": session.started,
        "finished": time.time(),
        "wall_s": time.time() - session.started,
        "config_file": str(loaded.file) if loaded.file else None,
        "config_as_given": loaded.raw,
        "config_migrated": loaded.migrated,
        "key_mappings": loaded.notes,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "device": session.device,
            "execution_provider": session.ep,
        },
        "library_versions": session.libraries,
        "input_model": {
            "path": session.input_ref.path,
            "kind": session.input_ref.kind,
            "fingerprint": session.input_fingerprint,
        },
        "passes": records,
        "evaluation": outcome.evaluation,
        "goals": outcome.goals,
        "goals_met": goals_met,
        **outcome.extra,
        "final_model": {"path": str(final), "kind": current.kind, "size_bytes": folder_size(final)},
    }
    from slimtune.redact import redact as redact_secrets

    record = redact_secrets(record, loaded.secrets)  # tokens and ${ENV} values: not in run.json or reports
    write_json_atomic(output_dir / "run.json", record)
    _write_reports(output_dir, record)
    print_summary(records, final)
    if outcome.evaluation:
        print_stage_table(outcome.evaluation["stages"], outcome.goals, outcome.evaluation["data"]["source"])
    if not goals_met:
        missed = [g for g in outcome.goals if not g["met"]]
        print(f"\n{len(missed)} goal{'s' if len(missed) > 1 else ''} not met: exit code {EXIT_GOALS}")
        return EXIT_GOALS
    return EXIT_OK


def _write_reports(output_dir: Path, record: dict[str, Any]) -> None:
    try:
        from slimtune.report.render import write_reports
    except ImportError:  # reports are optional output; the run record is what matters
        return
    write_reports(output_dir, record)


def _base_name(loaded: LoadedConfig) -> str:
    path = loaded.config.input_model.model_path
    return path if isinstance(path, str) else str(path)


def _input_model(loaded: LoadedConfig) -> ModelRef:
    from slimtune.models.loading import resolve_model

    model = loaded.config.input_model
    allow_pickle = model.load_kwargs.use_safetensors is False  # pickled .bin weights only when asked for
    path = resolve_model(
        model.model_path, kind="onnx" if model.type == "ONNXModel" else "hf", allow_pickle=allow_pickle
    )
    if model.type == "ONNXModel":
        return ModelRef(str(path), "onnx")
    if model.adapter_path:
        return ModelRef(str(resolve_model_adapter(model.adapter_path)), "adapter", base_path=str(path))
    return ModelRef(str(path), "hf")


def resolve_model_adapter(path: str) -> Path:
    from slimtune.errors import ModelError

    folder = Path(path)
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(
            f"input_model.adapter_path: {folder} holds no adapter_config.json (not a PEFT adapter)"
        )
    return folder


def _data_fingerprints(plan: PassPlan, loaded: LoadedConfig) -> dict[str, str]:
    from slimtune.data.fingerprint import data_fingerprint

    found = {}
    for key in ("train_data_config", "eval_data_config", "data_config"):
        name = getattr(plan.params, key, None)
        if name:
            data = next(d for d in loaded.config.data_configs if d.name == name)
            found[key] = data_fingerprint(data)
    return found


def pass_key(
    plan: PassPlan,
    fingerprint: str,
    input_kind: str,
    loaded: LoadedConfig,
    libraries: dict,
    device: str,
    ep: str,
) -> str:
    """The cache key of a pass's output: everything that shapes it, and nothing else."""
    from slimtune.passes.registry import get_pass

    spec = get_pass(plan.type)
    return cache_key(
        input_fingerprint=fingerprint,
        pass_type=spec.type,
        pass_version=spec.version,
        params=plan.params.model_dump(mode="json"),
        data_fingerprints=_data_fingerprints(plan, loaded),
        libraries=libraries,
        extra=_key_extra(loaded, device, ep, input_kind),
    )


def _key_extra(loaded: LoadedConfig, device: str, ep: str, input_kind: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"device": device, "execution_provider": ep, "input_kind": input_kind}
    # how the passes load the input model (dtype, attention, remote code) shapes their output; the default
    # is left out so that keys made before this was keyed stay valid
    loading = loaded.config.input_model.load_kwargs.model_dump(mode="json", exclude_defaults=True)
    if loading:
        extra["load_kwargs"] = loading
    return extra


def _run_pass(
    plan: PassPlan,
    current: ModelRef,
    fingerprint: str,
    meta: ModelMeta,
    loaded: LoadedConfig,
    cache: Cache,
    libraries: dict,
    device: str,
    ep: str,
):
    from slimtune.passes.registry import get_pass

    spec = get_pass(plan.type)
    params = plan.params.model_dump(mode="json")
    key = pass_key(plan, fingerprint, current.kind, loaded, libraries, device, ep)
    record: dict[str, Any] = {"name": plan.name, "type": plan.type, "key": key, "params": params}
    entry = cache.lookup(key)
    if entry is None:
        with cache.lock(key):
            entry = cache.lookup(key)  # another run may have finished it while we waited
            if entry is None:
                attempt = cache.new_attempt(key)
                ctx = PassContext(
                    input=current,
                    meta=ModelMeta(**vars(meta)),
                    output_dir=attempt / "output",
                    work_dir=cache.work_dir(key),
                    run_config=loaded.config,
                    device=device,
                    execution_provider=ep,
                )
                ctx.meta.history = [*meta.history, plan.type]
                watched = [cache.root, Path(loaded.config.output_dir)]
                guard = PassGuard(
                    plan.name, plan.type, params, loaded, attempt, watched, folder_size(Path(current.path))
                )
                with guard, Stopwatch() as clock, PeakMemory() as memory:
                    produced = spec.load_run()(ctx, plan.params)
                with guard:
                    ctx.meta.save(ctx.output_dir)
                info = {
                    "pass_name": plan.name,
                    "pass_type": plan.type,
                    "pass_version": spec.version,
                    "params": params,
                    "input": current.to_json(),
                    "input_fingerprint": fingerprint,
                    "kind": produced.kind,
                    "base_path": produced.base_path,
                    "wall_s": clock.seconds,
                    "peak_rss_bytes": memory.peak_bytes,
                    "metrics": ctx.metrics,
                    "library_versions": libraries,
                }
                with guard:
                    entry = cache.commit(key, attempt, info)
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
        }
    )
    new_meta = ModelMeta.load(entry.output) or meta
    return produced, key, new_meta, record


def publish_model(ref: ModelRef, dest: Path) -> Path:
    """Place a complete copy of the model folder at `dest` (hard links where possible), atomically:
    it is built beside `dest` and renamed, so `dest` is never half-written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(dest)
    tmp = dest.parent / f".{dest.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(ref.path, tmp, copy_function=_link_or_copy)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        named = named_error(
            err,
            what=f"publishing the model to {dest}",
            memory_advice="Free memory.",
            watched=[dest.parent],
            space_needed=folder_size(Path(ref.path)),
        )
        if named is not None and isinstance(err, Exception):
            raise named from err
        raise
    old = dest.parent / f".{dest.name}.old{os.getpid()}"
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def _remove_leftovers(dest: Path) -> None:
    """Temporary folders of earlier publishes to `dest` whose process is gone (killed mid-publish)."""
    for path in dest.parent.glob(f".{dest.name}.*"):
        pid = path.name.rsplit("tmp", 1)[-1] if ".tmp" in path.name else path.name.rsplit("old", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def print_summary(records: list[dict[str, Any]], final: Path) -> None:
    print()
    print(f"{'pass':24} {'type':20} {'cache':6} {'time':>8} {'peak mem':>9} {'size':>9}")
    for r in records:
        print(
            f"{r['name'][:24]:24} {r['type']:20} {'hit' if r['cache_hit'] else 'run':6} "
            f"{r['original_wall_s']:7.1f}s {r['peak_rss_bytes'] / 2**30:7.2f}GB {r['output_size_bytes'] / 1e6:7.1f}MB"
        )
    print(f"\nfinal model: {final}")
