"""Energy-counter window edges and steady-state energy from the same counter.

NVML's total-energy counter updates about every 100 ms; a read between updates returns
the last update's value. FakeGpu(counter_tick_s=0.1) models that, on a scripted clock
that moves only when the test or the code under test waits (the meter's 1 ms polls), so
the windows here are exact. The GPU's power comes from FakeThermalLoad: idle until the
test's "pass" holds it under load. No NVML or GPU here.
"""

from __future__ import annotations

import types

import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness import energy
from llenergymeasure.backends.harness.energy import NvmlCounterMeter, measured, select_gpu_meter
from llenergymeasure.backends.harness.gpu import GpuDiscovery
from llenergymeasure.backends.harness.protocol import configured_concurrency, measure_steady_state
from llenergymeasure.backends.harness.sampler import Sampler
from llenergymeasure.backends.harness.validity import MIN_COUNTER_UPDATES, counter_warnings
from llenergymeasure.backends.registry import LoadedModel, RequestRecord
from tests.support.fakes import FakeGpu, FakeThermalLoad

TICK_S = 0.1


class ScriptedTime:
    """`time` for the energy module: perf_counter reads the scripted clock, sleep moves it."""

    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@pytest.fixture
def clock(monkeypatch) -> ScriptedTime:
    scripted = ScriptedTime()
    monkeypatch.setattr(energy, "time", types.SimpleNamespace(perf_counter=scripted.perf_counter,
                                                              sleep=scripted.sleep))
    return scripted


def physics(clock: ScriptedTime) -> FakeThermalLoad:
    return FakeThermalLoad(p_idle_w=50.0, p_load_w=300.0, clock=clock.perf_counter)


def run_window(clock: ScriptedTime, load: FakeThermalLoad, meter, work_s: float):
    """The protocol's window: start the meter, run a pass (GPU under load) for work_s,
    stop the meter. Returns the reading and when start() returned (the first pass's start)."""
    with measured(meter) as out:
        opened = clock.t
        load.set_busy(True)
        clock.t += work_s
        load.set_busy(False)
    return out[0], opened


def test_edges_are_stamped_at_counter_updates_so_the_window_has_no_one_sided_error(clock):
    load = physics(clock)
    gpu = FakeGpu("GPU-a", load=load, counter_tick_s=TICK_S, clock=clock.perf_counter)
    meter = select_gpu_meter(GpuDiscovery([gpu]))  # what protocol.py gets
    assert isinstance(meter, NvmlCounterMeter)
    clock.t = 1.05  # idle, between two counter updates
    reading, opened = run_window(clock, load, meter, work_s=10.03)  # ends between updates too
    # the truth over the window the meter reports: from the first pass's start, for duration_s
    truth = load.energy_j(opened + reading.duration_s) - load.energy_j(opened)
    # read at arbitrary edges the counter would count 50 ms of idle before the window and miss
    # 80 ms of load at its end (-21.5 J here); stamped at updates, only a 1 ms poll remains
    assert reading.energy_j == pytest.approx(truth, abs=0.5)
    assert opened == pytest.approx(1.1, abs=0.002)  # the window opened at the update after 1.05 s
    assert reading.duration_s == pytest.approx(11.2 - 1.1, abs=0.002)  # closed at the update after the pass
    assert reading.counter_unaligned == [] and reading.counter_stuck == []
    assert reading.counter_period_s == pytest.approx(TICK_S, abs=0.002)  # measured after the window


def test_each_gpu_is_read_at_its_own_update(clock):
    load = physics(clock)
    a = FakeGpu("GPU-a", load=load, counter_tick_s=TICK_S, clock=clock.perf_counter)
    clock.t = 0.04  # GPU-b's updates fall 40 ms after GPU-a's
    b = FakeGpu("GPU-b", load=load, counter_tick_s=TICK_S, clock=clock.perf_counter)
    meter = NvmlCounterMeter([a, b])
    clock.t = 2.0
    reading, opened = run_window(clock, load, meter, work_s=5.0)
    # GPU-b updates at 2.04 s, GPU-a at 2.1 s: the edge is stamped at the later update
    assert opened == pytest.approx(2.1, abs=0.002) and reading.counter_unaligned == []
    truth = load.energy_j(opened + reading.duration_s) - load.energy_j(opened)
    # GPU-b's readings are 60 ms older than the stamps at both edges, at idle power: they cancel
    assert reading.per_device_j["GPU-a"] == pytest.approx(truth, abs=0.5)
    assert reading.per_device_j["GPU-b"] == pytest.approx(truth, abs=0.5)


def test_a_counter_that_does_not_advance_gives_no_energy_and_a_warning(clock):
    stuck = FakeGpu("GPU-s", energy_mj=5_000_000, clock=clock.perf_counter)
    meter = NvmlCounterMeter([stuck])
    reading, _ = run_window(clock, physics(clock), meter, work_s=30.0)
    assert reading.energy_j is None  # never a 0 J window
    assert reading.counter_stuck == ["GPU-s"] and "did not advance" in meter.unavailable_reason
    assert reading.counter_unaligned == ["start: GPU-s", "end: GPU-s"]  # it never updated at an edge either
    w = counter_warnings(duration_s=reading.duration_s, period_s=reading.counter_period_s,
                         unaligned=reading.counter_unaligned, stuck=reading.counter_stuck,
                         edge_poll_s=meter.edge_poll_s)
    assert {x.split(":", 1)[0] for x in w} == {"energy_counter_stuck", "energy_edge_unaligned"}


def test_an_edge_without_a_counter_update_within_the_bound_goes_ahead_and_is_warned(clock):
    load = physics(clock)
    slow = FakeGpu("GPU-slow", load=load, counter_tick_s=1.0, clock=clock.perf_counter)  # > EDGE_POLL_S
    meter = NvmlCounterMeter([slow])
    clock.t = 0.2
    reading, opened = run_window(clock, load, meter, work_s=30.3)  # ends 0.2 s before an update
    assert opened == pytest.approx(0.2 + meter.edge_poll_s, abs=0.002)  # waited the bound, no longer
    assert reading.counter_unaligned == ["start: GPU-slow"] and reading.energy_j is not None
    w = counter_warnings(duration_s=reading.duration_s, period_s=reading.counter_period_s,
                         unaligned=reading.counter_unaligned, stuck=[], edge_poll_s=meter.edge_poll_s)
    assert w == ["energy_edge_unaligned: no counter update within 0.3 s at start: GPU-slow"]


def test_a_window_of_fewer_than_a_hundred_counter_updates_is_warned_when_an_edge_is_unaligned():
    assert MIN_COUNTER_UPDATES == 100
    edge = ["end: GPU-a"]
    short = counter_warnings(duration_s=5.0, period_s=0.1, unaligned=edge, stuck=[], edge_poll_s=0.3)
    assert short[1] == ("energy_window_short: 5.00 s is 50 counter updates of 100 ms (measured), under 100; "
                        "raise measurement.min_window_s")
    assert counter_warnings(duration_s=12.0, period_s=0.1, unaligned=edge, stuck=[], edge_poll_s=0.3)[1:] == []
    assert counter_warnings(duration_s=5.0, period_s=0.02, unaligned=edge, stuck=[], edge_poll_s=0.3)[1:] == []
    unmeasured = counter_warnings(duration_s=5.0, period_s=None, unaligned=edge, stuck=[], edge_poll_s=0.3)
    assert "(nominal)" in unmeasured[1]
    # both edges stamped at an update: no part-period error to dilute, so the default 5 s window is clean
    assert counter_warnings(duration_s=5.0, period_s=0.1, unaligned=[], stuck=[], edge_poll_s=0.3) == []


# -- steady-state energy: the counter in every sampler row ------------------------------------

def sampled_window(clock: ScriptedTime, gpus, load: FakeThermalLoad, busy_from: float, busy_to: float,
                   until: float) -> Sampler:
    """A sampler (not started: samples taken by mark()) over a window, 100 ms apart."""
    sampler = Sampler(gpus, interval_s=0.1, clock=clock.perf_counter)
    while clock.t <= until + 1e-9:
        if abs(clock.t - busy_from) < 1e-6:
            load.set_busy(True)
        if abs(clock.t - busy_to) < 1e-6:
            load.set_busy(False)
        sampler.mark("window")
        clock.t = round(clock.t + 0.1, 6)
    return sampler


def test_sampler_rows_carry_the_counter_and_steady_energy_comes_from_it(clock):
    load = physics(clock)
    gpu = FakeGpu("GPU-a", load=load, clock=clock.perf_counter)
    sampler = sampled_window(clock, [gpu], load, busy_from=1.0, busy_to=4.0, until=5.0)
    rows = [r for r in sampler.phase_rows("window") if r["device"] == "GPU-a"]
    assert all(isinstance(r["energy_mj"], int) for r in rows)
    joules, method = sampler.energy_j("window", 0.55, 4.35)  # edges between samples, idle: interpolated
    assert method == "energy_counter"
    assert joules == pytest.approx(load.energy_j(4.35) - load.energy_j(0.55), abs=0.01)


def test_without_a_counter_steady_energy_is_sampled_power_and_says_so(clock):
    load = physics(clock)
    gpu = FakeGpu("GPU-old", load=load, counter=False, clock=clock.perf_counter)
    sampler = sampled_window(clock, [gpu], load, busy_from=1.0, busy_to=4.0, until=5.0)
    joules, method = sampler.energy_j("window", 1.5, 3.5)
    assert method == "power_trapezoid" and joules == pytest.approx(300.0 * 2.0)
    assert Sampler([], clock=clock.perf_counter).energy_j("window", 0, 1) == (None, None)  # no GPU: none


def steady_records(origin: float, n=40, cap=4, n_tokens=lambda i: 20 + (7 * i) % 16, step=0.02):
    """A continuous-batching pass (cap at once) starting at origin, tokens every step."""
    running, queue, t = {}, list(range(n)), origin
    times = {i: [] for i in range(n)}
    while queue or running:
        while queue and len(running) < cap:
            running[queue.pop(0)] = 0
        t += step
        for i in list(running):
            times[i].append(round(t, 6))
            running[i] += 1
            if running[i] == n_tokens(i):
                del running[i]
    return [RequestRecord(input_tokens=3, submitted_s=origin, token_times_s=times[i], arrival_s=origin)
            for i in range(n)]


def test_the_steady_state_report_names_the_counter_and_the_concurrency(clock):
    load = physics(clock)
    gpu = FakeGpu("GPU-a", load=load, counter_tick_s=TICK_S, clock=clock.perf_counter)
    records = steady_records(origin=1.0)
    end = max(r.token_times_s[-1] for r in records)
    sampler = sampled_window(clock, [gpu], load, busy_from=1.0, busy_to=round(end, 1), until=end + 0.5)
    steady, joules, report = measure_steady_state(records, 4, sampler, origin_s=1.0)
    assert report.reason is None and report.energy_method == "energy_counter"
    assert report.configured_concurrency == steady.concurrency == 4
    assert report.mean_concurrency == pytest.approx(steady.mean_concurrency) and report.mean_concurrency > 3.2
    assert report.start_s == pytest.approx(steady.start_s - 1.0)
    # the counter in the samples updates every 100 ms: within one update's energy at load
    assert joules == pytest.approx(300.0 * steady.duration_s, abs=300.0 * TICK_S)
    none, no_joules, why = measure_steady_state(records[:8], 4, sampler, origin_s=1.0)
    assert none is None and no_joules is None and "not more than 2 x 4" in why.reason


def test_configured_concurrency_is_what_the_engine_resolved_else_the_setting():
    vllm = ExperimentConfig(model="llem/tiny-llama", backend="vllm", device="cpu")
    resolved = LoadedModel("m", 1, "cuda:0", "bfloat16", extra={"max_num_seqs": 256})
    assert configured_concurrency(vllm, resolved) == 256  # vLLM's default depends on the GPU
    set_here = ExperimentConfig(model="llem/tiny-llama", backend="vllm", device="cpu", vllm={"max_num_seqs": 8})
    assert configured_concurrency(set_here, LoadedModel("m", 1, "cpu", "float32")) == 8
    trt = ExperimentConfig(model="llem/tiny-llama", backend="tensorrt", device="cuda:0",
                           tensorrt={"max_batch_size": 16})
    assert configured_concurrency(trt, LoadedModel("m", 1, "cuda:0", "float16")) == 16
    assert configured_concurrency(vllm, LoadedModel("m", 1, "cpu", "float32")) is None
