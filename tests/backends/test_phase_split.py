"""Prefill against decode (`measurement.phase_split`, backends/harness/phase_split.py) and
the read-back of gpu: settings (backends/harness/readback.py): the harness end to end on
a fake GPU with known power (FakeThermalLoad; no GPU here), and the real tiny model on the
CPU, where token and time figures are real and energy ones null with the reason."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness import protocol
from llenergymeasure.backends.harness.energy import EnergyReading, UnavailableMeter
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.harness.phase_split import split
from llenergymeasure.backends.harness.readback import GpuReadback, mismatch_warnings, read_back
from llenergymeasure.backends.gpu_settings import GpuSettings
from llenergymeasure.backends.registry import LoadedModel, RequestRecord
from tests.support.fakes import FakeGpu, FakeGpuInventory, FakeThermalLoad

N_PROMPTS, BATCH, N_TOKENS, IN_TOKENS = 8, 4, 9, 16
FULL_S, PREFILL_S = 0.08, 0.02  # one pass: the fake GPU is under load this long


def records(n: int, tokens: int, start: float, span: float) -> list[RequestRecord]:
    return [RequestRecord(input_tokens=IN_TOKENS, submitted_s=start, token_ids=list(range(tokens)),
                          token_times_s=[start + span * (k + 1) / tokens for k in range(tokens)]) for _ in range(n)]


class FakeStaticBackend:
    """A fake static-batching engine (PyTorch's shape) whose passes hold the fake GPU under
    load: FULL_S for a full pass, PREFILL_S for a one-token (prefill-only) pass."""

    def __init__(self, load: FakeThermalLoad) -> None:
        self.gpu_load = load

    def load(self) -> LoadedModel:
        return LoadedModel(model_path="fake", n_parameters=1000, device="cuda:0", dtype="bfloat16")

    def prepare(self, prompts: list[str]) -> list[str]:
        return prompts

    def _pass(self, n: int, tokens: int, seconds: float) -> list[RequestRecord]:
        with self.gpu_load.running():
            start = time.perf_counter()
            time.sleep(seconds)
        return records(n, tokens, start, seconds)

    def generate(self, prepared: list[str], max_batches: int | None = None) -> list[RequestRecord]:
        n = len(prepared) if max_batches is None else min(len(prepared), max_batches * BATCH)
        return self._pass(n, N_TOKENS, FULL_S)

    def generate_prefill(self, prepared: list[str]) -> list[RequestRecord]:
        return self._pass(len(prepared), 1, PREFILL_S)

    def synchronize(self) -> None:
        pass

    def run_warnings(self) -> list:
        return []


def run_on_fake_gpu(monkeypatch, tmp_path: Path, device: FakeGpu, load: FakeThermalLoad, **over):
    inv = FakeGpuInventory([device])
    monkeypatch.setattr(protocol, "create_backend", lambda config: FakeStaticBackend(load))
    monkeypatch.setattr(protocol, "run_device", lambda device: "cuda:0")
    monkeypatch.setattr(protocol, "run_gpus", lambda device, n: (inv.visible()[:n], inv.discover(inv.visible()[:n])))
    monkeypatch.setattr(protocol, "snapshot", lambda gpus: {"gpus": [{"uuid": g.uuid} for g in gpus.devices]})
    monkeypatch.setattr(protocol, "select_cpu_meter", lambda: UnavailableMeter("no RAPL in this test"))
    cfg = ExperimentConfig(model="llem/tiny-llama", device="cuda:0", n_prompts=N_PROMPTS, max_input_tokens=IN_TOKENS,
                           max_output_tokens=N_TOKENS, pytorch={"batch_size": BATCH},
                           measurement={"warmup_batches": 0, "min_window_s": 1.0, "sample_interval_s": 0.05,
                                        "stabilisation_max_s": 0, "phase_split": True}, **over)
    return protocol.run_experiment(cfg, tmp_path)


def idle_free_load() -> FakeThermalLoad:
    """300 W under load, 0 W idle: energy is exactly the passes' (300 W x their time)."""
    return FakeThermalLoad(p_idle_w=0.0, p_load_w=300.0)


def test_split_on_a_fake_gpu_gives_the_energy_it_drew(monkeypatch, tmp_path):
    load = idle_free_load()
    result = run_on_fake_gpu(monkeypatch, tmp_path, FakeGpu("GPU-a", load=load), load)
    s = result.phase_split
    assert s is not None and s.energy_unavailable_reason is None
    assert s.full_passes == result.metrics.n_passes and s.prefill_passes >= 20  # 1 s of 20 ms passes (fewer on a busy host)
    # the energy the fake GPU drew: 300 W x the time each pass held it under load (0 W idle)
    full = load.passes[-(s.full_passes + s.prefill_passes):-s.prefill_passes]
    prefill = load.passes[-s.prefill_passes:]
    drawn_full = 300.0 * sum(b - a for a, b in full) / len(full)
    drawn_prefill = 300.0 * sum(b - a for a, b in prefill) / len(prefill)
    assert s.full_energy_per_pass_j == pytest.approx(drawn_full, rel=0.03)
    assert s.prefill_energy_per_pass_j == pytest.approx(drawn_prefill, rel=0.03)
    assert drawn_prefill < drawn_full / 2  # 20 ms against 80 ms passes (sleep overshoot aside)
    assert s.decode_tokens_per_pass == N_PROMPTS * (N_TOKENS - 1)
    assert s.input_tokens_per_pass == N_PROMPTS * IN_TOKENS
    assert s.prefill_energy_per_input_token_j == pytest.approx(s.prefill_energy_per_pass_j / (N_PROMPTS * IN_TOKENS))
    assert s.decode_energy_per_output_token_j == pytest.approx((drawn_full - drawn_prefill) / s.decode_tokens_per_pass,
                                                               rel=0.05)
    # the prefill-only window is in the timeseries under its own phase, after the full window
    rows = pq.read_table(tmp_path / contract.TIMESERIES_FILE).to_pylist()
    phases = [r["phase"] for r in rows]
    assert "prefill_window" in phases and phases.index("prefill_window") > len(phases) - 1 - phases[::-1].index("window")


def test_split_arithmetic():
    full = [records(4, 5, 0.0, 1.0) for _ in range(2)]  # 2 passes, 4 requests x 5 tokens
    pre = [records(4, 1, 0.0, 0.2) for _ in range(5)]
    s = split(full, EnergyReading(2.0, energy_j=100.0), pre, EnergyReading(1.0, energy_j=50.0), None)
    # per pass: full 50 J, prefill 10 J; decode tokens 4 x (5 - 1) = 16
    assert (s.full_energy_per_pass_j, s.prefill_energy_per_pass_j, s.decode_tokens_per_pass) == (50.0, 10.0, 16.0)
    assert s.decode_energy_per_output_token_j == pytest.approx(40.0 / 16)
    assert s.prefill_energy_per_input_token_j == pytest.approx(50.0 / (5 * 4 * IN_TOKENS))
    assert s.decode_time_per_output_token_s == pytest.approx((1.0 - 0.2) / 16)
    none = split(full, EnergyReading(2.0), pre, EnergyReading(1.0), "no energy source here")
    assert none.decode_energy_per_output_token_j is None and none.energy_unavailable_reason == "no energy source here"
    assert none.decode_time_per_output_token_s == pytest.approx((1.0 - 0.2) / 16)  # times stay real


def test_energy_delay_product_and_tokens_per_joule():
    recs = records(4, 5, 0.0, 1.0)  # E2E 1 s each
    for i, r in enumerate(recs):
        r.arrival_s = 0.0
        r.token_times_s = [t * (i + 1) for t in r.token_times_s]  # E2E 1, 2, 3, 4 s: mean 2.5 s
    m = compute_metrics(recs, EnergyReading(4.0, energy_j=80.0), model_load_s=0.0, peak_memory_mb=None,
                        n_parameters=10, baseline_power_w=None)
    assert m.energy_delay_product_js == pytest.approx(80.0 / 4 * 2.5)  # J per request x mean E2E s
    assert m.output_tokens_per_joule == pytest.approx(20 / 80.0)
    none = compute_metrics(recs, EnergyReading(4.0), model_load_s=0.0, peak_memory_mb=None, n_parameters=10,
                           baseline_power_w=None)
    assert none.energy_delay_product_js is None and none.output_tokens_per_joule is None


def test_continuous_batching_backends_refuse_the_split_with_the_reason():
    for backend in ("vllm", "tensorrt"):
        with pytest.raises(ValueError, match="continuous-batching engine runs one request's prefill in the same "
                                             "steps as others' decode"):
            ExperimentConfig(model="m", backend=backend, measurement={"phase_split": True})


# -- read-back of gpu: settings --------------------------------------------------------


def test_the_enforced_settings_are_recorded_and_a_mismatch_warned(monkeypatch, tmp_path):
    load = idle_free_load()
    gpu = FakeGpu("GPU-a", load=load, sm_clock=1410.0, mem_clock=2619.0, power_limit_w=300.0)
    result = run_on_fake_gpu(monkeypatch, tmp_path, gpu, load,
                             gpu={"power_limit_w": 250, "sm_clocks_mhz": [1200, 1500]})
    (rb,) = result.gpu_readback
    assert rb.uuid == "GPU-a" and rb.power_limit_w == 300.0  # what the driver enforced, not the 250 asked
    assert rb.sm_clock_mhz_median == 1410.0 and rb.memory_clock_mhz_median == 2619.0
    mismatch = [w for w in result.warnings if w.startswith("gpu_setting_mismatch")]
    assert mismatch == ["gpu_setting_mismatch: GPU-a: power limit 250 W requested, 300 W enforced"]  # clocks held


def test_mismatch_rules():
    rb = [GpuReadback(uuid="G", power_limit_w=250.4, sm_clock_mhz_median=1980.0, sm_clock_mhz_min=1900.0,
                      sm_clock_mhz_max=1980.0, memory_clock_mhz_median=None, memory_clock_mhz_min=None,
                      memory_clock_mhz_max=None)]
    want = GpuSettings(power_limit_w=250, sm_clocks_mhz=[1200, 1500], memory_clocks_mhz=2619)
    (w,) = mismatch_warnings(want, rb)  # power within NVML's rounding; memory unreadable: not claimed either way
    assert w.startswith("gpu_setting_mismatch: G: SM clocks locked to [1200, 1500] MHz, median 1980 MHz")
    assert mismatch_warnings(None, rb) == []
    assert read_back([], []) == []


@pytest.mark.slow
def test_phase_split_on_the_tiny_model_on_the_cpu(tmp_path, tiny_model):
    cfg = ExperimentConfig(model="llem/tiny-llama", device="cpu", n_prompts=4, max_input_tokens=16,
                           max_output_tokens=6, pytorch={"batch_size": 2},
                           measurement={"warmup_batches": 1, "min_window_s": 0.3, "phase_split": True})
    result = protocol.run_experiment(cfg, tmp_path)
    s = result.phase_split
    assert s.prefill_passes >= 1 and s.full_passes == result.metrics.n_passes
    assert s.decode_tokens_per_pass == 4 * 5 and s.input_tokens_per_pass > 0
    assert s.prefill_time_per_pass_s < s.full_time_per_pass_s  # one token costs less time than six
    assert s.decode_time_per_output_token_s > 0 and s.prefill_time_per_input_token_s > 0
    if result.metrics.energy_j is None:  # no readable RAPL (this machine): null, with the reason
        assert s.prefill_energy_per_input_token_j is None and s.decode_energy_per_output_token_j is None
        assert s.energy_unavailable_reason == result.energy_unavailable_reason
    assert result.gpu_readback == []
