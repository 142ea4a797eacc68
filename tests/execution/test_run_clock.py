"""A run's clock starts once its runner is ready for it (issue 16): the local runner's
launcher imports torch and transformers once per study, before the first run is recorded
as started, so that time is the study's (its wall time) and not the first run's (whose
wall minus its measured phases is the per-run overhead)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.execution.loop import run_plan
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.execution.recording import Policy
from llenergymeasure.orchestrator.execution.runners.base import Runner, RunJob
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.plan import order_runs
from tests.support.helpers import write


class ReadyingRunner(Runner):
    """A fake runner (named so): notes each run's manifest state when it is asked to get
    ready for the run's experiment and when it executes the run; the run then fails (it
    writes no result), which is not the point."""

    name = "fake"

    def __init__(self) -> None:
        self.manifest: Manifest | None = None
        self.events: list[tuple[str, str, str | None]] = []  # (what, batch size, the run's state then)
        self.ready_at: list[str] = []

    def describe(self) -> str:
        return "fake"

    def resolve_device(self, spec: str) -> str:
        return "cpu"

    def prepare(self, study, notify, build=True) -> None:
        pass

    def gpu_uuids(self, config) -> list[str]:
        return []

    def _state(self) -> str | None:
        assert self.manifest is not None
        running = [r for r in self.manifest.runs if r.state == "running"]
        return running[0].run_id if running else None

    def ready_for(self, config) -> None:
        self.events.append(("ready", str(config.pytorch.batch_size), self._state()))
        self.ready_at.append(utc_now())

    def execute(self, job: RunJob) -> RunOutcome:
        self.events.append(("execute", str(job.config.pytorch.batch_size), self._state()))
        return RunOutcome("failed", 1, error="a fake run")


class Quiet:
    def begin(self, todo, planned) -> None: ...

    def start(self, run, label) -> None: ...

    def tick(self, run_elapsed) -> None: ...

    def end(self, outcome, seconds) -> None: ...


def test_the_runner_gets_ready_before_the_run_is_recorded_as_started(tmp_path: Path):
    study = load_study(write(tmp_path / "s.yaml", """
model: llem/tiny-llama
device: cpu
sweep: {pytorch.batch_size: [1, 4]}
execution: {n_cycles: 1}
"""))
    plan = order_runs(2, 1, "sequential", 0)
    (tmp_path / "s").mkdir()
    manifest = Manifest.create(tmp_path / "s", study, plan, "fake")
    runner = ReadyingRunner()
    runner.manifest = manifest
    run_plan(manifest, study, plan, runner, Quiet(), Policy())
    # ready for each run's own experiment while nothing runs; the run is running when executed
    assert runner.events == [("ready", "1", None), ("execute", "1", "e01-c1"),
                             ("ready", "4", None), ("execute", "4", "e02-c1")]
    for ready_at, run in zip(runner.ready_at, manifest.in_order()):
        assert run.started_at is not None and datetime.fromisoformat(run.started_at) >= datetime.fromisoformat(ready_at)
