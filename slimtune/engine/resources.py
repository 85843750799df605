"""Running out of memory or disk, named: what ran out, where, and what to change.

A pass that runs out of memory raises torch.OutOfMemoryError (CPU or CUDA), MemoryError, or a RuntimeError
from an allocator; a full disk raises OSError(ENOSPC) - or, from libraries that write in native code, an
error whose message carries the OS text ("No space left on device", "os error 28"). Any of these, possibly
wrapped in another exception, becomes a ResourceError (exit code 2) with advice for the pass that failed.
Nothing here imports torch.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from slimtune.errors import ResourceError

_OOM_TEXT = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "failed to allocate memory",
    "std::bad_alloc",
)
_DISK_TEXT = ("no space left on device", "os error 28", "disk quota exceeded")
# native writers that report a failed write without the OS reason (torch.save): full only if the disk is
_WRITE_FAILED_TEXT = ("file write failed", "failed writing file")
NEARLY_FULL_BYTES = 64 * 2**20

GiB = 2**30


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_out_of_memory(err: BaseException) -> bool:
    for e in _chain(err):
        if isinstance(e, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(e).__mro__):
            return True
        if isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXT):
            return True
    return False


def full_disk_path(err: BaseException, watched: list[Path]) -> Path | None | bool:
    """The path whose disk filled up (from the error, else the fullest watched one); False if the error is
    not a full disk; None when it is one but no path is known."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return Path(e.filename) if e.filename else _fullest(watched)
        text = str(e).lower()
        if any(t in text for t in _DISK_TEXT):
            return _fullest(watched)
        if any(t in text for t in _WRITE_FAILED_TEXT):
            fullest = _fullest(watched)
            if fullest is not None and free_bytes(fullest) < NEARLY_FULL_BYTES:
                return fullest
    return False


def free_bytes(path: Path) -> int:
    for candidate in [path, *path.parents]:
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 0


def _fullest(paths: list[Path]) -> Path | None:
    return min(paths, key=free_bytes) if paths else None


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def named_error(
    err: BaseException,
    *,
    what: str,
    memory_advice: str,
    watched: list[Path],
    space_needed: int | None = None,
    disk_advice: str = "",
) -> ResourceError | None:
    """A ResourceError naming `err` when it is an out-of-memory or full-disk failure, else None."""
    if isinstance(err, ResourceError):
        return err
    if is_out_of_memory(err):
        return ResourceError(f"{what} ran out of memory ({_reason(err)}). {memory_advice}")
    path = full_disk_path(err, watched)
    if path is False:
        return None
    where = f" writing {path}" if path else ""
    free = f" ({gib(free_bytes(path))} free there now)" if path else ""
    need = f"; free at least {gib(space_needed)}" if space_needed else ""
    return ResourceError(
        f"{what}: the disk is full{where}{free}. Free space{need}, run `slimtune cache clean`, or point "
        f"cache_dir / output_dir at another disk (--cache-dir, --output-dir). {disk_advice}".rstrip()
    )


def _reason(err: BaseException) -> str:
    for e in _chain(err):
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if len(text) > 200:  # e.g. CUDA's: keep whole sentences ("... Tried to allocate 2.00 GiB.")
            text = text[: text.rfind(". ", 0, 200) + 1] or text[:200]
        if text:
            return f"{type(e).__name__}: {text}"
    return type(err).__name__


class PassGuard:
    """Around each step of a pass's attempt: on any failure the attempt folder goes (the cache never keeps a
    partial output), and running out of memory or disk becomes a ResourceError with advice."""

    def __init__(
        self,
        what: str,
        memory_advice: str,
        attempt: Path,
        watched: list[Path],
        space_needed: int | None = None,
    ):
        self.what = what
        self.advice = memory_advice
        self.attempt, self.watched, self.space_needed = attempt, watched, space_needed

    def __enter__(self) -> PassGuard:
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if err is None:
            return False
        shutil.rmtree(self.attempt, ignore_errors=True)
        if isinstance(err, Exception):
            named = named_error(
                err,
                what=self.what,
                memory_advice=self.advice,
                watched=self.watched,
                space_needed=self.space_needed,
            )
            if named is not None and named is not err:
                raise named from err
        return False
