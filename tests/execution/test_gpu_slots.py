"""Several runs at once on one host's GPUs: never a GPU in two running runs.
The host's GPUs are a fake inventory (this machine has none)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from llenergymeasure.orchestrator.execution.gpu_slots import GpuSlots, assign, max_parallel


class FakeHostGpus:
    """A named fake: n GPUs with made-up UUIDs."""

    def __init__(self, n: int) -> None:
        self._uuids = [f"GPU-fake-{i}" for i in range(n)]

    def uuids(self) -> list[str]:
        return list(self._uuids)


def test_max_parallel():
    assert max_parallel(0, 1, 4) == 1  # no GPUs: sequential
    assert max_parallel(8, 2, 8) == 4
    assert max_parallel(8, 1, 3) == 3
    assert max_parallel(2, 4, 4) == 1


def test_waves_are_disjoint_and_keep_plan_order():
    host = FakeHostGpus(4).uuids()
    waves = assign([1, 2, 1, 1, 4, 1], host, parallel=3)
    # a wave ends when it is full (3 runs) or the next run's GPUs are not free in it
    assert [[i for i, _ in w] for w in waves] == [[0, 1, 2], [3], [4], [5]]
    assert waves[0] == [(0, ("GPU-fake-0",)), (1, ("GPU-fake-1", "GPU-fake-2")), (2, ("GPU-fake-3",))]
    for w in waves:
        used = [g for _, gs in w for g in gs]
        assert len(used) == len(set(used)) and len(w) <= 3


def test_no_gpus_means_one_at_a_time():
    assert [[i for i, _ in w] for w in assign([0, 0, 0], [], parallel=4)] == [[0], [1], [2]]


def test_a_run_larger_than_the_host_is_refused():
    with pytest.raises(ValueError, match="needs 3 GPU"):
        assign([3], FakeHostGpus(2).uuids(), parallel=2)


def test_concurrent_runs_never_share_a_gpu():
    """Many threads acquiring random GPU counts: at every moment the running sets are disjoint."""
    slots = GpuSlots(FakeHostGpus(4).uuids(), parallel=3)
    seen_peak = []
    errors = []
    rng = random.Random(0)
    needs = [rng.choice([1, 1, 2, 3]) for _ in range(40)]

    def worker(n: int) -> None:
        slot, gpus = slots.acquire(n, timeout=30)
        try:
            busy = slots.busy()
            used = [g for gs in busy.values() for g in gs]
            if len(used) != len(set(used)) or len(busy) > 3:
                errors.append(busy)
            seen_peak.append(len(busy))
            time.sleep(0.005)
        finally:
            slots.release(slot)

    threads = [threading.Thread(target=worker, args=(n,)) for n in needs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert max(seen_peak) > 1  # it did run things in parallel


def test_cpu_host_runs_sequentially():
    slots = GpuSlots([], parallel=4)
    slot, gpus = slots.acquire(0)
    assert gpus == ()
    with pytest.raises(TimeoutError):
        slots.acquire(0, timeout=0.1)
    slots.release(slot)
