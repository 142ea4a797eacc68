"""Running several runs at once on one host, on disjoint GPUs.

A pure scheduler: given the host's GPUs, how many each run needs and at most how
many runs may run at once (`execution.parallel_gpus`), it hands out GPU sets so
that no GPU is ever in two running runs. A host without GPUs runs one at a time.
Runners ask for a slot before a run and give it back after; tests drive it with a
fake inventory (this machine has no GPU).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class HostGpus(Protocol):
    def uuids(self) -> list[str]:
        """NVML UUIDs of this host's GPUs, in NVML order."""
        ...


class NvmlHostGpus:
    def uuids(self) -> list[str]:
        from llenergymeasure.backends.harness.gpu import nvml_inventory

        return [uuid for _, uuid, _ in nvml_inventory()]


def max_parallel(n_gpus: int, gpus_per_run: int, parallel: int) -> int:
    """How many runs may run at once: never more than the GPUs allow, 1 without GPUs."""
    if n_gpus == 0 or gpus_per_run == 0:
        return 1
    return max(1, min(parallel, n_gpus // gpus_per_run))


@dataclass
class GpuSlots:
    """Hands out disjoint GPU sets; thread-safe (one thread per concurrent run)."""

    gpus: Sequence[str]
    parallel: int = 1
    _free: list[str] = field(default_factory=list)
    _busy: dict[int, tuple[str, ...]] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _next: int = 0

    def __post_init__(self) -> None:
        self._free = list(self.gpus)

    def acquire(self, n: int, timeout: float | None = None) -> tuple[int, tuple[str, ...]]:
        """Block until `n` free GPUs (and a free parallel slot) exist; (slot id, UUIDs).
        n == 0 (a CPU run) still takes a parallel slot, so CPU runs stay sequential."""
        if n > len(self.gpus) and self.gpus:
            raise ValueError(f"a run needs {n} GPU(s) but the host has {len(self.gpus)}")
        limit = max_parallel(len(self.gpus), max(n, 1) if self.gpus else 0, self.parallel)
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._busy) < limit and len(self._free) >= n, timeout)
            if not ok:
                raise TimeoutError("no GPUs became free")
            taken = tuple(self._free[:n])  # lowest NVML order first: deterministic placement
            del self._free[:n]
            slot = self._next
            self._next += 1
            self._busy[slot] = taken
            return slot, taken

    def release(self, slot: int) -> None:
        with self._cond:
            taken = self._busy.pop(slot)
            self._free.extend(taken)
            self._free.sort(key=list(self.gpus).index)
            self._cond.notify_all()

    def busy(self) -> dict[int, tuple[str, ...]]:
        with self._cond:
            return dict(self._busy)


def assign(run_gpus: list[int], host: list[str], parallel: int) -> list[list[tuple[int, tuple[str, ...]]]]:
    """Plan waves offline: runs (in plan order) needing `run_gpus[i]` GPUs, grouped into
    waves that run at once on disjoint GPUs, at most `parallel` per wave, order kept.
    Each wave is [(run index, its GPU UUIDs)]. Raises ValueError if a run can never fit."""
    waves: list[list[tuple[int, tuple[str, ...]]]] = []
    wave: list[tuple[int, tuple[str, ...]]] = []
    free = list(host)
    cap = parallel if host else 1
    for i, need in enumerate(run_gpus):
        if need > len(host) and host:
            raise ValueError(f"run {i} needs {need} GPU(s) but the host has {len(host)}")
        if wave and (len(wave) >= cap or len(free) < need or (not host and wave)):
            waves.append(wave)
            wave, free = [], list(host)
        taken = tuple(free[:need])
        del free[:need]
        wave.append((i, taken))
    if wave:
        waves.append(wave)
    return waves
