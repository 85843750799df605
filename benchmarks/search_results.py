"""Print a finished search's candidates as a table and append them to docs/benchmarks.md.

    .venv/bin/python benchmarks/search_results.py runs/emotion-search --title "int4 export search (emotion)"

Reads RUN_DIR/run.json (written by `slimtune run` with a search_strategy, or by `slimtune optimize`): one row per
candidate with its parameters, status, accuracy, latency and size, which one was chosen and why, and how
often each pass actually ran (cache misses) across all candidates.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_section, machine, versions  # noqa: E402


def table(record: dict) -> str:
    rows = [
        "| # | parameters | status | accuracy | latency p50 (ms) | size (MB) | Pareto | chosen |",
        "| ---: | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for c in record["candidates"]:
        m = c.get("metrics") or {}
        accuracy = m.get("accuracy")
        p50 = ((m.get("latency") or {}).get("e2e_ms") or {}).get("p50")
        size = m.get("size_bytes")
        params = ", ".join(f"{k}={v}" for p in c["params"].values() for k, v in p.items())
        status = c["status"] + (f" ({c['reason'][:80]})" if c["status"] == "failed" else "")
        rows.append(
            f"| {c['id']} | {params} | {status} | {'-' if accuracy is None else f'{accuracy:.1%}'} | "
            f"{'-' if p50 is None else f'{p50:.0f}'} | {'-' if size is None else f'{size / 1e6:.0f}'} | "
            f"{'yes' if c['pareto'] else ''} | {'yes' if c['chosen'] else ''} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--title", required=True)
    parser.add_argument("--note", default="", help="how the run was made (command, data)")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args()
    record = json.loads((args.run_dir / "run.json").read_text())
    if not record.get("candidates"):
        print(f"{args.run_dir / 'run.json'} holds no candidates (not a search)", file=sys.stderr)
        return 2
    runs = Counter(p["type"] for c in record["candidates"] for p in c["passes"] if not p["cache_hit"])
    stages = ", ".join(
        f"{s['stage']} {s['metrics'].get('accuracy', 0):.1%}"
        for s in (record.get("evaluation") or {}).get("stages", [])
        if s["metrics"].get("accuracy") is not None
    )
    search = record["search"]
    body = "\n\n".join(
        part
        for part in [
            args.note,
            f"- machine: {machine()}\n- versions: {versions(['slimtune', 'torch', 'transformers', 'onnxruntime-genai', 'optuna'])}",
            table(record),
            f"Chosen: #{search['chosen']} ({search['why']}). Stopped: {search['stopped']}. "
            f"Passes that ran (cache misses) over all {len(record['candidates'])} candidates: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(runs.items()))
            + f". Whole run {record['wall_s']:.0f} s. Chosen candidate's stages: {stages or '-'}.",
        ]
        if part
    )
    print(body)
    if not args.no_docs:
        print(f"\nappended to {append_section(args.title, body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
