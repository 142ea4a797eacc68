"""The thermal plateau is reached under the workload, and the measured window opens on it.

The harness runs end to end (run_experiment: warm-up, stabilisation, window, result) on
a fake GPU with a first-order thermal model (FakeThermalLoad, tests/support/fakes.py):
under load its temperature approaches t_idle + k * P with time constant tau, idle it
cools back. A fake continuous-batching backend holds the GPU under load while a pass
runs; its passes last PASS_S of real time (the model's clock is the harness's, so the
physics follows what the harness does). tau is a second (a real GPU's is tens of
seconds), so the test covers several time constants in seconds; the window's opening
(its sampler mark and the energy counter's start edge, which waits for a counter update:
up to 10 ms at the fake's idle power) costs the fake GPU a few tenths of a degree.
No NVML or GPU here.

Waiting for the plateau idle (the code before issue 18) lets the GPU cool for the whole
wait and opens the window near t_idle, 15 °C below the loaded plateau.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness import protocol
from llenergymeasure.backends.harness.energy import UnavailableMeter
from llenergymeasure.backends.registry import LoadedModel, RequestRecord
from tests.support.fakes import FakeGpu, FakeGpuInventory, FakeThermalLoad

PASS_S = 0.05  # one pass over the dataset, real time, GPU under load
N_PROMPTS, MAX_NUM_SEQS, N_TOKENS = 12, 4, 8


class FakeEngineBackend:
    """A fake continuous-batching engine (vLLM's shape: max_num_seqs in LoadedModel.extra)
    whose passes put the fake GPU under load for PASS_S each."""

    def __init__(self, load: FakeThermalLoad) -> None:
        self.gpu_load = load

    def load(self) -> LoadedModel:
        return LoadedModel(model_path="fake", n_parameters=1000, device="cuda:0", dtype="bfloat16",
                           extra={"max_num_seqs": MAX_NUM_SEQS})

    def prepare(self, prompts: list[str]) -> list[str]:
        return prompts

    def generate(self, prepared: list[str], max_batches: int | None = None) -> list[RequestRecord]:
        n = len(prepared) if max_batches is None else min(len(prepared), max_batches * MAX_NUM_SEQS)
        with self.gpu_load.running():
            start = time.perf_counter()
            time.sleep(PASS_S)  # the pass's work: the fake GPU is under load meanwhile
        # MAX_NUM_SEQS requests at a time, N_TOKENS steps each, spread over the pass
        rounds = -(-n // MAX_NUM_SEQS)
        step = PASS_S / (rounds * N_TOKENS)
        return [RequestRecord(input_tokens=8, submitted_s=start, token_ids=list(range(N_TOKENS)),
                              token_times_s=[start + ((i // MAX_NUM_SEQS) * N_TOKENS + k + 1) * step
                                             for k in range(N_TOKENS)])
                for i in range(n)]

    def synchronize(self) -> None:
        pass

    def run_warnings(self) -> list:
        return []


def gpu_physics(**over) -> FakeThermalLoad:
    """Loaded plateau 50 °C (35 + 0.05 °C/W x 300 W), tau 1 s."""
    return FakeThermalLoad(**{"t_idle_c": 35.0, "k_c_per_w": 0.05, "p_idle_w": 100.0, "p_load_w": 300.0,
                              "tau_s": 1.0, **over})


def run_on_fake_gpu(monkeypatch, tmp_path: Path, load: FakeThermalLoad, **measurement):
    gpu = FakeGpu("GPU-hot", load=load)
    inv = FakeGpuInventory([gpu])
    monkeypatch.setattr(protocol, "create_backend", lambda config: FakeEngineBackend(load))
    monkeypatch.setattr(protocol, "run_device", lambda device: "cuda:0")
    monkeypatch.setattr(protocol, "run_gpus", lambda device, n: (inv.visible()[:n], inv.discover(inv.visible()[:n])))
    monkeypatch.setattr(protocol, "snapshot", lambda gpus: {"gpus": [{"uuid": g.uuid} for g in gpus.devices]})
    monkeypatch.setattr(protocol, "select_cpu_meter", lambda: UnavailableMeter("no RAPL in this test"))
    cfg = ExperimentConfig(
        model="llem/tiny-llama", backend="vllm", device="cuda:0", n_prompts=N_PROMPTS, max_input_tokens=16,
        max_output_tokens=N_TOKENS, vllm={"max_num_seqs": MAX_NUM_SEQS},
        measurement={"warmup_batches": 1, "min_window_s": 0.5, "sample_interval_s": 0.05,
                     "stabilisation_window_s": 1.0, "stabilisation_max_s": 10, "stabilisation_tolerance_c": 0.5,
                     "stabilisation_tolerance_w": 10.0, **measurement})
    return protocol.run_experiment(cfg, tmp_path)


def test_the_window_opens_on_the_loaded_plateau_with_no_idle_gap(monkeypatch, tmp_path):
    load = gpu_physics()
    assert load.t_load_c == pytest.approx(50.0)
    result = run_on_fake_gpu(monkeypatch, tmp_path, load)

    window = load.passes[-result.metrics.n_passes:]  # warm-up, stabilising passes, then the window's
    before = load.passes[:-result.metrics.n_passes]
    opened_at = load.temperature_c(window[0][0])
    assert load.t_load_c - opened_at <= 2.0, f"window opened at {opened_at:.1f} °C, plateau {load.t_load_c} °C"
    # as the sampler saw it: its first sample of the window
    rows = [r for r in pq.read_table(tmp_path / contract.TIMESERIES_FILE).to_pylist()
            if r["phase"] == "window" and r["device"] == "GPU-hot"]
    assert load.t_load_c - rows[0]["temperature_c"] <= 2.0
    # no idle gap: the first measured pass follows the last stabilising one at once
    assert window[0][0] - before[-1][1] < 0.25
    # the plateau was reached under load, and the result says after how long and how many passes
    st = result.stabilisation
    assert st.reached is True and result.phases.stabilisation_s == st.waited_s
    assert len(before) >= 10 and f"{len(before) - 1} pass(es)" in st.detail  # minus the warm-up
    assert st.waited_s >= 2 * load.tau_s  # it took the heating (about 3 tau), not a flat idle reading
    assert not any(w.startswith("not_stabilised") for w in result.warnings)
    # the steady state is tied to the engine's max_num_seqs, and a 50 ms pass has none worth the name
    assert result.steady_state.configured_concurrency == MAX_NUM_SEQS
    assert "under 0.5 s" in result.steady_state.reason and result.metrics.steady_state_energy_j is None


def test_no_plateau_within_the_maximum_is_warned_with_the_figures(monkeypatch, tmp_path):
    # a GPU that heats far slower than the maximum wait: gives up, the window still opens under load
    load = gpu_physics(k_c_per_w=0.2, tau_s=5.0)  # 60 °C to climb at 12 °C/s at first, 9 after 1.5 s
    result = run_on_fake_gpu(monkeypatch, tmp_path, load, stabilisation_max_s=1.5)
    st = result.stabilisation
    assert st.reached is False and 1.5 <= st.waited_s < 1.5 + 0.5
    warning = next(w for w in result.warnings if w.startswith("not_stabilised"))
    assert "still moving" in warning and "°C" in warning and "pass(es) under load" in warning
