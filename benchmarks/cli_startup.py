"""Start-up time of the CLI: `slimtune --help` and `slimtune validate` on the seed configs.

Run: .venv/bin/python benchmarks/cli_startup.py [--runs 10] [--no-write]
Prints a table (median / min / max of N fresh subprocesses each) and appends a section to docs/benchmarks.md
with the machine, the date and the versions. The target (issue 2) is `slimtune --help` under 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, append_section, machine, versions

SCRIPT = Path(sys.executable).with_name("slimtune")
SLIMTUNE = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "slimtune"]
COMMANDS = {
    "slimtune --help": ["--help"],
    "slimtune validate seed_local.json": ["validate", "tests/configs/seed_local.json"],
    "slimtune validate seed_azure.json": ["validate", "tests/configs/seed_azure.json"],
    "python -c 'import torch' (for scale)": None,
}
TARGET_S = 0.5


def time_runs(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md"
    )
    args = parser.parse_args()

    rows = []
    for label, verb_args in COMMANDS.items():
        argv = [sys.executable, "-c", "import torch"] if verb_args is None else [*SLIMTUNE, *verb_args]
        try:
            times = time_runs(argv, args.runs)
        except subprocess.CalledProcessError:
            rows.append((label, None, None, None))
            continue
        rows.append((label, statistics.median(times), min(times), max(times)))

    header = "| command | median (s) | min (s) | max (s) |\n| --- | ---: | ---: | ---: |"
    body = "\n".join(
        f"| `{label}` | {med:.3f} | {lo:.3f} | {hi:.3f} |"
        if med is not None
        else f"| `{label}` | failed | | |"
        for label, med, lo, hi in rows
    )
    table = f"{header}\n{body}"
    help_median = rows[0][1]
    verdict = (
        f"`slimtune --help` median {help_median:.3f} s: {'within' if help_median < TARGET_S else 'OVER'} "
        f"the {TARGET_S} s target."
        if help_median is not None
        else "`slimtune --help` failed."
    )
    print(table)
    print(verdict)

    if not args.no_write:
        body = (
            f"`benchmarks/cli_startup.py --runs {args.runs}`: wall time of fresh subprocesses (median of {args.runs}).\n\n"
            f"- machine: {machine()}\n- versions: {versions(['slimtune', 'pydantic', 'PyYAML', 'torch', 'transformers'])}"
            f"\n\n{table}\n\n{verdict}\n"
        )
        print(f"appended to {append_section('CLI start-up', body).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
