"""`gpu:` settings on the host (orchestrator/execution/gpu_levers.py), with the fake GPU
control of tests/support/fakes.py (this machine has no GPU): applied to exactly a run's
GPUs, all or none, restored after success, failure and Ctrl-C, and after SIGKILL by the
next llem start; refused without permission before anything runs; values checked
against each GPU's constraints at validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.orchestrator.errors import Failure, UserError
from llenergymeasure.orchestrator.execution import gpu_control, gpu_levers
from llenergymeasure.orchestrator.execution.gpu_control import ControlUnavailable, LeverState
from llenergymeasure.orchestrator.execution.gpu_levers import RestoreRecord, RunLevers, record_path
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.execution.parallel import ParallelRunner
from llenergymeasure.orchestrator.execution.runners.base import Runner, RunJob
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.plan import order_runs
from llenergymeasure.orchestrator.study.preflight import Placement
from tests.execution.test_gpu_slots import FakeHostGpus
from tests.support import faultkit as fk
from tests.support.fakes import NO_PERMISSION, FakeGpuControl, fake_gpu_state
from tests.support.helpers import REPO, write

CAP = {"power_limit_w": 250.0, "sm_clocks_mhz": [1200, 1500]}


@pytest.fixture
def control(monkeypatch, tmp_path) -> FakeGpuControl:
    """The host's GPU control is a fake with two GPUs at 700 W, clocks unlocked; the
    lock directory is this test's own."""
    fake = FakeGpuControl()
    monkeypatch.setattr(gpu_control, "open_control", lambda: fake)
    monkeypatch.setenv("LLEM_LOCK_DIR", str(tmp_path / "locks"))
    return fake


def config(**gpu: object) -> ExperimentConfig:
    return ExperimentConfig(model="llem/tiny-llama", device="cuda", gpu=gpu or CAP)


class WatchingRunner(Runner):
    """A fake runner (named so): instead of a run, it notes what the GPUs had while the
    run would go, then succeeds, fails, raises or is interrupted as told."""

    name = "fake"

    def __init__(self, control: FakeGpuControl, gpus: list[str], then: str = "done") -> None:
        self.control, self.gpus, self.then = control, gpus, then
        self.seen: list[dict[str, dict]] = []

    def describe(self) -> str:
        return "fake"

    def resolve_device(self, spec: str) -> str:
        return "cuda:0"

    def prepare(self, study, notify, build=True) -> None:
        pass

    def gpu_uuids(self, config) -> list[str]:
        return list(self.gpus)

    def execute(self, job: RunJob) -> RunOutcome:
        self.seen.append({u: dict(self.control.gpu(u)) for u in self.control.uuids()})
        self.records_during = sorted(p.name for p in (Path(os.environ["LLEM_LOCK_DIR"])).glob("gpu-settings-*"))
        if self.then == "raise":
            raise RuntimeError("the runner broke")
        if self.then == "interrupt":
            raise KeyboardInterrupt()
        return RunOutcome(self.then, 0 if self.then == "done" else 1)


def job(tmp_path: Path, cfg: ExperimentConfig | None = None, gpus: tuple[str, ...] = ()) -> RunJob:
    return RunJob(cfg or config(), tmp_path / "run", gpus=gpus)


def untouched(control: FakeGpuControl, uuid: str) -> bool:
    g = control.gpu(uuid)
    return g["power_limit_w"] == 700.0 and g["sm_locked"] is None and g["memory_locked"] is None


# -- the settings ---------------------------------------------------------------------


def test_gpu_section_is_strict_bounded_and_hashes_one_spelling_once():
    a = ExperimentConfig(model="m", gpu={"sm_clocks_mhz": 1500})
    b = ExperimentConfig(model="m", gpu={"sm_clocks_mhz": [1500, 1500]})
    assert a.gpu.sm_clocks_mhz == [1500, 1500] and a.config_hash() == b.config_hash()
    assert ExperimentConfig(model="m", gpu={}).config_hash() == ExperimentConfig(model="m").config_hash()
    assert ExperimentConfig(model="m", gpu={"power_limit_w": 250}).config_hash() != a.config_hash()
    for bad, words in [({"power_limit_w": True}, "power_limit_w"), ({"power_limit_w": 1e9}, "power_limit_w"),
                       ({"sm_clocks_mhz": [1500, 1200]}, "min above max"), ({"sm_clocks_mhz": [1, 2, 3]}, "[min, max]"),
                       ({"memory_clocks_mhz": 10**9}, "memory_clocks_mhz"), ({"power_cap": 200}, "power_cap")]:
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
            ExperimentConfig(model="m", gpu=bad)
    with pytest.raises(ValueError, match="device is cpu"):
        ExperimentConfig(model="m", device="cpu", gpu={"power_limit_w": 200})


def test_gpu_settings_sweep_like_any_other(tmp_path):
    study = load_study(write(tmp_path / "s.yaml", """
model: llem/tiny-llama
device: cuda
sweep:
  gpu.power_limit_w: [200, 300]
  gpu: [{sm_clocks_mhz: 1200}, {sm_clocks_mhz: [1200, 1980], persistence_mode: true}]
"""))
    got = [(e.config.gpu.power_limit_w, e.config.gpu.sm_clocks_mhz, e.config.gpu.persistence_mode)
           for e in study.experiments]
    assert got == [(200.0, [1200, 1200], None), (200.0, [1200, 1980], True),
                   (300.0, [1200, 1200], None), (300.0, [1200, 1980], True)]
    assert len({e.id for e in study.experiments}) == 4 and "gpu.power_limit_w=200" in study.experiments[0].label


# -- applied to exactly the run's GPUs, restored whatever happens ----------------------


@pytest.mark.parametrize("then", ["done", "failed", "raise", "interrupt"])
def test_applied_to_the_runs_gpus_only_and_restored_after_success_failure_and_ctrl_c(control, tmp_path, then):
    runner = WatchingRunner(control, ["GPU-fake-1"], then)
    if then in ("raise", "interrupt"):
        with pytest.raises(RuntimeError if then == "raise" else KeyboardInterrupt):
            gpu_levers.execute(runner, job(tmp_path))
    else:
        assert gpu_levers.execute(runner, job(tmp_path)).state == then
    during = runner.seen[0]
    assert during["GPU-fake-1"]["power_limit_w"] == 250.0 and during["GPU-fake-1"]["sm_locked"] == [1200, 1500]
    assert during["GPU-fake-0"]["power_limit_w"] == 700.0 and during["GPU-fake-0"]["sm_locked"] is None
    assert runner.records_during == ["gpu-settings-GPU-fake-1.json"]  # the restore record, while it ran
    assert untouched(control, "GPU-fake-1") and untouched(control, "GPU-fake-0")
    assert control.changes("GPU-fake-0") == []
    assert not list((tmp_path / "locks").glob("gpu-settings-*"))  # put back: no record left


def test_a_run_without_gpu_settings_changes_nothing(control, tmp_path):
    runner = WatchingRunner(control, ["GPU-fake-0"])
    plain = ExperimentConfig(model="m", device="cuda")
    assert gpu_levers.execute(runner, RunJob(plain, tmp_path / "run")).state == "done"
    assert control.changes() == []


def test_the_record_is_written_before_anything_changes(control, tmp_path):
    seen = []
    original = control.set_power_limit_w

    def set_power(uuid: str, watts: float) -> None:
        seen.append(json.loads(record_path(uuid).read_text()))
        original(uuid, watts)

    control.set_power_limit_w = set_power
    RunLevers(control, config().gpu, ["GPU-fake-0"]).apply()
    record = RestoreRecord.model_validate(seen[0])
    assert record.previous == LeverState(power_limit_w=700.0, persistence_mode=True)
    assert record.owner_pid == os.getpid() and record.changes == ["power_limit_w", "sm_clocks_mhz"]


def test_never_half_applied_a_refused_second_setting_undoes_the_first(control, tmp_path):
    control.gpus["GPU-fake-0"]["refuse"] = ["gpu.sm_clocks_mhz"]
    out = gpu_levers.execute(WatchingRunner(control, ["GPU-fake-0"]), job(tmp_path))
    assert out.state == "failed" and "gpu.sm_clocks_mhz on GPU GPU-fake-0: NVML: Not Supported" in out.error
    assert [c[0] for c in control.changes()] == ["set_power_limit_w", "set_power_limit_w"]  # set, then put back
    assert untouched(control, "GPU-fake-0") and (tmp_path / "run" / "error.json").exists()
    assert not list((tmp_path / "locks").glob("gpu-settings-*"))


def test_parallel_runs_get_their_own_gpus_settings(control, tmp_path):
    study = load_study(write(tmp_path / "p.yaml", """
model: llem/tiny-llama
device: cuda
sweep: {gpu.power_limit_w: [250, 300]}
execution: {n_cycles: 1, parallel_gpus: 2}
"""))
    inner = WatchingRunner(control, [], "failed")  # no result.json: recorded as failed, which is not the point
    runner = ParallelRunner(inner, 2, FakeHostGpus(2), study, gpus_per_run=1)
    plan = order_runs(2, 1, "sequential", 0)
    (tmp_path / "s").mkdir()
    manifest = Manifest.create(tmp_path / "s", study, plan, runner.name)
    runner.run_whole(manifest, [p.run_id for p in plan], print)
    placed = {r.run_id: r.gpu_uuids[0] for r in manifest.runs}
    limits = {uuid: w for uuid, w in ((c[1], c[2]) for c in control.changes() if c[0] == "set_power_limit_w")
              if w != 700.0}
    assert limits == {placed["e01-c1"]: 250.0, placed["e02-c1"]: 300.0}
    assert untouched(control, "GPU-fake-0") and untouched(control, "GPU-fake-1")


def test_a_gpu_that_cannot_be_put_back_keeps_its_record_and_stops_the_study(control, tmp_path):
    levers = RunLevers(control, config().gpu, ["GPU-fake-0"])
    levers.apply()
    control.gpus["GPU-fake-0"]["deny"] = ["gpu.power_limit_w"]
    with pytest.raises(Failure, match="could not put back .*GPU-fake-0.*the next llem start retries"):
        levers.restore()
    assert record_path("GPU-fake-0").exists()


# -- a dead owner's record: restored at the next start ------------------------------


def dead_owner_record(control: FakeGpuControl, uuid: str = "GPU-fake-0") -> Path:
    """GPU capped at 250 W by a llem that is gone (a pid whose start time is not its own:
    what a dead owner's reused pid looks like)."""
    control.set_power_limit_w(uuid, 250.0)
    path = record_path(uuid)
    path.write_text(RestoreRecord(uuid=uuid, name="FakeGPU H200", host=os.uname().nodename, owner_pid=os.getppid(),
                                  owner_started="12.00", started_at="2026-01-01T00:00:00Z", run_dir=None,
                                  previous=LeverState(power_limit_w=700.0, persistence_mode=True),
                                  changes=["power_limit_w"], requested={"power_limit_w": 250.0}).model_dump_json())
    return path


def test_next_start_restores_a_dead_owners_gpu_and_says_so(control, tmp_path):
    path = dead_owner_record(control)
    said: list[str] = []
    assert gpu_levers.restore_orphans(said.append)
    assert control.gpu("GPU-fake-0")["power_limit_w"] == 700.0 and not path.exists()
    assert said == [f"restored GPU GPU-fake-0 (FakeGPU H200): power limit 700 W; llem pid {os.getppid()} changed "
                    "it at 2026-01-01T00:00:00Z and did not put it back"]
    assert gpu_levers.restore_orphans(said.append) == []  # nothing left


def test_a_live_owners_record_is_left_alone(control, tmp_path):
    RunLevers(control, config().gpu, ["GPU-fake-0"]).apply()  # this process: alive
    assert gpu_levers.restore_orphans(print) == [] and control.gpu("GPU-fake-0")["power_limit_w"] == 250.0


def test_a_run_restores_a_dead_owners_record_before_taking_the_previous_values(control, tmp_path):
    dead_owner_record(control)
    runner = WatchingRunner(control, ["GPU-fake-0"])
    gpu_levers.execute(runner, job(tmp_path, config(power_limit_w=300)))
    assert control.gpu("GPU-fake-0")["power_limit_w"] == 700.0  # not 250: the dead owner's cap was not "previous"


def test_without_nvml_the_records_stay_and_it_says_why(control, monkeypatch, tmp_path):
    path = dead_owner_record(control)

    def no_nvml():
        raise ControlUnavailable("NVML is not available (libnvidia-ml.so.1: not found)")

    said: list[str] = []
    assert gpu_levers.restore_orphans(said.append, opener=no_nvml) == []
    assert path.exists() and "cannot be restored here: NVML is not available" in said[0]


# -- before the study: values and permission ---------------------------------------


def levered_study(tmp_path: Path, gpu: str, device: str = "cuda") -> object:
    return load_study(write(tmp_path / "s.yaml", f"model: llem/tiny-llama\ndevice: {device}\ngpu: {gpu}\n"))


@pytest.mark.parametrize("gpu, words", [
    ("{power_limit_w: 900}", "gpu.power_limit_w: 900 W is outside what GPU GPU-fake-0 (FakeGPU H200) allows: "
                             "200 to 700 W"),
    ("{sm_clocks_mhz: [100, 1500]}", "gpu.sm_clocks_mhz: [100, 1500] MHz is outside the SM clocks GPU GPU-fake-0 "
                                     "(FakeGPU H200) supports: 345 to 1980 MHz"),
    ("{memory_clocks_mhz: 9000}", "supports: 1593 to 3201 MHz"),
])
def test_out_of_range_values_are_refused_at_validation_with_the_range(control, tmp_path, gpu, words):
    study = levered_study(tmp_path, gpu)
    runner = WatchingRunner(control, ["GPU-fake-0"])
    with pytest.raises(UserError, match="experiment: ") as e:
        gpu_levers.check_levers(study, runner, {1: Placement("cuda:0")}, strict=True, notify=print)
    assert words in str(e.value) and control.changes() == []
    placements = {1: Placement("cuda:0")}  # a dry run: the plan still shows, with the problem
    gpu_levers.check_levers(study, runner, placements, strict=False, notify=print)
    assert words in placements[1].problem


def test_no_gpu_control_here_refuses_with_the_reason(tmp_path):
    def no_nvml():
        raise ControlUnavailable("NVML is not available (libnvidia-ml.so.1: cannot open shared object file)")

    study = levered_study(tmp_path, "{power_limit_w: 250}", device="auto")
    with pytest.raises(UserError, match="gpu: settings need an NVIDIA GPU whose settings NVML can change on this "
                                        "host \\(NVML is not available"):
        gpu_levers.check_levers(study, WatchingRunner(None, []), {1: Placement("cpu")}, strict=True,  # type: ignore
                                notify=print, opener=no_nvml)


def test_without_permission_the_probe_refuses_naming_setting_gpu_and_nvml_error(control, tmp_path):
    control.gpus["GPU-fake-0"]["deny"] = ["gpu.power_limit_w"]
    study = levered_study(tmp_path, "{power_limit_w: 250}")
    plan = gpu_levers.check_levers(study, WatchingRunner(control, ["GPU-fake-0"]), {1: Placement("cuda:0")},
                                   strict=True, notify=print)
    with pytest.raises(UserError) as e:
        plan.probe()
    assert str(e.value).startswith(f"gpu.power_limit_w: cannot be changed on GPU GPU-fake-0 (FakeGPU H200): "
                                   f"NVML: {NO_PERMISSION}; changing GPU power limits and clocks needs root")
    assert "Nothing was changed and no run started" in str(e.value) and untouched(control, "GPU-fake-0")


# -- the real `llem` on a fake GPU host (tests/support/fake_gpu_llem.py) ------------------

STUDY = fk.TINY + """
gpu: {power_limit_w: 250, sm_clocks_mhz: [1200, 1500]}
execution: {n_cycles: 1}
"""


def fake_host(tmp_path: Path, **deny: list[str]) -> tuple[Path, dict[str, str]]:
    state = tmp_path / "gpus.json"
    gpus = [fake_gpu_state("GPU-fake-0"), fake_gpu_state("GPU-fake-1")]
    gpus[0]["deny"] = deny.get("deny", [])
    FakeGpuControl(gpus, state_path=state)
    return state, fk.env(LLEM_LOCK_DIR=str(tmp_path / "locks"))


def llem_on(state: Path, *args: str, environ: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.fake_gpu_llem", str(state), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    fk.STARTED.append(proc)
    return proc


@pytest.fixture
def _reap():
    yield
    fk.reap()


@pytest.mark.slow
def test_llem_run_caps_the_runs_gpu_and_puts_it_back(tmp_path, tiny_model, _reap):
    state, environ = fake_host(tmp_path)
    f = write(tmp_path / "cap.yaml", STUDY)
    code, text = fk.finish(llem_on(state, "run", str(f), "--runner", "local", "-o", str(tmp_path / "out"),
                                   environ=environ))
    assert code == 0, text[-3000:]
    host = FakeGpuControl(state_path=state)
    assert [c[0:3] for c in host.changes() if c[0] == "set_power_limit_w"] == [
        ["set_power_limit_w", "GPU-fake-0", 700.0],  # the permission probe writes what is there
        ["set_power_limit_w", "GPU-fake-0", 250.0], ["set_power_limit_w", "GPU-fake-0", 700.0]]
    assert host.changes("GPU-fake-1") == [] and untouched(host, "GPU-fake-0")
    assert "gpu: settings are applied to each run's GPUs" in text


@pytest.mark.slow
def test_without_permission_the_study_is_refused_before_anything_runs(tmp_path, tiny_model, _reap):
    state, environ = fake_host(tmp_path, deny=["gpu.sm_clocks_mhz"])
    f = write(tmp_path / "cap.yaml", STUDY)
    code, text = fk.finish(llem_on(state, "run", str(f), "--runner", "local", "-o", str(tmp_path / "out"),
                                   environ=environ))
    assert code == 2, text[-3000:]
    assert (f"error: gpu.sm_clocks_mhz: cannot be changed on GPU GPU-fake-0 (FakeGPU H200): NVML: {NO_PERMISSION}"
            in text)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no study directory
    host = FakeGpuControl(state_path=state)
    assert untouched(host, "GPU-fake-0") and not any(c[2:] == [250.0] for c in host.changes())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_killed_while_capped_then_restored(tmp_path, tiny_model, _reap, how):
    """SIGINT (Ctrl-C) unwinds through the restore; SIGKILL leaves the record, and the next
    llem start, whatever its command, restores the GPU and says so."""
    state, environ = fake_host(tmp_path)
    f = write(tmp_path / "cap.yaml", STUDY)
    proc = llem_on(state, "run", str(f), "--runner", "local", "-o", str(tmp_path / "out"),
                   environ={**environ, "LLEM_TEST_FAULT": "*:sleep=300"})
    host = FakeGpuControl(state_path=state)
    fk.wait_for("the GPU capped", lambda: host.gpu("GPU-fake-0")["power_limit_w"] == 250.0)
    study = fk.the_study(tmp_path / "out")
    fk.wait_hooked(study, "e01-c1")
    assert (tmp_path / "locks" / "gpu-settings-GPU-fake-0.json").exists()
    proc.send_signal(getattr(signal, how))
    code, text = fk.finish(proc)
    if how == "SIGINT":
        assert code == 130 and untouched(host, "GPU-fake-0"), text[-3000:]
        assert not (tmp_path / "locks" / "gpu-settings-GPU-fake-0.json").exists()
        return
    assert code == -signal.SIGKILL and host.gpu("GPU-fake-0")["power_limit_w"] == 250.0  # left capped
    for p in fk.run_processes(study):  # the orphaned run (it would stop itself, seeing its parent gone)
        p.kill()
    code, text = fk.finish(llem_on(state, "results", str(study), environ=environ))
    assert f"llem: restored GPU GPU-fake-0 (FakeGPU H200): power limit 700 W, SM clocks unlocked; llem pid " \
           f"{proc.pid} changed it at" in text
    assert untouched(host, "GPU-fake-0") and not (tmp_path / "locks" / "gpu-settings-GPU-fake-0.json").exists()


# -- benchmarks/gpu_check.py's power-limit sweep: a refusal is recorded, nothing run ----


@pytest.mark.parametrize("deny", [True, False])
def test_gpu_check_records_a_machine_that_refuses_setting_limits(tmp_path, monkeypatch, deny):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    monkeypatch.setenv("LLEM_LOCK_DIR", str(tmp_path / "locks"))
    if deny:
        fake = FakeGpuControl([{**fake_gpu_state("GPU-fake-0"), "deny": ["gpu.power_limit_w"]}])
        opener = lambda: fake  # noqa: E731
    else:
        def opener():
            raise ControlUnavailable("NVML is not available (NVML Shared Library Not Found)")
    (check,) = gpu_check.power_limit_sweep("unused", "GPU-fake-0", 1.0, tmp_path / "out", opener=opener)
    assert check.name == "power_limit_sweep" and check.status == "skipped"
    assert check.detail.startswith("this machine refuses setting power limits: ")
    assert (NO_PERMISSION if deny else "NVML is not available") in check.detail
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.slow
def test_a_study_with_gpu_settings_is_refused_on_a_machine_without_gpus_and_its_dry_run_works(tmp_path, tiny_model):
    from tests.support.helpers import llem

    f = write(tmp_path / "cap.yaml", fk.TINY + "gpu: {power_limit_w: 250}\n")
    r = llem("run", str(f), "--runner", "local", "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "gpu: settings need an NVIDIA GPU whose settings NVML can change" in r.stderr
    assert not (tmp_path / "out").exists()
    r = llem("run", str(f), "--runner", "local", "--dry-run", "-o", str(tmp_path / "out"))
    assert r.returncode == 0 and "gpu: settings need an NVIDIA GPU" in r.stdout + r.stderr
