"""`execution.parallel_gpus`: real tiny-model runs through the real local runner, several
at once, each pinned to its own GPU of a fake host inventory (this machine has no GPU:
the runs execute on the CPU, and the UUIDs they were given are what the test checks)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.parallel import ParallelRunner, parallel_runner
from llenergymeasure.orchestrator.study.plan import order_runs
from llenergymeasure.orchestrator.execution.runners.local import LocalRunner
from llenergymeasure.orchestrator.study.load import load_study
from tests.support.helpers import write
from tests.execution.test_gpu_slots import FakeHostGpus

STUDY = """\
name: parallel
model: llem/tiny-llama
device: cpu
n_prompts: 2
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0.2}
sweep: {pytorch.batch_size: [1, 2]}
execution: {n_cycles: 2, parallel_gpus: 2}
"""


@pytest.mark.slow
def test_runs_overlap_on_disjoint_gpus(tmp_path, tiny_model):
    study = load_study(write(tmp_path / "p.yaml", STUDY))
    runner = ParallelRunner(LocalRunner(), 2, FakeHostGpus(2), study, gpus_per_run=1)
    plan = order_runs(len(study.experiments), 2, "interleaved", 0)
    (tmp_path / "s").mkdir()
    manifest = Manifest.create(tmp_path / "s", study, plan, runner.name)
    loop = runner.run_whole(manifest, [p.run_id for p in plan], print)
    assert loop.failed == []
    assert [r.state for r in manifest.runs] == ["done"] * 4
    spans = []
    for r in manifest.runs:
        result = json.loads((tmp_path / "s" / r.run_dir / "result.json").read_text())
        gpus = result["environment"]["env"]["CUDA_VISIBLE_DEVICES"]
        assert [gpus] == r.gpu_uuids
        spans.append((datetime.fromisoformat(result["started_at"]), datetime.fromisoformat(result["finished_at"]), gpus))
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, "no two runs ran at the same time"
    assert all(a[2] != b[2] for a, b in overlapping), "two runs at once on one GPU"
    # the printed summary and the report say the runs overlapped
    from llenergymeasure.orchestrator.analysis.concurrency import concurrency_note
    from llenergymeasure.orchestrator.analysis.report import render_report
    from llenergymeasure.orchestrator.analysis.results import open_study

    assert "runs executed concurrently on this host's GPUs (up to 2 at once" in concurrency_note(manifest)
    (tmp_path / "s" / "p.yaml").write_text(STUDY)
    html = render_report(open_study(tmp_path / "s"))
    assert "Runs executed concurrently on this host&#39;s GPUs (up to 2 at once" in html


def test_no_gpus_or_one_slot_keeps_the_plain_runner(tmp_path):
    study = load_study(write(tmp_path / "p.yaml", STUDY))
    notes: list[str] = []
    local = LocalRunner()
    assert parallel_runner(local, study, notes.append, host=FakeHostGpus(0)) is local
    assert "no GPU: runs stay sequential" in notes[0]
    assert isinstance(parallel_runner(local, study, notes.append, host=FakeHostGpus(2)), ParallelRunner)
    study.execution.parallel_gpus = 1
    assert parallel_runner(local, study, notes.append, host=FakeHostGpus(2)) is local


def _parallel_study(tmp_path, text: str, inner, gpus: int = 2):
    """A study directory planned for `text`, with a ParallelRunner over `inner` on a fake inventory."""
    study = load_study(write(tmp_path / "p.yaml", text))
    runner = ParallelRunner(inner, study.execution.parallel_gpus, FakeHostGpus(gpus), study, gpus_per_run=1)
    plan = order_runs(len(study.experiments), study.execution.n_cycles, study.execution.order, 0)
    (tmp_path / "s").mkdir()
    manifest = Manifest.create(tmp_path / "s", study, plan, runner.name)
    return runner, manifest, plan


@pytest.mark.slow
def test_fail_fast_starts_no_new_run_and_skips_the_rest(tmp_path, tiny_model, monkeypatch):
    from llenergymeasure.orchestrator.execution.loop import Policy

    monkeypatch.setenv("LLEM_TEST_FAULT", "e01-c1:crash")  # the harness's test hook: this run crashes at start
    runner, manifest, plan = _parallel_study(tmp_path, STUDY.replace("n_cycles: 2", "n_cycles: 3")
                                             .replace("[1, 2]", "[1, 2, 3]"), LocalRunner())
    loop = runner.run_whole(manifest, [p.run_id for p in plan], print, policy=Policy(fail_fast=True))
    states = {r.run_id: r.state for r in manifest.runs}
    assert states["e01-c1"] == "failed" and loop.failed == ["e01-c1"]
    assert states["e02-c1"] == "done"  # started beside it before the failure: allowed to finish
    assert sorted(s for r, s in states.items() if r not in ("e01-c1", "e02-c1")) == ["skipped"] * 7
    assert "fail-fast" in loop.stopped and manifest.status == "stopped"
    error = json.loads((tmp_path / "s" / "runs" / "e01-c1" / "error.json").read_text())
    assert "InjectedFault" in error["message"] + error.get("traceback", "")


SIGINT_SCRIPT = """
import sys
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.parallel import ParallelRunner
from llenergymeasure.orchestrator.study.plan import order_runs
from llenergymeasure.orchestrator.execution.runners.local import LocalRunner
from llenergymeasure.orchestrator.study.load import load_study
from tests.execution.test_gpu_slots import FakeHostGpus

study = load_study(sys.argv[1])
runner = ParallelRunner(LocalRunner(), 2, FakeHostGpus(2), study, gpus_per_run=1)
plan = order_runs(len(study.experiments), study.execution.n_cycles, "interleaved", 0)
manifest = Manifest.create(__import__("pathlib").Path(sys.argv[2]), study, plan, runner.name)
runner.run_whole(manifest, [p.run_id for p in plan], lambda m: print(m, flush=True))
"""


@pytest.mark.slow
def test_ctrl_c_stops_every_running_run_and_marks_them_interrupted(tmp_path, tiny_model):
    import os
    import signal
    import subprocess
    import sys

    from tests.support import faultkit as fk
    from tests.support.helpers import REPO

    f = write(tmp_path / "p.yaml", STUDY)
    (tmp_path / "s").mkdir()
    env = {**os.environ, "LLEM_TEST_FAULT": "*:sleep=300", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(f), str(tmp_path / "s")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for run_id in ("e01-c1", "e02-c1"):  # two runs at once, both asleep in the hook
            fk.wait_for(f"{run_id} in its hook", lambda: proc.poll() is not None or _hooked(tmp_path / "s", run_id),
                        timeout=300)
            assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert fk.run_processes(tmp_path / "s") == []  # both stopped, not orphaned
    manifest = Manifest.load(tmp_path / "s")
    states = sorted(r.state for r in manifest.runs)
    assert states == ["failed", "failed", "pending", "pending"], states
    assert manifest.status == "interrupted"
    for r in manifest.runs:
        if r.state == "failed":
            assert r.failure_kind == "interrupted" and "Ctrl-C" in r.error


def _hooked(study_dir, run_id) -> bool:
    try:
        return "TEST HOOK" in (study_dir / "runs" / run_id / "run.log").read_text()
    except OSError:
        return False


@pytest.mark.slow
def test_docker_runs_overlap_in_their_own_containers(tmp_path, docker_image, monkeypatch):
    from llenergymeasure.orchestrator.execution.runners.docker import DockerRunner
    from tests.support.helpers import DOCKER_ENV

    for k, v in DOCKER_ENV.items():
        monkeypatch.setenv(k, v)
    runner, manifest, plan = _parallel_study(tmp_path, STUDY.replace("n_cycles: 2", "n_cycles: 1"), DockerRunner())
    runner.prepare(runner.study, print)
    loop = runner.run_whole(manifest, [p.run_id for p in plan], print)
    assert loop.failed == [] and [r.state for r in manifest.runs] == ["done"] * 2
    spans, gpus = [], []
    for r in manifest.runs:
        result = json.loads((tmp_path / "s" / r.run_dir / "result.json").read_text())
        assert result["environment"]["image"]["id"] == runner.inner.images["pytorch"].id  # ran in the image
        spans.append((datetime.fromisoformat(result["started_at"]), datetime.fromisoformat(result["finished_at"])))
        gpus.append(tuple(r.gpu_uuids))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, "the two containers did not run at the same time"
    assert sorted(gpus) == [("GPU-fake-0",), ("GPU-fake-1",)]


def test_parallel_runs_lock_every_gpu_they_may_use():
    study = type("S", (), {"experiments": [], "execution": None})()
    runner = ParallelRunner(LocalRunner(), 2, FakeHostGpus(3), study)
    assert runner.lock_keys(study, {}) == ["gpu-GPU-fake-0", "gpu-GPU-fake-1", "gpu-GPU-fake-2"]


def test_a_tensor_parallel_run_needs_that_many_gpus(tmp_path):
    from llenergymeasure.backends.config import ExperimentConfig
    from llenergymeasure.orchestrator.execution.parallel import gpus_needed

    vllm = ExperimentConfig(model="m", backend="vllm", vllm={"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    assert gpus_needed(vllm, "cuda:0") == 4
    assert gpus_needed(vllm, "cpu") == 0
    assert gpus_needed(ExperimentConfig(model="m"), "cuda:0") == 1


def test_a_run_wider_than_the_host_is_refused_before_anything_starts(tmp_path):
    from llenergymeasure.orchestrator.errors import UserError

    study = load_study(write(tmp_path / "p.yaml", STUDY.replace("device: cpu", "device: cuda")
                             .replace("sweep: {pytorch.batch_size: [1, 2]}", "backend: vllm\nvllm: {tensor_parallel_size: 4}")))

    class FakeCudaLocal(LocalRunner):  # a named fake: this host's torch sees no CUDA device
        def resolve_device(self, spec: str) -> str:
            return "cuda:0"

    with pytest.raises(UserError, match="experiment 1 .* spans 4 GPUs .* this host has 2"):
        parallel_runner(FakeCudaLocal(), study, print, host=FakeHostGpus(2))


class _QuietProgress:
    def begin(self, todo, planned): ...

    def start(self, run, label): ...

    def tick(self, run_elapsed): ...

    def end(self, outcome, seconds): ...


@pytest.mark.slow
def test_runs_overlapping_on_the_host_are_marked_cpu_energy_shared_and_a_lone_run_is_not(tmp_path, tiny_model,
                                                                                         monkeypatch):
    """RAPL is host-wide: two runs at once each read the other's CPU work. Each run is
    registered on the host (orchestrator/execution/host_runs.py) and its result says so.
    RAPL is a fake powercap tree here (this machine has none), reached by the runs through
    the LLEM_TEST_POWERCAP_ROOT hook."""
    from llenergymeasure.backends import contract
    from llenergymeasure.orchestrator.execution.loop import Policy, run_plan
    from llenergymeasure.orchestrator.execution.outcome import load_result
    from tests.support.fakes import make_powercap_tree

    rapl = make_powercap_tree(tmp_path / "rapl", {"intel-rapl:0": {"name": "package-0", "energy_uj": 1_000_000}})
    monkeypatch.setenv(contract.ENV_TEST_POWERCAP_ROOT, str(rapl))
    monkeypatch.setenv("LLEM_LOCK_DIR", str(tmp_path / "locks"))  # this test's runs, no one else's
    text = STUDY.replace("n_cycles: 2", "n_cycles: 1").replace("min_window_s: 0.2", "min_window_s: 1.0")
    runner, manifest, plan = _parallel_study(tmp_path, text, LocalRunner())
    assert runner.run_whole(manifest, [p.run_id for p in plan], print).failed == []
    results = [load_result(manifest.run_dir(r.run_id)) for r in manifest.runs]
    assert all(r.metrics.cpu_energy_j is not None and r.cpu_energy.source == "rapl" for r in results)

    def shared(r) -> bool:
        return any(w.startswith("cpu_energy_shared:") for w in r.warnings)

    for r in results:
        # the other run's process lived during this one's window (its result's own life is
        # inside what the host registered, so an overlap seen here was seen there)
        overlapped = any(o.started_at < r.window_finished_at and o.finished_at > r.window_started_at
                         for o in results if o is not r)
        assert shared(r) or not overlapped, r.warnings
    assert any(shared(r) for r in results), "the two runs started together: at least one window saw the other"

    # one run alone, through the sequential study loop: nothing shared
    lone_study = load_study(write(tmp_path / "lone.yaml", text.replace("sweep: {pytorch.batch_size: [1, 2]}\n", "")
                                  .replace("parallel_gpus: 2", "parallel_gpus: 1")))
    lone_plan = order_runs(1, 1, "interleaved", 0)
    (tmp_path / "lone").mkdir()
    lone = Manifest.create(tmp_path / "lone", lone_study, lone_plan, "local")
    with LocalRunner() as local:
        run_plan(lone, lone_study, lone_plan, local, _QuietProgress(), Policy())
    alone = load_result(lone.run_dir(lone_plan[0].run_id))
    assert alone.metrics.cpu_energy_j is not None and not shared(alone), alone.warnings
