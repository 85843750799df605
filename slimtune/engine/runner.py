"""A run: checks, then the chain (or a search over chains), evaluation, then the published model and the run
record. The chain itself runs in slimtune.engine.chain."""

from __future__ import annotations

import errno
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from slimtune.config.load import LoadedConfig
from slimtune.engine.chain import Outcome, Session, cached_passes, open_session, run_chain
from slimtune.engine.evaluation import evaluate_chain, plan_evaluation, print_stage_table
from slimtune.engine.memory_check import check_memory
from slimtune.engine.remote_output import staging_dir, upload_output, url_of
from slimtune.engine.resources import named_error
from slimtune.errors import EXIT_GOALS, EXIT_OK
from slimtune.files import folder_size, write_json_atomic
from slimtune.models.ref import ModelRef
from slimtune.report.view import model_label
from slimtune.storage.fs import is_remote_url
from slimtune.units import fmt_bytes


def run_workflow(loaded: LoadedConfig, verbose: bool = False) -> int:
    session = prepare(loaded, verbose)
    from slimtune.tracking import start_tracking

    tracker = start_tracking(loaded)  # tracking.mlflow: the run opens before the first pass
    try:
        try:
            if any(plan.searched for plan in loaded.passes):
                from slimtune.engine.search import run_search

                outcome = run_search(session)
            else:
                chain = run_chain(session, loaded.passes)
                evaluation, goals = None, []
                if session.eval_plan is not None:
                    evaluation, goals = evaluate_chain(session, chain)
                outcome = Outcome(chain, evaluation, goals)
        finally:
            session.close()  # systems the passes ran on: disconnect (a cluster started for this run stops)
        code = finish(session, outcome)
    except BaseException:
        if tracker is not None:
            tracker.close("FAILED")
        raise
    if tracker is not None:
        tracker.finish(Path(loaded.config.output_dir), code)
    return code


def prepare(loaded: LoadedConfig, verbose: bool = False) -> Session:
    """Every check that can fail fast (the same function `slimtune validate` calls), then what the passes
    share: cache, input model, evaluation rows."""
    started = time.time()
    from slimtune.engine.input_checks import check_before_run

    ready = check_before_run(loaded)  # everything before any weights load: validate says the same
    session = open_session(loaded)
    session.started = started
    if verbose and loaded.notes:
        print("config keys mapped from the old schema:")
        for note in loaded.notes:
            print(f"  {note}")
    if ready.model is None:  # a known model or GGUF file, converted just now: its folder exists only now
        cached = cached_passes(session, loaded.passes)
        check_memory(loaded, session.input.model.path, session.device, cached=cached)
    session.eval_plan = plan_evaluation(loaded)
    return session


def finish(session: Session, outcome: Outcome) -> int:
    """Publish the final model, write the run record and reports, print the summary; the exit code."""
    loaded, cfg = session.loaded, session.loaded.config
    records, current = outcome.chain.records, outcome.chain.final
    goals_met = all(g["met"] for g in outcome.goals) if outcome.goals else None  # None: no goal was set
    remote = is_remote_url(cfg.output_dir)  # published into a staging folder, uploaded at the end
    output_dir = staging_dir(cfg.output_dir) if remote else Path(cfg.output_dir)

    def shown(path: Path) -> str:  # where the user finds it
        return url_of(path, output_dir, cfg.output_dir) if remote else str(path)

    final = publish_model(current, output_dir / "model")
    stages = [
        {
            "name": s.name,
            "kind": s.model.kind,
            "path": s.model.path,
            "base_path": s.model.base_path,
            "key": s.key,
        }
        for s in outcome.chain.stages
    ]
    for stage in stages:
        if stage["name"] in cfg.publish:
            published = publish_model(
                ModelRef(stage["path"], stage["kind"]), output_dir / "stages" / stage["name"]
            )
            stage["published"] = shown(published)
    from slimtune.engine.advice import diagnose_run, format_diagnosis

    diagnosis = diagnose_run(loaded, records, outcome.evaluation)  # a fine-tune that did not learn: why
    record = {
        "slimtune_version": session.libraries.get("slimtune"),
        "status": "goals_not_met" if goals_met is False else "ok",
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
            "name": model_name(loaded),
            "path": session.input.model.path,
            "kind": session.input.model.kind,
            "fingerprint": session.input.key,
        },
        "passes": records,
        "evaluation": outcome.evaluation,
        "goals": outcome.goals,
        "goals_met": goals_met,
        "diagnosis": diagnosis,
        "stages": stages,
        **outcome.extra,
        "final_model": {"path": shown(final), "kind": current.kind, "size_bytes": folder_size(final)},
        "cache": {
            "dir": cfg.cache_dir,
            "local": str(session.cache.root),
        },  # local: the mirror of a shared cache
    }
    from slimtune.redact import redact as redact_secrets

    record = redact_secrets(record, loaded.secrets)  # tokens and ${ENV} values: not in run.json or reports
    write_json_atomic(output_dir / "run.json", record)
    _write_reports(output_dir, record)
    if remote:
        upload_output(output_dir, cfg.output_dir)
    print_summary(records, shown(final), record["input_model"])
    if outcome.evaluation:
        print_stage_table(outcome.evaluation["stages"], outcome.goals, outcome.evaluation["data"]["source"])
    if diagnosis:
        print(format_diagnosis(diagnosis))
    if goals_met is False:
        missed = [g for g in outcome.goals if not g["met"]]
        for goal in missed:
            if goal.get("default"):
                print(_default_goal_missed(goal, stages, cfg.publish))
        print(f"\n{len(missed)} goal{'s' if len(missed) > 1 else ''} not met: exit code {EXIT_GOALS}")
        return EXIT_GOALS
    return EXIT_OK


def _default_goal_missed(goal: dict[str, Any], stages: list[dict[str, Any]], published: list[str]) -> str:
    """The default quality gate failed: the numbers, and the two ways out."""
    best = next(s for s in stages if s["name"] == goal["baseline_stage"])
    lost = (goal["baseline"] - goal["actual"]) * 100
    where = best.get("published") or best["path"]
    keep = (
        f"its folder is {where}"
        if best["name"] in published
        else f"its folder is {where} (in the cache); add `publish: [{best['name']}]` to the config to copy it "
        "into output_dir"
    )
    return (
        f"\nThe final model ({goal['stage']}) scores {goal['actual']:.1%}, {lost:.1f} points below "
        f"{best['name']} ({goal['baseline']:.1%}); no goal was set, so slimtune holds the final model to within "
        f"{goal['value'] * 100:g} points of the best earlier stage.\n"
        "To keep the accuracy in int4: train the adapter quantization-aware (on the LoRA pass `quantization_aware: "
        "int4`, then send the adapter to ModelBuilder without MergeAdapterWeights), or search the builder's int4 "
        f"options (examples/emotion/search.yaml). To use the {best['name']} model instead: {keep}. To accept the "
        "loss, set an explicit goal in `evaluators`."
    )


def _write_reports(output_dir: Path, record: dict[str, Any]) -> None:
    try:
        from slimtune.report.render import write_reports
    except ImportError:  # reports are optional output; the run record is what matters
        return
    write_reports(output_dir, record)


def publish_model(ref: ModelRef, dest: Path) -> Path:
    """Place a complete copy of the model folder at `dest`, atomically: it is built beside `dest` and renamed, so
    `dest` is never half-written. The files are the user's: copies (reflinks where the file system shares
    blocks), never hard links into the cache, so editing a published file leaves the cache entry intact."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(dest)
    tmp = dest.parent / f".{dest.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(ref.path, tmp, copy_function=_copy_file)
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


# copy_file_range cannot serve these (another file system, an old kernel, a special file): copy the plain way
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF}


def _copy_file(src: str, dst: str) -> None:
    """An independent copy of `src`: os.copy_file_range, which shares the blocks where the file system can
    (reflinks on btrfs and XFS) and copies in the kernel elsewhere; a plain copy where it is not available.
    A full disk is raised, not hidden by the fallback."""
    with open(src, "rb") as source, open(dst, "wb") as target:
        left = os.fstat(source.fileno()).st_size
        try:
            while left > 0:
                copied = os.copy_file_range(source.fileno(), target.fileno(), left)
                if copied == 0:
                    break
                left -= copied
        except (AttributeError, OSError) as err:
            if isinstance(err, OSError) and err.errno not in _NO_COPY_RANGE:
                raise
            shutil.copyfileobj(source, target)  # continues from where copy_file_range stopped
    shutil.copystat(src, dst)


def model_name(loaded: LoadedConfig) -> str:
    """The input model as the config names it (a folder, a known model's name, a remote resource), not the
    folder it resolved to (for a known or remote model, a cache folder named by a hash)."""
    written = (loaded.migrated.get("input_model") or {}).get("model_path")
    if isinstance(written, dict):  # a remote resource: {type, name, version, ...}
        fields = {k: v for k, v in written.items() if k in ("name", "version", "registry_name", "path")}
        return f"{written.get('type', 'resource')} " + " ".join(f"{k}={v}" for k, v in fields.items())
    return str(written) if written else str(loaded.config.input_model.model_path)


def print_summary(
    records: list[dict[str, Any]], final: Path | str, input_model: dict[str, Any] | None = None
) -> None:
    print()
    print(f"{'pass':24} {'type':20} {'cache':6} {'time':>8} {'peak mem':>10} {'size':>10}")
    for r in records:
        print(
            f"{r['name'][:24]:24} {r['type']:20} {'hit' if r['cache_hit'] else 'run':6} "
            f"{r['original_wall_s']:7.1f}s {fmt_bytes(r['peak_rss_bytes']):>10} "
            f"{fmt_bytes(r['output_size_bytes']):>10}"
        )
    print()
    if input_model:
        print(f"input model: {model_label(input_model.get('name'), input_model.get('path'))}")
    print(f"final model: {final}")
