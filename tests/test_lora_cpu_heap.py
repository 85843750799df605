"""Training on the CPU keeps freed memory in the heap (passes/lora/cpu_heap.py): large blocks come from the heap
while training runs, from fresh mappings again after."""

from __future__ import annotations

import ctypes

import pytest

torch = pytest.importorskip("torch")

from slimtune.passes.lora.cpu_heap import glibc, heap_kept_while_training  # noqa: E402

libc = glibc()
pytestmark = pytest.mark.skipif(
    libc is None or not hasattr(libc, "mallinfo2"), reason="glibc 2.33+ only (mallinfo2)"
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost",
        )
    ]  # fmt: skip


def _mapped_bytes_for(nbytes: int) -> int:
    """How much of a fresh `nbytes` tensor glibc served as its own mapping (hblkhd: bytes in mmap'd blocks)."""
    libc.mallinfo2.restype = _MallInfo2
    before = libc.mallinfo2().hblkhd
    block = torch.empty(nbytes, dtype=torch.uint8)
    block.fill_(1)
    during = libc.mallinfo2().hblkhd
    del block
    return during - before


def test_large_blocks_come_from_the_heap_only_while_training_runs():
    size = 96 * 2**20
    assert _mapped_bytes_for(size) >= size  # glibc's default: a block this large is its own mapping
    callback = heap_kept_while_training()
    callback.on_train_begin(None, None, None)
    try:
        assert callback.kept
        assert _mapped_bytes_for(size) == 0  # from the heap: the next micro-batch's block reuses its pages
        assert _mapped_bytes_for(size) == 0
    finally:
        callback.on_train_end(None, None, None)
    assert not callback.kept
    assert _mapped_bytes_for(size) >= size  # defaults back after training
