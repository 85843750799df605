"""How slimtune writes a number of bytes for people: binary units everywhere (KiB = 2**10, MiB = 2**20,
GiB = 2**30), in the console, `slimtune evaluate`, the reports and messages, so one size reads the same
wherever it is shown. run.json keeps raw byte counts."""

from __future__ import annotations

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40
_UNITS = (("TiB", TiB, 2), ("GiB", GiB, 2), ("MiB", MiB, 1), ("KiB", KiB, 1))


def fmt_bytes(n: float) -> str:
    """`n` bytes as `1.71 GiB`, `85.9 MiB`, `3.0 KiB` or `512 B`."""
    for unit, scale, digits in _UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{int(n)} B"
