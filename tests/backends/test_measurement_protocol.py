"""Measurement-protocol logic: validity warnings, thermal plateau, steady state,
baseline reuse, the minimum window. Hardware readings are scripted data."""

from __future__ import annotations

import json
import time

import pytest

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import MeasurementConfig
from llenergymeasure.backends.harness.energy import EnergyReading
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.harness.baseline import reusable_baseline
from llenergymeasure.backends.harness.result import Baseline
from llenergymeasure.backends.harness.stabilise import spread, stabilise_under_load
from llenergymeasure.backends.harness.steady_state import (
    NoSteadyState, SteadyState, mean_in_flight, steady_state_window,
)
from llenergymeasure.backends.harness.energy import HostCpuMeter, host_busy_s, longest_gap_s
from llenergymeasure.backends.harness.validity import (
    CODES, HOST_CONTENTION_CORES, MAX_GAP_INTERVALS, POWER_CAP_SHARE, energy_warnings, gap_warnings,
    gpu_window_warnings, host_contention_warnings, window_warnings,
)
from llenergymeasure.backends.registry import RequestRecord


# -- validity warnings: each code has a trigger and a non-trigger -----------------------

def gpu_rows(n=20, **over):
    rows = []
    for i in range(n):
        r = dict(t_s=i * 0.1, phase="window", device="GPU-a", power_w=300.0, temperature_c=60.0,
                 memory_used_mb=1000.0, utilization_pct=90.0, sm_clock_mhz=1980.0, mem_clock_mhz=2600.0,
                 throttle_reasons="", foreign_processes=0)
        for k, v in over.items():
            r[k] = v(i) if callable(v) else v
        rows.append(r)
    return rows


def codes(warnings):
    return {w.split(":", 1)[0] for w in warnings}


def test_clean_gpu_window_has_no_warnings():
    assert gpu_window_warnings(gpu_rows()) == []


@pytest.mark.parametrize("over, code", [
    ({"throttle_reasons": lambda i: "sw_thermal" if i == 7 else ""}, "thermal_throttling"),
    ({"throttle_reasons": "sw_power_cap"}, "power_capping"),
    ({"foreign_processes": lambda i: 1 if i > 15 else 0}, "foreign_processes"),
    ({"sm_clock_mhz": lambda i: 1980.0 if i < 10 else 1400.0}, "clock_drift"),
    ({"temperature_c": lambda i: 55.0 + i}, "temperature_drift"),
])
def test_each_gpu_warning_triggers(over, code):
    assert codes(gpu_window_warnings(gpu_rows(**over))) == {code}


def test_small_changes_stay_quiet():
    rows = gpu_rows(sm_clock_mhz=lambda i: 1980.0 - i, temperature_c=lambda i: 60 + i * 0.1,
                    throttle_reasons="gpu_idle")
    assert gpu_window_warnings(rows) == []


BASE = dict(duration_s=10.0, min_window_s=5.0, passes=1, coverage=0.98, persistence={"GPU-a": True},
            stabilised=True, stabilisation_detail="ok", short_requests=0, max_output_tokens=8)


def test_clean_window_has_no_warnings():
    assert window_warnings(**BASE) == []


@pytest.mark.parametrize("over, code", [
    ({"duration_s": 3.0, "passes": 20}, "window_short"),
    ({"coverage": 0.5}, "low_sampling_coverage"),
    ({"persistence": {"GPU-a": False}}, "persistence_mode_off"),
    ({"stabilised": False}, "not_stabilised"),
    ({"short_requests": 2}, "output_length"),
])
def test_each_window_warning_triggers(over, code):
    assert codes(window_warnings(**{**BASE, **over})) == {code}


def test_unknown_persistence_and_no_stabilisation_stay_quiet():
    assert window_warnings(**{**BASE, "persistence": {"GPU-a": None}, "stabilised": None,
                              "coverage": None}) == []


def test_power_capping_needs_a_share_of_the_window_not_one_sample():
    # a saturated GPU touches its cap now and then: one sample in 20 (5%) is not a warning
    one = gpu_rows(throttle_reasons=lambda i: "sw_power_cap" if i == 7 else "")
    assert gpu_window_warnings(one) == []
    # held at the cap for 2 of 20 samples (10% = POWER_CAP_SHARE): warned, with the share
    two = gpu_rows(throttle_reasons=lambda i: "sw_power_cap" if i in (3, 9) else "")
    assert POWER_CAP_SHARE == 0.10
    assert gpu_window_warnings(two) == ["power_capping: GPU-a: sw_power_cap in 10% of samples"]
    # unreadable samples (None) are not in the denominator
    unread = gpu_rows(throttle_reasons=lambda i: "sw_power_cap" if i == 0 else None if i > 4 else "")
    assert codes(gpu_window_warnings(unread)) == {"power_capping"}  # 1 of 5 readable
    # under the study's own cap (gpu.power_limit_w) the cap is the setting measured, not a disturbance
    assert gpu_window_warnings(two, requested_power_limit_w=250.0) == []


def test_non_positive_energy_and_negative_net_energy_are_warned():
    assert codes(energy_warnings(0.0, None)) == {"energy_not_positive"}
    assert codes(energy_warnings(-3.0, None)) == {"energy_not_positive"}
    assert codes(energy_warnings(120.0, -4.5)) == {"energy_net_negative"}
    assert energy_warnings(120.0, 20.0) == [] and energy_warnings(None, None) == []


@pytest.mark.parametrize("energy_j", [0.0, -2.0])
def test_non_positive_energy_is_not_published_per_token(energy_j):
    recs = [RequestRecord(input_tokens=4, submitted_s=0.0, token_times_s=[0.1, 0.2], arrival_s=0.0)]
    m = compute_metrics(recs, EnergyReading(duration_s=1.0, energy_j=energy_j), model_load_s=0,
                        peak_memory_mb=None, n_parameters=10, baseline_power_w=5.0)
    assert m.energy_j == energy_j  # the reading itself stays visible, beside its warning
    assert (m.energy_per_output_token_j, m.energy_per_request_j, m.energy_per_total_token_j,
            m.energy_per_flop_j, m.avg_power_w, m.energy_net_j) == (None,) * 6


def test_longest_sampling_gap_counts_the_window_edges():
    assert longest_gap_s([1.0, 1.1, 1.2, 2.5, 2.6]) == pytest.approx(1.3)
    assert longest_gap_s([1.0, 1.1], t0=0.0, t1=3.0) == pytest.approx(1.9)  # after the last sample
    assert longest_gap_s([1.0]) is None


def test_a_sampling_hole_above_ten_intervals_is_warned():
    assert MAX_GAP_INTERVALS == 10
    # coverage can stay at 90% with one hole of a tenth of a 20 s window: 2 s of 0.1 s samples
    times = [i * 0.1 for i in range(181) if not 100 <= i < 120]
    gap = longest_gap_s(times)
    assert gap == pytest.approx(2.1)
    assert codes(gap_warnings({"sampler": (gap, 0.1)})) == {"sampling_gap"}
    assert gap_warnings({"sampler": (1.0, 0.1), "power polling": (None, 0.01)}) == []


# -- host contention (RAPL is host-wide) --------------------------------------------------

class Counters:
    """Synthetic /proc/stat busy time and run-tree CPU time, advanced by the test."""

    def __init__(self):
        self.host = self.own = 0.0

    def advance(self, own_s, other_s):
        self.own += own_s
        self.host += own_s + other_s


def test_host_contention_is_host_busy_time_minus_the_runs_own():
    c = Counters()
    meter = HostCpuMeter(host_busy=lambda: c.host, own=lambda: c.own)
    meter.start()
    c.advance(own_s=9.0, other_s=4.5)  # a 10 s window: the run used 0.9 core, others 0.45
    other = meter.stop()
    assert other == pytest.approx(4.5)
    assert host_contention_warnings(other, 10.0) == [
        "host_contention: other processes used 0.45 core-equivalents (4.5 CPU-s in 10.0 s)"]


def test_quiet_host_and_unreadable_counters_stay_quiet():
    assert HOST_CONTENTION_CORES == 0.10
    c = Counters()
    meter = HostCpuMeter(host_busy=lambda: c.host, own=lambda: c.own)
    meter.start()
    c.advance(own_s=9.0, other_s=0.5)  # daemons: 0.05 core over 10 s
    assert host_contention_warnings(meter.stop(), 10.0) == []
    meter.start()
    c.advance(own_s=2.0, other_s=-0.02)  # jiffy rounding: never a negative share
    assert meter.stop() == 0.0

    def unreadable():
        raise OSError("no /proc/stat")

    meter = HostCpuMeter(host_busy=unreadable, own=lambda: 0.0)
    meter.start()
    assert meter.stop() is None and host_contention_warnings(None, 10.0) == []


def test_host_busy_time_reads_the_aggregate_proc_stat_line(tmp_path):
    import os

    hz = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text(f"cpu  {hz * 10} {hz} {hz * 3} {hz * 500} {hz * 7} 0 {hz} {hz * 9} 0 0\n"
                    "cpu0 1 2 3 4 5 6 7 8 9 10\n")
    assert host_busy_s(stat) == pytest.approx(15.0)  # idle, iowait and steal left out
    stat.write_text("intr 1 2 3\n")
    with pytest.raises(ValueError):
        host_busy_s(stat)


def test_every_code_is_explained():
    assert all(isinstance(v, str) and v for v in CODES.values())


# -- thermal stabilisation under load --------------------------------------------------------
# The harness end to end (a fake GPU with a thermal model): test_plateau_under_load.py.

class ScriptedClock:
    """Time advances only when a (scripted) pass runs: the loop runs instantly."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class ScriptedLoad:
    """Passes of pass_s each; the sampler's 0.1 s samples of a GPU that heats under load
    as `temp(t)` / `power(t)` over time since the first pass."""

    def __init__(self, clock, temp, power, pass_s=1.0):
        self.clock, self.temp, self.power, self.pass_s = clock, temp, power, pass_s
        self.samples, self.passes = [], 0

    def run_pass(self):
        self.passes += 1
        end = self.clock.t + self.pass_s
        while self.clock.t < end - 1e-9:
            self.clock.t = round(self.clock.t + 0.1, 6)
            self.samples.append((self.clock.t, self.temp(self.clock.t), self.power(self.clock.t)))

    def read(self):
        return list(self.samples)


def heating(settle_s, temp_end=70.0):
    """Temperature and power ramping linearly from 40 °C / 100 W to a plateau at settle_s."""
    return (lambda t: 40.0 + (temp_end - 40.0) * min(t, settle_s) / settle_s,
            lambda t: 100.0 + 150.0 * min(t, settle_s) / settle_s)


def test_passes_run_until_temperature_and_power_plateau_under_load():
    clock = ScriptedClock()
    load = ScriptedLoad(clock, *heating(30.0))
    m = MeasurementConfig(stabilisation_max_s=120, stabilisation_window_s=5)
    st = stabilise_under_load(load.run_pass, load.read, m, clock=clock)
    assert st.reached is True and 33 <= st.waited_s <= 36  # 30 s ramp + most of a 5 s window
    assert st.passes == load.passes == round(st.waited_s)  # the GPU ran passes all along
    assert f"{st.passes} pass(es)" in st.detail and "under load" in st.detail


def test_gives_up_at_the_maximum_and_says_how_far_from_flat():
    clock = ScriptedClock()
    load = ScriptedLoad(clock, *heating(300.0, temp_end=190.0))
    m = MeasurementConfig(stabilisation_max_s=20, stabilisation_window_s=5)
    st = stabilise_under_load(load.run_pass, load.read, m, clock=clock)
    assert st.reached is False and 20 <= st.waited_s <= 21 and "still moving" in st.detail
    assert "±2.5 °C" in st.detail and "tolerance 1 °C, 10 W" in st.detail  # 0.5 °C/s over 5 s
    assert codes(window_warnings(**{**BASE, "stabilised": st.reached, "stabilisation_detail": st.detail})) \
        == {"not_stabilised"}


def test_a_long_pass_overshoots_the_maximum_by_at_most_itself():
    clock = ScriptedClock()
    load = ScriptedLoad(clock, *heating(300.0, temp_end=190.0), pass_s=8.0)
    st = stabilise_under_load(load.run_pass, load.read, MeasurementConfig(stabilisation_max_s=20), clock=clock)
    assert st.reached is False and st.passes == 3 and st.waited_s == pytest.approx(24.0)


def test_power_swinging_within_each_pass_is_no_trend():
    # instantaneous power alternates prefill/decode (+-60 W) every sample at a flat mean
    clock = ScriptedClock()
    load = ScriptedLoad(clock, lambda t: 60.0, lambda t: 300.0 + (60.0 if round(t * 10) % 2 else -60.0))
    st = stabilise_under_load(load.run_pass, load.read, MeasurementConfig(stabilisation_window_s=5), clock=clock)
    assert st.reached is True and st.waited_s == pytest.approx(6.0)  # first sample 0.1 s in: 6th pass


def test_minimum_wait_is_respected_zero_disables_and_no_readings_stop():
    clock = ScriptedClock()
    load = ScriptedLoad(clock, lambda t: 50.0, lambda t: 200.0)
    m = MeasurementConfig(stabilisation_max_s=60, stabilisation_min_s=12, stabilisation_window_s=2)
    assert stabilise_under_load(load.run_pass, load.read, m, clock=clock).waited_s >= 12
    st = stabilise_under_load(load.run_pass, load.read, MeasurementConfig(stabilisation_max_s=0), clock=clock)
    assert st.reached is None and st.waited_s == 0 and st.passes == 0
    blind = ScriptedLoad(ScriptedClock(), lambda t: None, lambda t: None)
    st = stabilise_under_load(blind.run_pass, blind.read, MeasurementConfig(), clock=blind.clock)
    assert st.reached is None and "no temperature" in st.detail and st.passes == 5  # one window of passes


def test_spread_needs_a_whole_window_of_samples():
    samples = [(t / 10, 60.0, 300.0) for t in range(31)]  # 0..3 s
    assert spread(samples, now=3.0, window_s=5.0) is None
    s = spread(samples, now=3.0, window_s=2.0)
    assert s.temperature_c == 0.0 and s.power_w == 0.0


# -- steady state ----------------------------------------------------------------------------

def continuous_batching(n_requests=40, cap=4, tokens=lambda i: 20 + (7 * i) % 16, step=0.01):
    """Records as an engine running `cap` requests at once would produce; requests
    of different lengths, so they finish and are replaced at different steps."""
    running, queue, t = {}, list(range(n_requests)), 0.0
    times = {i: [] for i in range(n_requests)}
    while queue or running:
        while queue and len(running) < cap:
            running[queue.pop(0)] = 0
        t += step
        for i in list(running):
            times[i].append(t)
            running[i] += 1
            if running[i] == tokens(i):
                del running[i]
    return [RequestRecord(input_tokens=3, submitted_s=0.0, token_times_s=times[i], arrival_s=0.0)
            for i in range(n_requests)]


def span(first, last, n=5):
    return RequestRecord(input_tokens=3, submitted_s=0.0, arrival_s=0.0,
                         token_times_s=[first + (last - first) * k / (n - 1) for k in range(n)])


def issue_example():
    """Issue 18: 3 short requests and a straggler in flight at 0-1 s (4 at once), 3 more at
    11-12 s, the straggler alone in between (to 20 s). The peak-based window called 0-12 s
    "steady at concurrency 4"; requests in flight over it average 1.5."""
    return [span(0, 1), span(0, 1), span(0, 1), span(0, 20), span(11, 12), span(11, 12), span(11, 12)]


def test_issue_example_has_no_steady_state_at_its_peak():
    recs = issue_example()
    assert mean_in_flight([(r.token_times_s[0], r.token_times_s[-1]) for r in recs], 0, 12) == pytest.approx(1.5)
    at4 = steady_state_window(recs, concurrency=4)  # 7 requests: not more than 2 x 4
    assert isinstance(at4, NoSteadyState) and "not more than 2 x 4" in at4.reason
    at3 = steady_state_window(recs, concurrency=3)  # 3rd first token (0 s) to 4th completion (12 s)
    assert isinstance(at3, NoSteadyState) and at3.mean_concurrency == pytest.approx(1.5)
    assert "1.50 requests in flight on average" in at3.reason and "80% of the configured 3" in at3.reason


def test_steady_state_runs_from_the_bth_first_token_to_the_n_minus_bth_completion():
    recs = continuous_batching()
    st = steady_state_window(recs, concurrency=4, min_duration_s=0.01)
    assert isinstance(st, SteadyState) and st.concurrency == 4
    assert st.start_s == sorted(r.token_times_s[0] for r in recs)[3]
    assert st.end_s == sorted(r.token_times_s[-1] for r in recs)[40 - 4 - 1]
    assert 3.8 < st.mean_concurrency <= 4  # the engine held its 4
    grid = [st.start_s + k * (st.end_s - st.start_s) / 500 for k in range(501)]
    assert sum(in_flight(recs, t) == 4 for t in grid) / len(grid) > 0.8  # 3 only at hand-overs
    last_token = max(r.token_times_s[-1] for r in recs)
    assert st.end_s < last_token  # the drain is left out
    assert st.output_tokens == sum(1 for r in recs for t in r.token_times_s if st.start_s < t <= st.end_s)
    assert isinstance(steady_state_window(recs[:8], concurrency=4), NoSteadyState)  # N = 2B


def test_an_engine_that_cannot_hold_the_configured_concurrency_has_no_steady_state():
    recs = continuous_batching(cap=2)  # configured 4, but only 2 fit (e.g. a small KV cache)
    st = steady_state_window(recs, concurrency=4, min_duration_s=0.01)
    assert isinstance(st, NoSteadyState) and st.mean_concurrency == pytest.approx(2.0, abs=0.1)
    short = steady_state_window(continuous_batching(tokens=lambda i: 2), concurrency=4)
    assert isinstance(short, NoSteadyState) and "under 0.5 s" in short.reason


def in_flight(records, t):
    return sum(1 for r in records if r.token_times_s[0] <= t <= r.token_times_s[-1])


def test_steady_metrics_are_reported_beside_whole_window():
    recs = continuous_batching()
    st = steady_state_window(recs, concurrency=4, min_duration_s=0.01)
    m = compute_metrics(recs, EnergyReading(duration_s=0.3, energy_j=30.0), model_load_s=0,
                        peak_memory_mb=None, n_parameters=10, baseline_power_w=None, n_passes=2,
                        steady=st, steady_energy_j=12.0)
    assert m.n_passes == 2 and m.energy_per_request_j == pytest.approx(30.0 / 40)
    assert m.energy_per_total_token_j == pytest.approx(30.0 / (m.input_tokens + m.output_tokens))
    assert m.energy_per_flop_j == pytest.approx(30.0 / m.flops_estimate)
    assert m.steady_state_concurrency == 4
    assert m.steady_state_energy_per_output_token_j == pytest.approx(12.0 / st.output_tokens)
    assert m.steady_state_output_tokens_per_s == pytest.approx(st.output_tokens / st.duration_s)


# -- baseline reuse ---------------------------------------------------------------------------

def test_baseline_is_reused_only_when_fresh_and_from_the_same_gpus(monkeypatch):
    src = "nvml_total_energy_counter"
    b = Baseline(power_w=61.5, power_per_device_w={"GPU-a": 61.5}, source=src, measured_at_unix=time.time() - 30,
                 devices=["GPU-a"], reused=False)
    monkeypatch.setenv(contract.ENV_BASELINE, b.model_dump_json())
    reuse = MeasurementConfig(baseline_reuse_s=600)
    got = reusable_baseline(reuse, ["GPU-a"], src)
    assert got.reused is True and got.power_w == 61.5
    assert reusable_baseline(MeasurementConfig(baseline_reuse_s=10), ["GPU-a"], src) is None  # stale
    assert reusable_baseline(reuse, ["GPU-b"], src) is None  # other device
    assert reusable_baseline(MeasurementConfig(), ["GPU-a"], src) is None  # reuse off
    monkeypatch.setenv(contract.ENV_BASELINE, json.dumps({"nonsense": 1}))
    assert reusable_baseline(reuse, ["GPU-a"], src) is None
