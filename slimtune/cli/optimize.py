"""`slimtune optimize --model PATH --data FILE`: a ready-made search over ONNX export options, no config.

One ModelBuilder pass with one alternative per precision (int4 with its block sizes, accuracy levels and
algorithms searched), an evaluator with the user's goals, and the exhaustive sampler. It then runs like any
config, so it shares the cache with `slimtune run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimtune.config.resolve import resolve_folder
from slimtune.errors import UserError

PRIORITIES = {
    "size": ("size", "accuracy", "latency"),
    "latency": ("latency", "accuracy", "size"),
    "accuracy": ("accuracy", "latency", "size"),
}


def register(sub) -> None:
    p = sub.add_parser(
        "optimize",
        help="export a model at several precisions and int4 settings, keep the best under your goals",
        description="Builds fp32, int8 and int4 ONNX variants (fp16 too with --device cuda) over int4 block "
        "sizes, accuracy levels and algorithms, evaluates each on the data, and keeps the best that meets the "
        "goals. Shared steps are cached: a second run re-uses every build and evaluation.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a run's output folder (starts from its merged model, in its cache), an HF folder, a PEFT adapter "
        "folder, a .gguf file or a known name",
    )
    p.add_argument("--data", required=True, help="data file (json/jsonl/csv/parquet) to evaluate on")
    p.add_argument("--template", help="text template; default: the one recorded in the model folder")
    p.add_argument("--max-rows", type=int, default=100, help="evaluate on the first N rows (default 100)")
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="goal: at most this many accuracy points below the input model (e.g. 1)",
    )
    p.add_argument("--max-latency-ms", type=float, help="goal: median end-to-end latency at most this")
    p.add_argument(
        "--prefer",
        choices=["size", "latency", "accuracy"],
        default="size",
        help="among candidates that meet the goals, the smallest (default), fastest or most accurate",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="execution provider to build for")
    p.add_argument("--precisions", nargs="+", help="default: fp32 int8 int4 (and fp16 on cuda)")
    p.add_argument("--block-sizes", nargs="+", type=int, default=[32, 128], help="int4 block sizes")
    p.add_argument("--accuracy-levels", nargs="+", type=int, default=[1, 4], help="int4 accuracy levels")
    p.add_argument(
        "--algorithms", nargs="+", default=["default", "k_quant_mixed"], help="the builder's int4 algorithms"
    )
    p.add_argument("--output-dir", default="slimtune-optimize", help="where model/ and run.json go")
    p.add_argument(
        "--cache-dir", help="cache folder (default: the run's cache for a run folder, else .slimtune-cache)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the candidates and which are cached; run nothing, write nothing",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from slimtune.config.load import load_config_dict
    from slimtune.engine.runner import run_workflow

    run = run_stage(args.model)
    if run is not None:
        stage, cache_dir = run
        print(f"starting from {args.model}'s {stage['name']} model: {stage['path']}")
        args.model = stage["path"]
        args.cache_dir = args.cache_dir or cache_dir
    args.cache_dir = args.cache_dir or ".slimtune-cache"
    raw = build_config(args)
    loaded = load_config_dict(raw, base_dir=Path.cwd())
    if args.dry_run:
        return dry_run(loaded)
    return run_workflow(loaded)


def build_config(args) -> dict[str, Any]:
    from slimtune.config.schema import PreProcessDataConfig
    from slimtune.data.load import builder_for
    from slimtune.data.template import Template, unescape_cli
    from slimtune.models.ref import ModelMeta

    if args.max_rows < 1:
        raise UserError(f"--max-rows must be at least 1, got {args.max_rows}")
    if not Path(args.data).is_file():
        raise UserError(f"--data {args.data}: no such file")
    model = _input_model(args.model)
    meta = (
        ModelMeta.load(model.get("adapter_path") or model["model_path"])
        if Path(model["model_path"]).is_dir()
        else None
    )
    if args.template:
        pre = {"text_template": unescape_cli(args.template)}
    elif meta is not None and meta.template:
        pre = {
            "text_template": meta.template,
            "chat_template": meta.chat_template,
            "add_special_tokens": getattr(meta, "add_special_tokens", True),
        }
    else:
        raise UserError(
            f"{args.model} records no prompt template (no slimtune.json); give it with --template, e.g. "
            "--template '### Text: {phrase}\\n### The tone is:\\n{tone}'"
        )
    answer = Template(PreProcessDataConfig(**pre)).answer_column
    if answer is None and args.max_accuracy_drop is not None:
        raise UserError(
            f"--max-accuracy-drop needs an answer to compare: the template {pre['text_template']!r} does not "
            "end with an answer field"
        )
    return {
        "input_model": model,
        "data_configs": [
            {
                "name": "data",
                "load_dataset_config": {
                    "data_name": builder_for(args.data),
                    "data_files": str(Path(args.data).resolve()),
                    "max_samples": args.max_rows,
                },
                "pre_process_data_config": pre,
            }
        ],
        "systems": {
            "target": {
                "type": "LocalSystem",
                "accelerators": [{"device": "gpu" if args.device == "cuda" else "cpu"}],
            }
        },
        "host": "target",
        "target": "target",
        "passes": {"builder": builder_alternatives(args)},
        "search_strategy": {"sampler": "exhaustive", "execution_order": "joint"},
        "evaluators": {"optimize": {"metrics": metrics(args, answer is not None)}},
        "evaluator": "optimize",
        "evaluate_input_model": True,
        "cache_dir": resolve_folder(args.cache_dir),  # a folder, or a shared cache's URL
        "output_dir": str(Path(args.output_dir).resolve()),
    }


def builder_alternatives(args) -> list[dict[str, Any]]:
    precisions = args.precisions or (
        ["fp32", "fp16", "int8", "int4"] if args.device == "cuda" else ["fp32", "int8", "int4"]
    )
    if "fp16" in precisions and args.device != "cuda":
        raise UserError("--precisions fp16: the builder makes fp16 models for CUDA only; add --device cuda")
    out = []
    for precision in precisions:
        entry: dict[str, Any] = {"type": "ModelBuilder", "precision": precision}
        if precision == "int4":
            entry.update(
                int4_block_size=_search(args.block_sizes),
                int4_accuracy_level=_search(args.accuracy_levels),
                int4_algo_config=_search(args.algorithms),
            )
        out.append(entry)
    return out


def _search(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else {"search": list(values)}


def metrics(args, has_answer: bool) -> list[dict[str, Any]]:
    order = [m for m in PRIORITIES[args.prefer] if m != "accuracy" or has_answer]
    subs = {
        "accuracy": {"name": "accuracy_score"},
        "latency": {"name": "p50"},
        "size": {"name": "size"},
    }
    if args.max_accuracy_drop is not None:
        subs["accuracy"]["goal"] = {"type": "max-degradation", "value": args.max_accuracy_drop / 100}
    if args.max_latency_ms is not None:
        subs["latency"]["goal"] = {"type": "threshold", "value": args.max_latency_ms}
    out = []
    for priority, name in enumerate(order, 1):
        sub = {**subs[name], "priority": priority}
        out.append({"name": name, "type": name, "data_config": "data", "sub_types": [sub]})
    return out


def run_stage(path: str) -> tuple[dict[str, Any], str] | None:
    """For a run's output folder (it holds run.json): the stage to start from (the last Hugging Face model
    after the input: the merged one; else the last adapter) and the run's cache folder. None for any other
    path."""
    import json

    record_file = Path(path) / "run.json"
    if not record_file.is_file():
        return None
    try:
        stages = json.loads(record_file.read_text()).get("stages") or []
    except ValueError as err:
        raise UserError(f"{record_file}: unreadable run record ({err})") from None
    present = [s for s in stages[1:] if Path(s.get("path", "")).is_dir()]
    merged = [s for s in present if s.get("kind") == "hf"]
    adapters = [s for s in present if s.get("kind") == "adapter"]
    if not merged and not adapters:
        raise UserError(
            f"{path} is a run folder, but its record names no merged model or adapter after the input that is "
            "still in the cache; give a Hugging Face folder with --model"
        )
    stage = (merged or adapters)[
        -1
    ]  # a merged model; else the adapter (a quantization-aware one goes unmerged)
    output = Path(stage["path"])
    return stage, str(output.parents[2]) if output.parent.parent.name == "entries" else ".slimtune-cache"


def _input_model(path: str) -> dict[str, Any]:
    from slimtune.models.kind import model_kind

    folder = Path(path)
    kind = model_kind(folder) if folder.is_dir() else None
    if kind == "adapter":
        from slimtune.models.loading import adapter_base

        return {
            "type": "HfModel",
            "model_path": str(adapter_base(folder)),
            "adapter_path": str(folder.resolve()),
        }
    if kind == "onnx":
        run = folder.parent if (folder.parent / "run.json").is_file() else None
        hint = f": give the run folder (--model {run}) to start from its merged model" if run else ""
        raise UserError(
            f"--model {path} is already an ONNX model; optimize starts from a Hugging Face model{hint}"
        )
    return {"type": "HfModel", "model_path": str(folder.resolve()) if folder.exists() else path}


def dry_run(loaded) -> int:
    """Every candidate with its cache keys, computed from the config alone: `cached` when each of its
    passes already has a complete cache entry."""
    from slimtune.engine.chain import open_session
    from slimtune.engine.search import candidate_keys, enumerate_candidates

    session = open_session(loaded, read_only=True)
    cache = session.cache
    candidates = enumerate_candidates(loaded)
    print(f"{len(candidates)} candidates (cache {cache.root}):")
    for index, candidate in enumerate(candidates, 1):
        cached = all(cache.lookup(key) is not None for key in candidate_keys(session, candidate))
        settings = []
        for plan in loaded.passes:
            if plan.searched:  # the parameters as written for this point
                written = plan.space.params_at(candidate[plan.name])
                settings += [f"{plan.name}.{k}={v}" for k, v in written.items()]
        print(f"  #{index:<3} {'cached' if cached else 'to run':7} {' '.join(settings)}")
    return 0
