"""The example's int4 export search, one candidate after another on this machine against the same search on a
two-node Ray cluster started here (ray.cluster_utils.Cluster: a head and a second node, `--cpus-per-node` each).

    .venv/bin/python benchmarks/ray_search.py [--model tiny|PATH] [--block-sizes 16 32 64 128] [--no-write]

The search is the example's (examples/emotion/search.yaml): a LoRA pass trained once, then ModelBuilder int4 over
int4_block_size x int4_accuracy_level {1, 4} (8 candidates with the default four block sizes), each candidate's
model evaluated on the held-out rows. Both runs start from an empty cache. `tiny` (default) is a tiny Llama of
tests/tiny_models.py, so the run measures the search's own costs and Ray's per-candidate overhead more than the
work; a model folder measures the work. Prints a table and appends it to docs/benchmarks.md: wall time of each
run, passes that ran, the Ray run's per-candidate overhead (the task's wall time on the cluster less the pass's
own wall time, from run.json), and the nodes the candidates ran on.
"""

from __future__ import annotations

import os

# every node and driver on 127.0.0.1: Ray otherwise takes the address of the machine's outward interface, and
# the project's tests and benchmarks talk to loopback only (read by ray_constants at import, so before `import ray`)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import ROOT, append_section, machine, versions  # noqa: E402

DATA = ROOT / "examples" / "emotion" / "data.jsonl"


def config(model: Path, block_sizes: list[int], address: str | None) -> dict:
    cfg = {
        "input_model": {"model_path": str(model)},
        "data_configs": [
            {
                "name": "emotion",
                "load_dataset_config": {"data_name": "json", "data_files": str(DATA), "max_samples": 160},
                "pre_process_data_config": {
                    "text_template": "### Text: {phrase}\n### The tone is:\n{tone}",
                    "max_seq_len": 128,
                    "pad_to_max_len": False,
                    "loss_on_answer_only": True,
                },
            }
        ],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 16,
                "alpha": 32,
                "train_data_config": "emotion",
                "eval_dataset_size": 0.2,
                "training_args": {"max_steps": 10, "per_device_train_batch_size": 8, "save_steps": 10},
            },
            "builder": {
                "type": "ModelBuilder",
                "precision": "int4",
                "int4_block_size": {"search": block_sizes},
                "int4_accuracy_level": {"search": [1, 4]},
            },
        },
        "search_strategy": {"sampler": "exhaustive"},
        # size first: on the tiny model every accuracy is 0 and latency is noise, which would leave the choice
        # to chance; accuracy is still measured (the evaluation's work is the example's)
        "evaluators": {
            "quality": {
                "metrics": [
                    {
                        "name": "size",
                        "type": "size",
                        "data_config": "emotion",
                        "sub_types": [{"name": "size", "priority": 1}],
                    },
                    {
                        "name": "accuracy",
                        "type": "accuracy",
                        "data_config": "emotion",
                        "sub_types": [{"name": "accuracy_score", "priority": 2}],
                    },
                ]
            }
        },
        "evaluator": "quality",
        "cache_dir": "cache",
        "output_dir": "out",
    }
    if address is not None:
        cfg["systems"] = {"cluster": {"type": "Ray", "address": address, "placement_strategy": "SPREAD"}}
        cfg["host"] = "cluster"
    return cfg


def run(folder: Path, cfg: dict) -> tuple[float, dict]:
    from slimtune.cli.main import main

    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    started = time.perf_counter()
    code = main(["run", "--config", str(path)])
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the run in {folder} failed (exit code {code})")
    return wall, json.loads((folder / "out" / "run.json").read_text())


def task_round_trip(address: str, tasks: int = 20) -> float:
    """Seconds from submitting an empty Ray task to having its result, on a warm worker (median)."""
    import statistics

    import ray

    ray.init(address=address)
    try:
        noop = ray.remote(num_cpus=1)(lambda: None)
        ray.get(noop.remote())  # the workers start
        times = []
        for _ in range(tasks):
            started = time.perf_counter()
            ray.get(noop.remote())
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        ray.shutdown()


def summary(record: dict) -> dict:
    passes = [p for c in record["candidates"] for p in c["passes"] if not p["cache_hit"]]
    builders = [c["wall_s"] for c in record["candidates"]]
    return {
        "ran": ", ".join(
            f"{t} x{sum(p['type'] == t for p in passes)}" for t in dict.fromkeys(p["type"] for p in passes)
        ),
        "nodes": len({p["node"] for p in passes}),
        "candidate_s": sum(builders) / len(builders),
        "chosen": record["search"]["chosen"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="`tiny` or a model folder")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="ray-search-bench-"))
    model = Path(args.model)
    if args.model == "tiny":
        from tiny_models import make_tiny_model

        model = make_tiny_model("llama", work / "tiny")
    started = time.perf_counter()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": args.cpus_per_node, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=args.cpus_per_node)
        cluster.wait_for_nodes()
        cluster_up = time.perf_counter() - started
        overhead = task_round_trip(cluster.address)
        sequential, one = run(work / "sequential", config(model, args.block_sizes, None))
        on_ray, two = run(work / "ray", config(model, args.block_sizes, cluster.address))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    a, b = summary(one), summary(two)
    # Ray's cost per pass task: the candidate's pass wall time on the cluster less the pass's own wall time
    entries = [json.loads(p.read_text()) for p in (work / "ray" / "cache" / "entries").glob("*/entry.json")]
    own = {e["key"]: e["wall_s"] for e in entries}
    candidates = len(two["candidates"])
    rows = [
        "| run | wall (s) | passes that ran | mean candidate wall (s) | nodes | chosen |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
        f"| one after another, this process | {sequential:.1f} | {a['ran']} | {a['candidate_s']:.1f} | 1 | #{a['chosen']} |",
        f"| Ray, 2 nodes x {args.cpus_per_node} CPU | {on_ray:.1f} | {b['ran']} | {b['candidate_s']:.1f} | {b['nodes']} | #{b['chosen']} |",
    ]
    pass_total = sum(own.values())
    note = (
        f"{candidates} candidates ({'tiny Llama' if args.model == 'tiny' else model}); both from an empty cache. "
        f"Ray run / sequential: {on_ray / sequential:.2f}x the wall time. Pass work inside the Ray run (the passes' "
        f"own wall time, summed): {pass_total:.1f} s; the rest of the Ray run is evaluation in the driver, "
        f"connecting ({cluster_up:.1f} s to start the two local nodes, not counted above) and Ray's task overhead: "
        f"{overhead * 1000:.1f} ms per empty task on a warm worker (median of 20), plus the imports of a pass's "
        f"libraries in each new worker process (the first ModelBuilder task on a worker). "
        f"Same chosen candidate: {'yes' if a['chosen'] == b['chosen'] else 'NO'}."
    )
    body = "\n\n".join(
        [
            "`benchmarks/ray_search.py`: the example's int4 export search, sequential against a two-node local Ray "
            "cluster on the same machine.",
            f"- machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f}\n"
            f"- versions: {versions(['slimtune', 'ray', 'torch', 'transformers', 'onnxruntime-genai'])}",
            "\n".join(rows),
            note,
        ]
    )
    print(body)
    if not args.no_write:
        print(f"\nappended to {append_section('Search on a two-node Ray cluster against one process', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
