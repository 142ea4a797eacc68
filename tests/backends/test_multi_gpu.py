"""A run spanning several GPUs (tensor/pipeline parallel) is measured on every GPU it
was given, by UUID: energy per device and in total, and the environment's GPU list
(which analysis counts as n_gpus for GPU-time cost). GPUs are FakeGpus in a
FakeGpuInventory (tests/support/fakes.py): no NVML or CUDA here."""

from __future__ import annotations

import sys

import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.energy import NvmlCounterMeter, measured, select_meter
from llenergymeasure.backends.harness.protocol import run_gpus
from llenergymeasure.backends.harness.sampler import Sampler
from llenergymeasure.backends.harness.validity import gpu_allocation_warnings, gpu_window_warnings
from tests.support.fakes import FakeGpu, FakeGpuInventory, fake_zeus_modules


class Clock:
    """Time moves only when the test moves it."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def tp2_config(device: str = "cuda:0") -> ExperimentConfig:
    return ExperimentConfig(model="llem/tiny-llama", backend="vllm", device=device,
                            vllm={"tensor_parallel_size": 2})


def inventory(clock: Clock, visible: list[str] | None = None) -> FakeGpuInventory:
    return FakeGpuInventory([FakeGpu("GPU-a", 100.0, clock=clock), FakeGpu("GPU-b", 150.0, clock=clock),
                             FakeGpu("GPU-c", 400.0, clock=clock)], visible=visible)


def codes(warnings: list[str]) -> set[str]:
    return {w.split(":", 1)[0] for w in warnings}


def test_tensor_parallel_two_measures_and_sums_both_gpus():
    clock = Clock()
    inv = inventory(clock)
    cfg = tp2_config()
    assert cfg.gpus_per_run == 2
    allocated, gpus = run_gpus("cuda:0", cfg.gpus_per_run, visible=inv.visible, discover=inv.discover)
    assert allocated == ["GPU-a", "GPU-b"] and [g.uuid for g in gpus.devices] == allocated

    meter = select_meter("cuda:0", gpus)
    assert isinstance(meter, NvmlCounterMeter)
    with measured(meter) as out:
        clock.t += 2.0
    reading = out[0]
    assert reading.per_device_j == pytest.approx({"GPU-a": 200.0, "GPU-b": 300.0})
    assert reading.energy_j == pytest.approx(500.0)  # not GPU-a's 200 J alone
    assert gpu_allocation_warnings(cfg.gpus_per_run, allocated, list(reading.per_device_j)) == []

    # n_gpus (analysis/tables.py: len(environment["gpus"])) counts both
    from llenergymeasure.backends.harness.environment import snapshot

    assert [g["uuid"] for g in snapshot(gpus)["gpus"]] == ["GPU-a", "GPU-b"]


def test_the_sampler_and_its_warnings_cover_every_gpu_of_the_run():
    clock = Clock()
    inv = inventory(clock)
    inv.gpus["GPU-b"].traces["throttle"] = ("sw_thermal",)
    _, gpus = run_gpus("cuda:0", 2, visible=inv.visible, discover=inv.discover)
    sampler = Sampler(gpus.devices, interval_s=0.1)  # not started: samples taken by mark()
    for _ in range(5):
        sampler.mark("window")
    devices = {r["device"] for r in sampler.phase_rows("window")}
    assert devices == {"process", "GPU-a", "GPU-b"}
    assert gpu_window_warnings(sampler.phase_rows("window")) == ["thermal_throttling: GPU-b: sw_thermal"]


def test_a_run_on_cuda_1_takes_the_gpus_after_it_and_zeus_is_told_their_indices(monkeypatch):
    clock = Clock()
    inv = inventory(clock)
    allocated, gpus = run_gpus("cuda:1", tp2_config("cuda:1").gpus_per_run, visible=inv.visible,
                               discover=inv.discover)
    assert allocated == ["GPU-b", "GPU-c"]
    calls: list = []
    for name, mod in fake_zeus_modules(lambda idx: {i: 10.0 * (i + 1) for i in idx}, calls).items():
        monkeypatch.setitem(sys.modules, name, mod)
    meter = select_meter("cuda:1", gpus, "zeus")
    assert meter.source == "zeus"
    assert calls[0] == ("init", [1, 2], [])  # CUDA indices of both GPUs, not [1]
    with measured(meter) as out:
        pass
    assert out[0].per_device_j == {"GPU-b": 20.0, "GPU-c": 30.0} and out[0].energy_j == 50.0


def test_fewer_gpus_visible_than_allocated_is_warned():
    # a runner pinned one GPU to a TP=2 run: measure what is there, and say so
    clock = Clock()
    inv = inventory(clock, visible=["GPU-a"])
    allocated, gpus = run_gpus("cuda:0", 2, visible=inv.visible, discover=inv.discover)
    assert allocated == ["GPU-a"]
    w = gpu_allocation_warnings(2, allocated, [g.uuid for g in gpus.devices])
    assert codes(w) == {"gpus_measured_mismatch"}
    assert "measured 1 GPU(s) (GPU-a) of the 2" in w[0]


def test_a_gpu_without_energy_is_a_mismatch():
    w = gpu_allocation_warnings(2, ["GPU-a", "GPU-b"], ["GPU-a"])
    assert codes(w) == {"gpus_measured_mismatch"}
    assert gpu_allocation_warnings(1, ["GPU-a"], ["GPU-a"]) == []


def test_a_cpu_run_opens_no_gpu():
    allocated, gpus = run_gpus("cpu", 1, visible=lambda: pytest.fail("CUDA asked on a CPU run"),
                               discover=lambda u: pytest.fail("NVML asked on a CPU run"))
    assert allocated == [] and gpus.devices == [] and gpus.unavailable_reason == "device is cpu"
