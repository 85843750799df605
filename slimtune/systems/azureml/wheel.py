"""slimtune's own installed files as a wheel: the job installs it, so it runs the version that built the job.

Written from the package folder (an editable install and an installed wheel alike), with fixed timestamps: the
same files give the same bytes, so the wheel's hash (part of the job's name) changes only when the code does.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import slimtune

_EPOCH = (1980, 1, 1, 0, 0, 0)


def wheel_name() -> str:
    return f"slimtune-{slimtune.__version__}-py3-none-any.whl"


def write_wheel(folder: Path) -> Path:
    """slimtune-VERSION-py3-none-any.whl in `folder`."""
    package = Path(slimtune.__file__).parent
    files = sorted(
        p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    info = f"slimtune-{slimtune.__version__}.dist-info"
    entries = [(f"slimtune/{p.relative_to(package).as_posix()}", p.read_bytes()) for p in files]
    entries += [
        (
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: slimtune\nVersion: {slimtune.__version__}\n".encode(),
        ),
        (
            f"{info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: slimtune\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (f"{info}/entry_points.txt", b"[console_scripts]\nslimtune = slimtune.cli.main:main\n"),
    ]
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in entries]
    entries.append((f"{info}/RECORD", ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()))
    path = folder / wheel_name()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in entries:
            item = zipfile.ZipInfo(name, _EPOCH)
            item.external_attr = 0o644 << 16
            wheel.writestr(item, data, zipfile.ZIP_DEFLATED)
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
