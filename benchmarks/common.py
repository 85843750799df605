"""What every benchmark records: the machine, the date, the versions, and a section in docs/benchmarks.md."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks.md"


def versions(names: list[str]) -> str:
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def append_section(title: str, body: str) -> Path:
    """Append `## title (date)` and `body` to docs/benchmarks.md."""
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmarks\n\nMeasured numbers, newest last. Each section says how it was measured.\n"
        )
    with RESULTS.open("a") as f:
        f.write(f"\n## {title} ({now()})\n\n{body.rstrip()}\n")
    return RESULTS
