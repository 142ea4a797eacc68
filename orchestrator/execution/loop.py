"""The study loop: the planned runs one by one through a runner, every state change
written to the manifest before the next step (the policy is recording.py's).

Stops early when the policy says so, when the runner is lost, or when a study file
can't be written (disk full: nothing more could be recorded). Runs not reached stay
`pending` (or `skipped` when the study stopped on purpose); `llem run --resume DIR`
continues in every case. Ctrl-C and SIGTERM stop the running run, mark it
interrupted and propagate.
"""

from __future__ import annotations

import errno
import time
from typing import Protocol

from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.errors import Failure
from llenergymeasure.orchestrator.execution import failures, gpu_levers
from llenergymeasure.orchestrator.execution.baselines import BaselineCache
from llenergymeasure.orchestrator.execution.host_runs import execute_on_host
from llenergymeasure.orchestrator.execution.manifest import Manifest, StudyLost
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.execution.recording import (
    LoopResult, Policy, finish_loop, record_failure, record_lost, record_outcome, resume_hint, stop_reason,
    stop_study,
)
from llenergymeasure.orchestrator.execution.resume import fresh_run_dir
from llenergymeasure.orchestrator.execution.runners.base import Runner, RunJob, RunnerLost
from llenergymeasure.orchestrator.execution.signals import describe
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.study.spec import Study


class Progress(Protocol):
    """Where the loop reports runs as they go (the terminal, in the CLI)."""

    def begin(self, todo: list[PlannedRun], planned: int) -> None:
        """`todo` is about to run, of `planned` runs in the study; called again (with more
        runs, and the plan grown) when n_cycles: auto adds a cycle."""

    def start(self, run: PlannedRun, label: str) -> None: ...

    def tick(self, run_elapsed: float) -> None: ...

    def end(self, outcome: RunOutcome, seconds: float) -> None: ...


class _Loop:
    def __init__(self, manifest: Manifest, study: Study, runner: Runner, progress: Progress, policy: Policy) -> None:
        self.manifest, self.study, self.runner, self.progress, self.policy = manifest, study, runner, progress, policy
        self.baselines = BaselineCache()
        self.result = LoopResult()
        self.consecutive = 0
        self.current: PlannedRun | None = None

    def gap_before(self, planned: PlannedRun, previous: PlannedRun | None) -> None:
        ex = self.study.execution
        if previous is not None:
            time.sleep(ex.gap_between_cycles_s if planned.cycle != previous.cycle else ex.gap_between_runs_s)

    def one(self, planned: PlannedRun) -> RunOutcome:
        exp = self.study.experiments[planned.experiment_index - 1]
        self.manifest.check_intact()  # never start a run into a study someone removed
        fresh_run_dir(self.manifest, planned.run_id)
        ready = getattr(self.runner, "ready_for", None)
        if ready is not None:  # the local runner's launcher: started before the run's clock, once a study
            ready(exp.config)
        self.current = planned
        self.manifest.update(planned.run_id, "running", started_at=utc_now())
        self.progress.start(planned, exp.label)
        t0 = time.monotonic()
        job = RunJob.limited_by(self.study.execution, exp.config, self.manifest.run_dir(planned.run_id),
                                on_tick=self.progress.tick, extra_env=self.baselines.env_for(exp.config))
        try:
            # with its gpu: settings, restored after; registered as active on this host
            outcome = execute_on_host(job, lambda: gpu_levers.execute(self.runner, job))
        except RunnerLost as e:
            self.progress.end(record_lost(self.manifest, planned.run_id, str(e)), time.monotonic() - t0)
            raise Failure(f"{e} during run {planned.run_id}; the study stopped there. Finished runs "
                          f"are kept. When it is back: {resume_hint(self.manifest)}") from None
        self.baselines.remember(outcome)
        self.manifest.check_intact()  # removed during the run: recording would recreate it
        record_outcome(self.manifest, planned.run_id, outcome)
        self.current = None
        self.progress.end(outcome, time.monotonic() - t0)
        return outcome

    def count(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        if outcome.state == "done":
            self.consecutive = 0
        else:
            self.result.failed.append(planned.run_id)
            self.consecutive += 1

    def interrupted(self, e: KeyboardInterrupt) -> None:
        why = describe(e)
        try:
            if self.current is not None:
                gone = RunOutcome("failed", None, error=f"interrupted ({why})", kind=failures.INTERRUPTED)
                record_failure(self.manifest, self.current.run_id, gone)
            self.manifest.set_status("interrupted", f"interrupted ({why})")
        except (OSError, StudyLost):
            pass  # can't record it (disk full? removed?): resume finds the run `running` and knows

    def cannot_write(self, e: OSError) -> Failure:
        """Writing the study's own files failed (typically ENOSPC). The manifest on disk
        is still the last complete one (atomic writes), so resume works once fixed."""
        what = "no space left on the device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)
        during = f" during run {self.current.run_id}" if self.current else ""
        return Failure(f"cannot write the study's files ({what}: {e.filename or self.manifest.study_dir}); "
                       f"the study stopped{during}. Finished runs are kept. Fix it, then: "
                       f"{resume_hint(self.manifest)}")


def run_plan(manifest: Manifest, study: Study, runs: list[PlannedRun], runner: Runner, progress: Progress,
             policy: Policy, previous: PlannedRun | None = None) -> LoopResult:
    """Run `runs` in order through `runner`, recording each; the loop's result. `previous`:
    the run just before them (n_cycles: auto's added cycle follows the last one, after
    gap_between_cycles_s)."""
    loop = _Loop(manifest, study, runner, progress, policy)
    try:
        for i, planned in enumerate(runs):
            loop.gap_before(planned, previous)
            outcome = loop.one(planned)
            loop.count(planned, outcome)
            previous = planned
            stop = stop_reason(policy, outcome, planned.run_id, loop.consecutive)
            if stop and runs[i + 1:]:
                stop_study(manifest, [r.run_id for r in runs[i + 1:]], stop, loop.result)
                return loop.result
        return finish_loop(manifest, loop.result)
    except KeyboardInterrupt as e:
        loop.interrupted(e)
        raise
    except OSError as e:
        if e.errno is None:  # not a file-system error (e.g. an HTTP client's): not ours to explain
            raise
        raise loop.cannot_write(e) from None
