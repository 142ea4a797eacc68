"""`pytest --cpu-load N` (`make test-under-load`): the load is real, and it is bounded."""

from __future__ import annotations

import time

import psutil

from tests.support.cpu_load import CpuLoad


def test_the_load_spins_and_is_gone_after_the_session():
    with CpuLoad(1, max_seconds=60) as load:
        (proc,) = load.procs
        busy = psutil.Process(proc.pid)
        deadline = time.monotonic() + 30
        while busy.cpu_times().user < 0.3:  # it burns CPU (observed, not assumed)
            assert time.monotonic() < deadline, "the load process never used the CPU"
            time.sleep(0.05)
    assert proc.poll() is not None  # and it is gone with the session


def test_a_spinner_stops_by_itself_at_its_bound():
    with CpuLoad(1, max_seconds=0.5) as load:
        assert load.procs[0].wait(timeout=30) == 0  # ended on its own, nobody killed it
