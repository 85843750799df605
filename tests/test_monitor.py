"""Peak memory of a pass: own peaks that last no time at all, children, and a sampler that backs off."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from slimtune.engine import monitor
from slimtune.engine.monitor import PeakMemory

MB = 1 << 20
LINUX_HWM = monitor._reset_high_water_mark()


@pytest.mark.skipif(not LINUX_HWM, reason="needs Linux's resettable VmHWM")
def test_a_short_lived_allocation_is_in_the_peak_and_an_earlier_one_is_not():
    big = bytearray(300 * MB)  # touched: every page resident
    del big
    with PeakMemory(interval=10) as quiet:  # no sample would see anything in between
        pass
    with PeakMemory(interval=10) as busy:
        block = bytearray(200 * MB)
        del block
    assert busy.peak_bytes - quiet.peak_bytes > 150 * MB
    # the 300 MB before either block is forgotten: the reset at the start of each
    assert quiet.peak_bytes < monitor._rss(__import__("os").getpid()) + 100 * MB


def test_a_child_process_memory_is_counted():
    code = "import sys, time; b = bytearray(200 * 2**20); sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(2)"
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
        assert set(monitor._descendants(__import__("os").getpid())) == expected
    finally:
        for c in children:
            c.kill()
            c.wait()


def test_a_slow_sample_backs_the_sampler_off(monkeypatch):
    calls = []
    stop = threading.Event()

    def slow(pid):
        calls.append(pid)
        time.sleep(0.05)  # a 50 ms walk of /proc
        return []

    monkeypatch.setattr(monitor, "_descendants", slow)
    with PeakMemory(interval=0.01):
        stop.wait(1.2)
    # without the back-off: one sample every 60 ms, about 20; with it, one a second at most
    assert 2 <= len(calls) <= 4
