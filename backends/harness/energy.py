"""Energy meters: one source owns a measurement window; none is ever invented.

A meter is started and stopped at the window edges (after device
synchronisation). Where nothing can measure, the meter says why and the result
carries `energy_j: null` with that reason.

GPU sources, best first: NVML's total-energy counter, else NVML power polled
and integrated; Zeus on request. CPU source: Linux powercap RAPL.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from llenergymeasure.backends import contract
from llenergymeasure.backends.harness.gpu import CounterUnsupported, GpuDevice, GpuDiscovery

POWERCAP_ROOT = Path("/sys/class/powercap")
GPU_PREFERENCES = ("auto", "nvml", "zeus")


@dataclass
class EnergyReading:
    duration_s: float
    energy_j: float | None = None
    per_device_j: dict[str, float] = field(default_factory=dict)  # GPU UUID or RAPL domain -> J
    coverage: float | None = None  # polling only: samples received / expected (worst device)
    missing_samples: int | None = None  # polling only: readings that came back None
    longest_gap_s: float | None = None  # polling only: widest hole the trapezoid bridged (worst device)
    # NVML counter only (NvmlCounterMeter): edges that could not be stamped at a counter
    # update (e.g. "start: GPU-a"), GPUs whose counter did not advance over the window (no
    # energy for them, never 0 J), and the counter's update period as measured after the
    # window (None: not measured)
    counter_unaligned: list[str] = field(default_factory=list)
    counter_stuck: list[str] = field(default_factory=list)
    counter_period_s: float | None = None
    # RAPL only (RaplMeter): zones where one more wrap than the two readings show was
    # possible -> (average W the window would have drawn with it, the zone's plausible maximum W)
    rapl_wrap_doubt: dict[str, tuple[float, float]] = field(default_factory=dict)


class EnergyMeter(Protocol):
    source: str | None  # what measured, e.g. "nvml_total_energy_counter"; None if nothing
    unavailable_reason: str | None
    # Why a better source was passed over, or what this one leaves out; None if nothing.
    fallback_reason: str | None

    def start(self) -> None: ...

    def stop(self) -> EnergyReading: ...


class MeterUnavailable(Exception):
    """A source that cannot measure here; the message says why."""


class UnavailableMeter:
    """Measures time only; energy stays null, with the reason."""

    source = None
    fallback_reason = None

    def __init__(self, reason: str) -> None:
        self.unavailable_reason = reason
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> EnergyReading:
        return EnergyReading(duration_s=time.perf_counter() - self._t0)


# Longest wait for a counter update at a window edge. NVML refreshes the total-energy
# counter about every 100 ms; three periods leave room for a late one.
EDGE_POLL_S = 0.3
EDGE_POLL_INTERVAL_S = 0.001  # between counter reads while waiting for an update


@dataclass
class _Edge:
    """One window edge: each GPU's counter value (mJ) and when it was read."""

    values_mj: list[int]
    stamp_s: float  # the edge's time: when the last GPU's update was seen
    missed: list[str]  # GPUs with no update within EDGE_POLL_S (value read when the poll gave up)
    ticked_at: list[float | None]  # when each GPU's update was seen (None: missed)


class NvmlCounterMeter:
    """NVML's cumulative total-energy counter, read per GPU at both window edges, each
    edge stamped at a counter update.

    NVML refreshes the counter about every 100 ms, and a read between refreshes returns
    the energy up to the last one. Read at arbitrary edges, a window that opens idle and
    closes under load would count up to one period of idle before its start and miss up
    to one period of load at its end: a one-sided error. So each edge polls the counter
    (every EDGE_POLL_INTERVAL_S) until its value changes and stamps that instant, when
    the value is the energy up to (within a poll of) the stamp. start() waits at most a
    period before the window, outside it; stop(), called after the last pass, takes at
    most a period of idle into the window, measured as such. After the end edge the poll
    goes on to the next update, to measure the update period (validity's
    energy_window_short), outside the window.

    GPUs tick independently: an edge waits for each and is stamped at the last; the
    others' readings are up to a period older, at idle power at both edges, so the two
    errors have opposite signs. An edge with no update within EDGE_POLL_S is stamped when
    the poll gave up (`counter_unaligned`: warning energy_edge_unaligned). A GPU whose
    counter did not advance gets no energy and the window none (energy_counter_stuck),
    never a 0 J figure."""

    source = "nvml_total_energy_counter"
    unavailable_reason: str | None = None
    fallback_reason = None

    def __init__(self, devices: list[GpuDevice], *, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None, edge_poll_s: float = EDGE_POLL_S) -> None:
        """clock, sleep: default time.perf_counter and time.sleep, as this module's `time`
        has them when the meter is made."""
        self.devices = devices
        self._clock, self._sleep = clock or time.perf_counter, sleep or time.sleep
        self.edge_poll_s = edge_poll_s
        self._start: _Edge | None = None
        self.started_at = self.stopped_at = 0.0  # the edges' stamps, on clock

    def _edge(self) -> _Edge:
        """Poll until every GPU's counter has changed once (or EDGE_POLL_S passed)."""
        first = [d.total_energy_mj() for d in self.devices]
        values = list(first)
        ticked: list[float | None] = [None] * len(self.devices)
        deadline = self._clock() + self.edge_poll_s
        while True:
            for i, d in enumerate(self.devices):
                if ticked[i] is None:
                    v = d.total_energy_mj()
                    if v != first[i]:
                        values[i], ticked[i] = v, self._clock()
            if all(t is not None for t in ticked) or self._clock() >= deadline:
                break
            self._sleep(EDGE_POLL_INTERVAL_S)
        missed = [d.uuid for d, t in zip(self.devices, ticked) if t is None]
        seen = [t for t in ticked if t is not None]
        stamp = self._clock() if missed or not seen else max(seen)
        return _Edge(values, stamp, missed, ticked)

    def _period_s(self, end: _Edge) -> float | None:
        """Seconds to each GPU's next update after the end edge (the worst GPU's), or None."""
        if end.missed:
            return None
        nxt = self._edge()
        gaps = [b - a for a, b in zip(end.ticked_at, nxt.ticked_at) if a is not None and b is not None]
        return max(gaps) if gaps and not nxt.missed else None

    def start(self) -> None:
        self.unavailable_reason = None  # a reason describes the last window only
        self._start = self._edge()
        self.started_at = self._start.stamp_s

    def stop(self) -> EnergyReading:
        start, end = self._start, self._edge()
        assert start is not None, "stop() before start()"
        self.stopped_at = end.stamp_s
        per: dict[str, float] = {}
        stuck: list[str] = []
        for d, s, e in zip(self.devices, start.values_mj, end.values_mj):
            if e > s:
                per[d.uuid] = (e - s) / 1000.0
            else:  # did not advance (or went back: a driver reload): nothing measured
                stuck.append(d.uuid)
        if stuck:
            self.unavailable_reason = (f"the NVML energy counter did not advance during the window on "
                                       f"{', '.join(stuck)}")
        unaligned = [f"start: {u}" for u in start.missed] + [f"end: {u}" for u in end.missed]
        return EnergyReading(duration_s=end.stamp_s - start.stamp_s,
                             energy_j=None if stuck else sum(per.values()), per_device_j=per,
                             counter_unaligned=unaligned, counter_stuck=stuck, counter_period_s=self._period_s(end))


# --- NVML power polling -----------------------------------------------------------


def integrate_trapezoid(samples: list[tuple[float, float | None]], t0: float, t1: float) -> float | None:
    """Joules over [t0, t1] from (time s, watts) samples by the trapezoid rule.

    None readings are skipped, so the trapezoid spans a gap between the readings
    around it. Before the first and after the last reading, power is held at that
    reading (so a missed edge sample neither drops nor invents a ramp). None if no
    reading arrived at all.
    """
    pts = sorted((t, p) for t, p in samples if p is not None and t0 <= t <= t1)
    if not pts:
        return None
    if pts[0][0] > t0:
        pts.insert(0, (t0, pts[0][1]))
    if pts[-1][0] < t1:
        pts.append((t1, pts[-1][1]))
    return sum((tb - ta) * (pa + pb) / 2 for (ta, pa), (tb, pb) in itertools.pairwise(pts))


def _edge_points(samples: list[tuple[float, float | None]], edges: tuple[float, ...]) -> list[tuple[float, float]]:
    """Power at each edge that falls between two readings, interpolated linearly: an edge
    inside a polled window then starts its trapezoid where it lies, not at the next reading."""
    pts = sorted((t, p) for t, p in samples if p is not None)
    out = []
    for e in edges:
        for (ta, pa), (tb, pb) in itertools.pairwise(pts):
            if ta < e < tb:
                out.append((e, pa + (pb - pa) * (e - ta) / (tb - ta)))
                break
    return out


def longest_gap_s(times: list[float], t0: float | None = None, t1: float | None = None) -> float | None:
    """Widest interval between consecutive sample times, counting the window edges t0
    and t1 where given: the longest stretch integrate_trapezoid had to bridge. None
    with fewer than two points."""
    pts = sorted([*times, *(t for t in (t0, t1) if t is not None)])
    if len(pts) < 2:
        return None
    return max(b - a for a, b in itertools.pairwise(pts))


class NvmlPollingMeter:
    """GPU power polled on its own thread and integrated (trapezoid rule) over the
    window. For GPUs without the energy counter (pre-Volta, where plain power
    usage is an instantaneous reading; on Ampere+ it is a 1 s average, which
    shifts energy across the window edges, hence the instant field is preferred).
    Both edges are sampled on the caller's thread, so the integral spans exactly
    start() to stop()."""

    source = "nvml_power_polling"
    unavailable_reason: str | None = None
    fallback_reason: str | None = None

    def __init__(self, devices: list[GpuDevice], interval_s: float = 0.01,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.devices = devices
        self.interval_s = interval_s
        self._clock = clock
        self.coverage: float | None = None
        self.missing_samples: int | None = None
        self.started_at = self.stopped_at = 0.0  # clock readings at the window edges
        self._samples: list[list[tuple[float, float | None]]] = []
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        for d, out in zip(self.devices, self._samples):
            t = self._clock()
            out.append((t, d.power_w()))

    def _loop(self) -> None:
        next_t = self.started_at + self.interval_s
        while not self._halt.wait(max(0.0, next_t - self._clock())):
            self._poll()
            # Fell behind (GIL, load)? Skip the missed slots rather than burst:
            # they show up as coverage below 1.
            now = self._clock()
            next_t += self.interval_s
            while next_t <= now:
                next_t += self.interval_s

    def start(self) -> None:
        self.unavailable_reason = None  # a reason describes the last window only
        self._samples = [[] for _ in self.devices]
        self._halt.clear()
        self.started_at = self._clock()
        self._poll()  # opening edge
        self._thread = threading.Thread(target=self._loop, name="llem-power-poll", daemon=True)
        self._thread.start()

    def energy_between(self, t0: float, t1: float) -> dict[str, float | None]:
        """Joules per GPU over [t0, t1] (on this meter's clock) from the last window's
        samples: another instrument's window, inside this one, compared over its own edges
        (benchmarks/gpu_check.py: the counter's stamped edges against 10 ms polling)."""
        return {d.uuid: integrate_trapezoid(samples + _edge_points(samples, (t0, t1)), t0, t1)
                for d, samples in zip(self.devices, self._samples)}

    def stop(self) -> EnergyReading:
        self._halt.set()
        if self._thread:
            self._thread.join()
        self._poll()  # closing edge
        self.stopped_at = t1 = self._clock()
        duration = t1 - self.started_at
        expected = duration / self.interval_s + 1  # grid slots, both edges included
        per: dict[str, float] = {}
        no_power: list[str] = []
        received: list[int] = []
        gaps: list[float] = []
        missing = 0
        for d, samples in zip(self.devices, self._samples):
            got = sum(1 for _, p in samples if p is not None)
            received.append(got)
            gaps.append(longest_gap_s([t for t, p in samples if p is not None], self.started_at, t1) or 0.0)
            missing += len(samples) - got
            j = integrate_trapezoid(samples, self.started_at, t1)
            if j is None:
                no_power.append(d.uuid)
            else:
                per[d.uuid] = j
        self.coverage = min(1.0, min(received, default=0) / expected)
        self.missing_samples = missing
        energy = None if no_power else sum(per.values())
        if no_power:  # a total missing a GPU would understate: report none
            self.unavailable_reason = f"no power reading arrived during the window from {', '.join(no_power)}"
        return EnergyReading(duration_s=duration, energy_j=energy, per_device_j=per,
                             coverage=self.coverage, missing_samples=missing,
                             longest_gap_s=max(gaps, default=None))


# --- Zeus --------------------------------------------------------------------------


class ZeusMeter:
    """Zeus's ZeusMonitor (the `zeus` package, imported only when asked for).

    Zeus opens NVML itself; it is only used when selected, so no other meter
    measures the same window. The harness has already synchronised the device at
    the window edges, so Zeus is told not to (it would import torch to do so), and
    it is given no CPUs: RAPL belongs to the CPU meter.
    """

    source = "zeus"
    unavailable_reason: str | None = None
    fallback_reason: str | None = None

    def __init__(self, gpu_indices: list[int], keys: list[str] | None = None) -> None:
        """gpu_indices: CUDA indices (as Zeus counts them, after CUDA_VISIBLE_DEVICES);
        keys: names for per_device_j (the GPUs' UUIDs), default the indices."""
        try:
            from zeus.monitor import ZeusMonitor
        except ImportError as e:
            raise MeterUnavailable(f"zeus is not installed ({e})") from None
        self.gpu_indices = list(gpu_indices)
        self.keys = keys or [str(i) for i in self.gpu_indices]
        try:
            self._monitor = ZeusMonitor(gpu_indices=self.gpu_indices, cpu_indices=[])
        except Exception as e:  # noqa: BLE001 - whatever zeus raises, it cannot measure here
            raise MeterUnavailable(f"zeus could not start ({type(e).__name__}: {e})") from None
        self._n = 0
        self._key = ""
        self._t0 = 0.0

    def _missing(self, gpu_energy: dict) -> list[int]:
        return [i for i in self.gpu_indices if i not in (gpu_energy or {})]

    def probe(self) -> None:
        """Measure an empty window; raise MeterUnavailable if Zeus measures no GPU
        (it returns an empty gpu_energy where it found none)."""
        try:
            self.start()
            with warnings.catch_warnings():  # "energy measured as zero": expected here
                warnings.simplefilter("ignore")
                m = self._monitor.end_window(self._key, sync_execution=False)
        except Exception as e:  # noqa: BLE001
            raise MeterUnavailable(f"zeus failed a test window ({type(e).__name__}: {e})") from None
        if not self.gpu_indices or self._missing(m.gpu_energy):
            raise MeterUnavailable(
                f"zeus measured no energy for GPU index(es) {self._missing(m.gpu_energy) or '[]'}"
            )

    def start(self) -> None:
        self.unavailable_reason = None  # a reason describes the last window only
        self._n += 1
        self._key = f"llem-{self._n}"
        self._t0 = time.perf_counter()
        self._monitor.begin_window(self._key, sync_execution=False)

    def stop(self) -> EnergyReading:
        m = self._monitor.end_window(self._key, sync_execution=False)
        duration = time.perf_counter() - self._t0
        missing = self._missing(m.gpu_energy)
        if missing:
            self.unavailable_reason = f"zeus measured no energy for GPU index(es) {missing}"
            return EnergyReading(duration_s=duration)
        per = {k: float(m.gpu_energy[i]) for k, i in zip(self.keys, self.gpu_indices)}
        return EnergyReading(duration_s=duration, energy_j=sum(per.values()), per_device_j=per)


# --- RAPL (CPU package and DRAM) ------------------------------------------------------


# The highest average power a zone is taken to draw over a window where it reports no
# power limit: above any CPU package's or memory's real draw, so that a second wrap is
# ruled out only where it could not have happened.
RAPL_FALLBACK_MAX_W = {"package": 1000.0, "dram": 500.0}
# Margin over the highest limit a zone reports: limits are enforced as averages over
# seconds (PL1) and a short-term limit (PL2) lets a package run above them for a while.
RAPL_LIMIT_MARGIN = 1.5


@dataclass
class RaplZone:
    key: str  # "package-0", "dram-0"
    path: Path
    max_range_uj: int  # energy_uj wraps to 0 past this
    max_power_w: float = RAPL_FALLBACK_MAX_W["package"]  # plausible average draw at most (rapl_max_power_w)


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def rapl_max_power_w(path: Path, kind: str) -> float:
    """The most a zone can plausibly draw on average: its highest reported limit
    (constraint_*_power_limit_uw, constraint_*_max_power_uw) with RAPL_LIMIT_MARGIN, else
    RAPL_FALLBACK_MAX_W for its kind ("package", "dram")."""
    limits = []
    for f in [*path.glob("constraint_*_power_limit_uw"), *path.glob("constraint_*_max_power_uw")]:
        try:
            limits.append(_read_int(f))
        except (OSError, ValueError):
            continue
    limits = [v for v in limits if v > 0]
    return max(limits) / 1e6 * RAPL_LIMIT_MARGIN if limits else RAPL_FALLBACK_MAX_W[kind]


def one_more_wrap_w(delta_uj: int, max_range_uj: int, duration_s: float) -> float:
    """Average power over the window had the counter wrapped once more than the two
    readings show (the delta they give, plus one whole range). Two readings cannot tell
    k from k + 1 wraps; k + 1 is ruled out only when it would need more power than the
    zone can draw."""
    return float("inf") if duration_s <= 0 else (delta_uj + max_range_uj) / 1e6 / duration_s


def discover_rapl(root: Path = POWERCAP_ROOT) -> tuple[list[RaplZone], list[str]]:
    """Readable package and DRAM zones under a powercap root, and why others aren't.

    Top-level zones `intel-rapl:N` named package-* are CPU packages; a subzone
    `intel-rapl:N:M` named "dram" is that package's memory. Other subzones (core,
    uncore) are inside the package's energy, and "psys" (a top-level platform
    zone on some laptops) contains packages and DRAM: both would double count.
    AMD CPUs expose the same intel-rapl interface. /sys/class/powercap lists every
    zone flat; under the device path subzones nest, so both layouts are walked.
    """
    seen: dict[str, Path] = {}
    for p in sorted([*root.glob("intel-rapl:*"), *root.glob("intel-rapl:*/intel-rapl:*")]):
        seen.setdefault(p.name, p)
    zones: list[RaplZone] = []
    problems: list[str] = []
    for zone_id, path in sorted(seen.items(), key=lambda kv: _zone_numbers(kv[0])):
        nums = _zone_numbers(zone_id)
        try:
            name = (path / "name").read_text().strip()
        except OSError as e:
            problems.append(f"{zone_id}: name unreadable ({e.strerror or e})")
            continue
        if len(nums) == 1 and name.startswith("package"):
            key = f"package-{nums[0]}"
        elif len(nums) == 2 and name == "dram":
            key = f"dram-{nums[0]}"
        else:
            continue
        try:
            _read_int(path / "energy_uj")
            zones.append(RaplZone(key, path, _read_int(path / "max_energy_range_uj"),
                                  rapl_max_power_w(path, key.split("-")[0])))
        except (OSError, ValueError) as e:
            # Since Linux 5.10 (CVE-2020-8694) energy_uj is readable by root only.
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            problems.append(f"{zone_id} ({key}): {path.name}/energy_uj unreadable ({why})")
    return zones, problems


def _zone_numbers(zone_id: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in zone_id.split(":")[1:])
    except ValueError:  # e.g. intel-rapl-mmio: not matched by the glob, but be safe
        return (1 << 30,)


class RaplMeter:
    """CPU package (+ DRAM where exposed) energy from Linux powercap RAPL counters,
    read at both window edges. A counter that reads lower at the end than at the
    start wrapped once (at max_energy_range_uj). More wraps can't be seen from two
    readings: a window long enough for one more (max range / power, e.g. ~262 kJ /
    200 W ~ 20 min) would be undercounted by a whole range. Where one more wrap was
    possible at a plausible power (one_more_wrap_w <= the zone's max_power_w) the
    reading says so (rapl_wrap_doubt, warned as rapl_multiple_wraps) rather than guess;
    reading the counters periodically would count wraps, at the cost of a thread
    beside every window for a case that needs windows of many minutes."""

    source = "rapl"
    unavailable_reason: str | None = None

    def __init__(self, root: Path = POWERCAP_ROOT) -> None:
        self.root = root
        self.zones, problems = discover_rapl(root)
        if not any(z.key.startswith("package") for z in self.zones):
            why = "; ".join(problems) or f"no intel-rapl package zones under {root}"
            raise MeterUnavailable(f"CPU energy (RAPL) cannot be read: {why}")
        # Readable packages but some zone left out (e.g. DRAM): measured, with the gap named.
        self.fallback_reason: str | None = (
            "RAPL zones left out: " + "; ".join(problems) if problems else None
        )
        self._start: list[int] | None = []
        self._t0 = 0.0

    def start(self) -> None:
        self.unavailable_reason = None  # a reason describes the last window only
        self._t0 = time.perf_counter()
        try:
            self._start = [_read_int(z.path / "energy_uj") for z in self.zones]
        except (OSError, ValueError) as err:
            self._start = None
            self.unavailable_reason = f"CPU energy (RAPL) unreadable at the window start ({err})"

    def stop(self) -> EnergyReading:
        duration = time.perf_counter() - self._t0
        if self._start is None:
            return EnergyReading(duration_s=duration)
        per: dict[str, float] = {}
        doubt: dict[str, tuple[float, float]] = {}
        try:
            for z, s in zip(self.zones, self._start):
                e = _read_int(z.path / "energy_uj")
                delta = e - s if e >= s else z.max_range_uj - s + e  # one wrap
                per[z.key] = delta / 1e6
                more_w = one_more_wrap_w(delta, z.max_range_uj, duration)
                if more_w <= z.max_power_w:
                    doubt[z.key] = (more_w, z.max_power_w)
        except (OSError, ValueError) as err:
            self.unavailable_reason = f"CPU energy (RAPL) unreadable at the window end ({err})"
            return EnergyReading(duration_s=duration)
        return EnergyReading(duration_s=duration, energy_j=sum(per.values()), per_device_j=per,
                             rapl_wrap_doubt=doubt)


# --- host CPU contention (RAPL is host-wide) ------------------------------------------

PROC_STAT = Path("/proc/stat")


def host_busy_s(stat: Path = PROC_STAT) -> float:
    """CPU time every CPU of the host has spent busy since boot, in seconds: user, nice,
    system, irq and softirq of /proc/stat's aggregate line (guest time is already inside
    user; idle, iowait and steal are not this host's work). Inside a container /proc/stat
    is still the host's, which is the scope RAPL measures."""
    fields = stat.read_text().split("\n", 1)[0].split()
    if fields[:1] != ["cpu"] or len(fields) < 8:
        raise ValueError(f"{stat}: no aggregate cpu line")
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(proc=None) -> float:
    """CPU time (user + system) of this process and its descendants, in seconds. Each
    live process counts its own time and its reaped children's (cutime, cstime); a dead
    child's time lives only in its reaper's, so nothing is counted twice and a worker
    that exits during the window still counts."""
    import psutil

    root = proc or psutil.Process()
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:  # exited mid-walk: its time is (or will be) in its reaper's
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class HostCpuMeter:
    """Host CPU time used outside the run's process tree over a window: the busy time
    of /proc/stat minus the run's own (tree_cpu_s). Feeds validity's host_contention:
    RAPL measures the whole host, so another process's work lands in a CPU run's
    energy_j. None where /proc/stat or the process tree can't be read (not Linux)."""

    def __init__(self, host_busy: Callable[[], float] = host_busy_s,
                 own: Callable[[], float] = tree_cpu_s) -> None:
        self._host_busy, self._own = host_busy, own
        self._start: tuple[float, float] | None = None

    def _read(self) -> tuple[float, float] | None:
        try:
            return self._host_busy(), self._own()
        except Exception:  # noqa: BLE001 - no /proc/stat (not Linux), psutil.Error: unreadable
            return None

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float | None:
        """CPU-seconds other processes used since start(); clipped at 0, as the two
        counters tick in 10 ms jiffies and can disagree by one tick per process."""
        end = self._read()
        if self._start is None or end is None:
            return None
        return max(0.0, (end[0] - self._start[0]) - (end[1] - self._start[1]))


# --- selection -------------------------------------------------------------------


def _nvml_meter(gpus: GpuDiscovery) -> EnergyMeter:
    """Counter where every GPU has it, else polling where every GPU's power reads,
    else an explained absence. One source for all GPUs, never a mix."""
    if not gpus.devices:
        return UnavailableMeter(gpus.unavailable_reason or "no GPU could be opened through NVML")
    try:
        for d in gpus.devices:
            d.total_energy_mj()
        return NvmlCounterMeter(gpus.devices)
    except CounterUnsupported as e:
        counter_problem = f"the NVML total-energy counter is not supported ({e})"
    no_power = [d.uuid for d in gpus.devices if d.power_w() is None]
    if no_power:
        return UnavailableMeter(
            f"{counter_problem}, and NVML power is not readable on {', '.join(no_power)}"
        )
    meter = NvmlPollingMeter(gpus.devices)
    kinds = sorted({str(d.power_kind) for d in gpus.devices})
    meter.fallback_reason = f"{counter_problem}; integrating polled NVML power ({', '.join(kinds)})"
    return meter


def select_gpu_meter(gpus: GpuDiscovery, preference: str = "auto",
                     cuda_indices: list[int] | None = None) -> EnergyMeter:
    """The GPU energy source for a run.

    "auto" and "nvml": the NVML counter, else polled NVML power, else a reason.
    "zeus": ZeusMeter if it measures these GPUs, else the same as "auto" with the
    reason recorded in fallback_reason. cuda_indices: the GPUs' CUDA indices, as
    Zeus counts them (default: their positions, 0..n-1).
    """
    if preference not in GPU_PREFERENCES:
        raise ValueError(f"energy source {preference!r} is not one of {GPU_PREFERENCES}")
    if preference != "zeus":
        return _nvml_meter(gpus)
    indices = cuda_indices if cuda_indices is not None else list(range(len(gpus.devices)))
    try:
        if not gpus.devices:
            raise MeterUnavailable("no GPU was opened for this run")
        zeus = ZeusMeter(indices, keys=[d.uuid for d in gpus.devices])
        zeus.probe()
        return zeus
    except MeterUnavailable as e:
        zeus_problem = f"zeus was requested but cannot measure: {e}"
    meter = _nvml_meter(gpus)
    if meter.source is None:
        meter.unavailable_reason = f"{zeus_problem}; {meter.unavailable_reason}"
    meter.fallback_reason = "; ".join(filter(None, [zeus_problem, meter.fallback_reason]))
    return meter


def select_cpu_meter(root: Path | None = None) -> EnergyMeter:
    """RAPL where at least one CPU package zone is readable, else a reason.
    root: the powercap directory (default POWERCAP_ROOT, read at call time, or the
    LLEM_TEST_POWERCAP_ROOT test hook's fake tree)."""
    if root is None:
        root = Path(os.environ.get(contract.ENV_TEST_POWERCAP_ROOT) or POWERCAP_ROOT)
    try:
        return RaplMeter(root)
    except MeterUnavailable as e:
        return UnavailableMeter(str(e))


def _cuda_indices(device: str, n: int) -> list[int] | None:
    """CUDA indices of a run's n GPUs: its device and the ones after it, the same
    GPUs gpu.cuda_uuids names (so Zeus measures what NVML opened)."""
    try:
        index = int(device.split(":")[1])
    except (IndexError, ValueError):
        return None
    return list(range(index, index + n))


def select_meter(device: str, gpus: GpuDiscovery, preference: str = "auto") -> EnergyMeter:
    """The source for the run's inference devices: RAPL for "cpu", else every GPU
    the run was given (gpus: those gpu.cuda_uuids named, opened through NVML)."""
    if device == "cpu":
        return select_cpu_meter()
    return select_gpu_meter(gpus, preference, cuda_indices=_cuda_indices(device, len(gpus.devices)))


@contextmanager
def measured(meter: EnergyMeter) -> Iterator[list[EnergyReading]]:
    """`with measured(m) as out:` ... then `out[0]` holds the reading."""
    out: list[EnergyReading] = []
    meter.start()
    try:
        yield out
    finally:
        out.append(meter.stop())
