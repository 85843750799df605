"""Peak memory of a pass: memory held in the block, an earlier peak forgotten, children, and a sampler that
backs off when a sample is slow."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from slimtune.engine import monitor
from slimtune.engine.monitor import PeakMemory

MB = 1 << 20
LINUX_HWM = monitor._reset_high_water_mark()


def test_memory_held_inside_the_block_is_in_the_peak():
    with PeakMemory(interval=0.05) as quiet:
        time.sleep(0.3)
    with PeakMemory(interval=0.05) as busy:
        block = b"\x01" * (200 * MB)  # written: every page resident (a bytearray's zero pages need not be)
        time.sleep(0.3)
        del block
    assert busy.peak_bytes - quiet.peak_bytes > 150 * MB


@pytest.mark.skipif(not LINUX_HWM, reason="needs Linux's resettable VmHWM")
def test_a_peak_before_the_block_is_forgotten():
    big = b"\x01" * (300 * MB)
    del big
    with PeakMemory(interval=10) as after:
        pass
    assert after.peak_bytes < monitor._rss(os.getpid()) + 100 * MB


def test_a_child_process_memory_is_counted():
    code = "import sys, time; b = b'x' * (200 * 2**20); sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(2)"
    with PeakMemory(interval=0.05) as alone:
        time.sleep(0.3)
    with PeakMemory(interval=0.05) as with_child:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        child.wait()
    assert with_child.peak_bytes - alone.peak_bytes > 150 * MB


def test_children_found_through_proc_match_psutil():
    import psutil

    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"]) for _ in range(2)]
    try:
        expected = {c.pid for c in psutil.Process().children(recursive=True)}
        assert {c.pid for c in children} <= expected
        assert set(monitor._descendants(os.getpid())) == expected
    finally:
        for c in children:
            c.kill()
            c.wait()


def test_a_slow_sample_backs_the_sampler_off(monkeypatch):
    calls = []

    def slow(pid):
        calls.append(pid)
        time.sleep(0.05)  # a 50 ms walk of /proc
        return []

    monkeypatch.setattr(monitor, "_descendants", slow)
    with PeakMemory(interval=0.01):
        time.sleep(1.2)
    # without the back-off: one sample every 60 ms, about 20; with it, one a second at most
    assert 2 <= len(calls) <= 4
