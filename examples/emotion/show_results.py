"""Prints what `make demo` produced: each stage's time and size, the evaluation table, and a few predictions
of the final (int4 ONNX) model on held-out phrases the training never saw.

    .venv/bin/python examples/emotion/show_results.py runs/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main(run_dir: str) -> int:
    from slimtune.data.template import Template
    from slimtune.data.tokenize import encode_prompt
    from slimtune.evaluate.accuracy import classify
    from slimtune.models.ref import ModelMeta, ModelRef
    from slimtune.models.runtime import open_model
    from slimtune.units import fmt_bytes

    run = json.loads(Path(run_dir, "run.json").read_text())
    print(f"\n== {run_dir}: {run['status']}, {run['wall_s']:.0f} s in all ==")
    print(f"{'stage':10} {'type':20} {'time':>8} {'size':>10}")
    for p in run["passes"]:
        print(
            f"{p['name']:10} {p['type']:20} {p['original_wall_s']:7.1f}s {fmt_bytes(p['output_size_bytes']):>10}"
        )
    evaluation = run.get("evaluation")
    if evaluation:
        print(f"\naccuracy on {evaluation['data']['source']}:")
        for stage in evaluation["stages"]:
            m = stage["metrics"]
            acc = m.get("accuracy")
            print(f"  {stage['stage']:10} {stage['kind']:8} {'-' if acc is None else f'{acc:.1%}':>7}")
    for goal in run.get("goals") or []:
        # the run's quality gate: a missed goal is a result to read, not a crash (slimtune run exits 3)
        print(
            f"\ngoal {goal['metric']} ({goal['type']} {goal['value']} vs {goal['baseline_stage']}) on "
            f"{goal['stage']}: {goal['actual']:.4f} against {goal['baseline']:.4f}: "
            f"{'met' if goal['met'] else 'MISSED'} (margin {goal['margin']:+.4f})"
        )

    model = Path(run["final_model"]["path"])
    meta = ModelMeta.load(model)
    backend = open_model(ModelRef(str(model), run["final_model"]["kind"]))
    from slimtune.config.schema import PreProcessDataConfig

    template = Template(PreProcessDataConfig(text_template=meta.template), backend.tokenizer)
    rows = [json.loads(line) for line in (HERE / "heldout.jsonl").read_text().splitlines()]
    sample = rows[::15][:8]
    print(f"\nint4 model on held-out phrases ({model}):")
    outputs = []
    for row in sample:
        ids = encode_prompt(backend.tokenizer, template, row, meta.add_special_tokens)
        outputs.append(backend.tokenizer.decode(backend.generate_ids(ids, 6), skip_special_tokens=True))
    for row, predicted in zip(sample, classify(outputs, meta.labels), strict=True):
        mark = "ok " if predicted == row["tone"] else "   "
        print(f"  {mark} {predicted or '(no label)':9} (true: {row['tone']:8}) {row['phrase']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
