"""Background sampling of the run's process and GPUs into `timeseries.parquet`.

One row per (sample, device). The process row carries CPU utilisation and RSS;
GPU rows carry power, temperature, memory and utilisation where NVML offers them, and
the cumulative energy counter (`energy_mj`) where the GPU has one, so energy over any
part of a phase (the steady-state window) comes from the same instrument as the whole
window's. Every row is tagged with the protocol phase it fell in.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

from llenergymeasure.backends.harness.energy import integrate_trapezoid, longest_gap_s
from llenergymeasure.backends.harness.gpu import CounterUnsupported, GpuDevice


def _joined(reasons: list[str] | None) -> str | None:
    return None if reasons is None else ",".join(reasons)  # None: unreadable, not "none active"


def _maybe(fn, pids: list[int] | None, own: set[int]) -> int | None:
    return None if pids is None else fn(pids, own)


def _interpolate(points: list[tuple[float, float]], t: float) -> float | None:
    """The value at t on the straight line between the samples around it (None outside
    the samples' span: the counter is never extrapolated)."""
    pts = sorted(points)
    for (ta, va), (tb, vb) in itertools.pairwise(pts):
        if ta <= t <= tb:
            return va if tb == ta else va + (vb - va) * (t - ta) / (tb - ta)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == t else None


class Sampler:
    def __init__(self, gpus: list[GpuDevice], interval_s: float = 0.1,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        import psutil

        self._proc = psutil.Process()
        self._in_container = Path("/.dockerenv").exists()
        self._proc.cpu_percent(None)  # first call primes the counter
        self.gpus = gpus
        self.interval_s = interval_s
        self.phase = "start"
        self.rows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llem-sampler", daemon=True)
        self._clock = clock
        self._no_counter: set[str] = set()  # GPUs whose total-energy counter is unsupported
        self.t0 = clock()  # rows' t_s are seconds since this perf_counter reading

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def mark(self, phase: str) -> None:
        """Enter a phase and sample at once, so even a short phase has its edge samples."""
        self.phase = phase
        self._sample()

    def _loop(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            self._sample()
            next_t += self.interval_s
            self._stop.wait(max(0.0, next_t - time.perf_counter()))

    def _own_pids(self) -> set[int]:
        try:
            return {self._proc.pid, *(c.pid for c in self._proc.children(recursive=True))}
        except Exception:  # noqa: BLE001 - a child exiting mid-walk
            return {self._proc.pid}

    def _foreign(self, gpu_pids: list[int], own: set[int]) -> int:
        """Processes on the GPU that are not this run's. Inside a container NVML
        reports host pids, which can't be matched: count the surplus instead."""
        if not self._in_container or own & set(gpu_pids):
            return len(set(gpu_pids) - own)
        return max(0, len(set(gpu_pids)) - len(own))

    def _counter_mj(self, g: GpuDevice) -> int | None:
        if g.uuid in self._no_counter:
            return None
        try:
            return g.total_energy_mj()
        except CounterUnsupported:
            self._no_counter.add(g.uuid)
            return None

    def _sample(self) -> None:
        t = self._clock() - self.t0
        mem = self._proc.memory_info().rss / 2**20
        self.rows.append(
            dict(t_s=t, phase=self.phase, device="process", power_w=None, temperature_c=None,
                 memory_used_mb=mem, utilization_pct=self._proc.cpu_percent(None),
                 sm_clock_mhz=None, mem_clock_mhz=None, throttle_reasons=None, foreign_processes=None,
                 energy_mj=None)
        )
        own = self._own_pids() if self.gpus else set()
        for g in self.gpus:
            self.rows.append(
                dict(t_s=t, phase=self.phase, device=g.uuid, power_w=g.power_w(),
                     temperature_c=g.temperature_c(), memory_used_mb=g.memory_used_mb(),
                     utilization_pct=g.utilization_pct(), sm_clock_mhz=g.sm_clock_mhz(),
                     mem_clock_mhz=g.mem_clock_mhz(), throttle_reasons=_joined(g.throttle_reasons()),
                     foreign_processes=_maybe(self._foreign, g.process_pids(), own),
                     energy_mj=self._counter_mj(g))
            )

    def phase_rows(self, phase: str) -> list[dict]:
        return [r for r in self.rows if r["phase"] == phase]

    def power_series(self, phase: str) -> list[tuple[float, float]]:
        """(perf_counter time, total GPU power W) per sample of a phase."""
        per_t: dict[float, float] = {}
        for r in self.phase_rows(phase):
            if r["device"] != "process" and r["power_w"] is not None:
                per_t[r["t_s"]] = per_t.get(r["t_s"], 0.0) + r["power_w"]
        return [(self.t0 + t, p) for t, p in sorted(per_t.items())]

    def plateau_series(self, phase: str) -> list[tuple[float, float | None, float | None]]:
        """(perf_counter time, hottest GPU °C, total GPU power W) per sample of a phase:
        what thermal stabilisation watches (None where no GPU gave the reading)."""
        temps: dict[float, list[float]] = {}
        powers: dict[float, list[float]] = {}
        for r in self.phase_rows(phase):
            if r["device"] == "process":
                continue
            temps.setdefault(r["t_s"], [])
            powers.setdefault(r["t_s"], [])
            if r["temperature_c"] is not None:
                temps[r["t_s"]].append(r["temperature_c"])
            if r["power_w"] is not None:
                powers[r["t_s"]].append(r["power_w"])
        return [(self.t0 + t, max(temps[t]) if temps[t] else None, sum(powers[t]) if powers[t] else None)
                for t in sorted(temps)]

    def energy_j(self, phase: str, t0: float, t1: float) -> tuple[float | None, str | None]:
        """GPU energy over [t0, t1] (perf_counter times inside a phase) and how it was
        found: "energy_counter", each GPU's cumulative counter from the rows, interpolated
        linearly at t0 and t1, where every GPU has one; else "power_trapezoid", the
        sampled power integrated (gpu.py: an instantaneous reading where NVML offers one);
        (None, None) where neither covers the span. The counter is preferred: it is what
        the whole window's energy is read from, and sampled power (a 1 s average on
        Ampere and newer when the instant field is missing) smears energy across edges."""
        by_gpu: dict[str, list[tuple[float, float | None]]] = {}
        for r in self.phase_rows(phase):
            if r["device"] != "process":
                by_gpu.setdefault(r["device"], []).append((self.t0 + r["t_s"], r.get("energy_mj")))
        if not by_gpu:
            return None, None
        if all(all(v is not None for _, v in rows) for rows in by_gpu.values()):
            total = 0.0
            for rows in by_gpu.values():
                a, b = _interpolate(rows, t0), _interpolate(rows, t1)
                if a is None or b is None:
                    return None, None
                total += (b - a) / 1000.0
            return total, "energy_counter"
        joules = integrate_trapezoid(self.power_series(phase), t0, t1)
        return (joules, "power_trapezoid") if joules is not None else (None, None)

    def peak_gpu_memory_mb(self, phase: str) -> float | None:
        """Peak over the phase's samples of memory used on the run's GPUs, summed per sample."""
        per_t: dict[float, float] = {}
        for r in self.rows:
            if r["phase"] == phase and r["device"] != "process" and r["memory_used_mb"] is not None:
                per_t[r["t_s"]] = per_t.get(r["t_s"], 0.0) + r["memory_used_mb"]
        return max(per_t.values()) if per_t else None

    def coverage(self, phase: str, duration_s: float) -> float | None:
        """Samples received in a phase / samples expected for its duration."""
        expected = duration_s / self.interval_s
        if expected < 1:
            return None
        got = sum(1 for r in self.rows if r["phase"] == phase and r["device"] == "process")
        return min(1.0, got / expected)

    def longest_gap_s(self, phase: str) -> float | None:
        """Widest interval between consecutive samples of a phase (the window's are
        taken at both of its edges by mark()), the hole a trapezoid over them bridges."""
        return longest_gap_s([r["t_s"] for r in self.rows if r["phase"] == phase and r["device"] == "process"])

    def write(self, path: Path) -> bool:
        """timeseries.parquet, atomically, with pyarrow alone: importing pandas costs a run
        about half a second, more than all other per-run overhead of the local runner, and
        pandas cannot be pre-imported by its launcher (its pyarrow starts a thread)."""
        if not self.rows:
            return False
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        from llenergymeasure.backends.atomic import write_bytes_atomic

        names = list(dict.fromkeys(k for row in self.rows for k in row))  # every key, first-seen order
        table = pa.table({k: [row.get(k) for row in self.rows] for k in names})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        write_bytes_atomic(path, buf.getvalue())
        return True
