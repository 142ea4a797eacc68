"""The study loop: the planned runs one by one through a runner, every state change
written to the manifest before the next step.

Failure isolation: a failed run is recorded (manifest + error.json) and the study
goes on, except that it stops early when
- `--fail-fast` is given: at the first failure;
- `execution.max_consecutive_failures` runs fail in a row: the study pauses (a
  broken machine or image would otherwise burn through a days-long plan);
- the runner is lost (the Docker engine went away): every later run would fail;
- a study file can't be written (disk full): nothing more could be recorded.
Runs not reached are `skipped` (with why) when the study stopped on purpose, and
stay `pending` otherwise; `llem run --resume DIR` continues in every case.
Ctrl-C and SIGTERM stop the running run, mark it interrupted and propagate.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field

from llenergymeasure.orchestrator.execution import failures
from llenergymeasure.orchestrator.execution.baselines import BaselineCache
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.terminal import Progress
from llenergymeasure.orchestrator.errors import Failure
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.execution.resume import fresh_run_dir
from llenergymeasure.orchestrator.execution.runners.base import Runner, RunnerLost
from llenergymeasure.orchestrator.execution.signals import describe
from llenergymeasure.orchestrator.study.spec import Study


@dataclass
class Policy:
    fail_fast: bool = False
    max_consecutive_failures: int | None = None


@dataclass
class LoopResult:
    failed: list[str] = field(default_factory=list)  # run ids that failed in this session
    stopped: str | None = None  # why the study stopped before the end of its plan


def resume_hint(manifest: Manifest) -> str:
    return f"llem run --resume {manifest.study_dir}"


def _record_failure(manifest: Manifest, planned: PlannedRun, outcome: RunOutcome, exp_id: str) -> None:
    run = manifest.run(planned.run_id)
    finished = utc_now()
    failures.write_error_file(
        manifest.study_dir / run["run_dir"], outcome.kind or failures.CRASHED, outcome.error or "failed",
        outcome.exit_code, exp_id, run.get("started_at"), finished,
    )
    manifest.update(planned.run_id, "failed", finished_at=finished, exit_code=outcome.exit_code,
                    error=outcome.error, failure_kind=outcome.kind)


def record_outcome(manifest: Manifest, planned: PlannedRun, outcome: RunOutcome, exp_id: str) -> None:
    """A finished run into the manifest: done, or failed with error.json written."""
    if outcome.state == "done":
        manifest.update(planned.run_id, "done", finished_at=utc_now(), exit_code=outcome.exit_code,
                        error=None, failure_kind=None)
    else:
        _record_failure(manifest, planned, outcome, exp_id)


def record_lost(manifest: Manifest, planned: PlannedRun, error: RunnerLost, exp_id: str) -> RunOutcome:
    """The runner went away during this run: it failed as infrastructure, and the study pauses."""
    lost = RunOutcome("failed", None, error=str(error), kind=failures.INFRASTRUCTURE)
    _record_failure(manifest, planned, lost, exp_id)
    manifest.set_status("paused", str(error))
    return lost


def stop_reason(policy: Policy, outcome: RunOutcome, run_id: str, consecutive: int) -> tuple[str, str] | None:
    """(status, why) when the study must not start more runs after this outcome."""
    if outcome.state != "failed":
        return None
    if policy.fail_fast:
        return "stopped", f"--fail-fast: run {run_id} failed"
    if policy.max_consecutive_failures and consecutive >= policy.max_consecutive_failures:
        return "paused", (f"{consecutive} runs failed in a row (execution.max_consecutive_failures: "
                          f"{policy.max_consecutive_failures}); the last: {outcome.error}")
    return None


def skip_rest(manifest: Manifest, rest: list[PlannedRun], reason: str) -> None:
    for planned in rest:
        manifest.run(planned.run_id).update(state="skipped", error=reason)
    manifest.save()


def run_plan(
    manifest: Manifest, study: Study, runs: list[PlannedRun], runner: Runner,
    progress: Progress, policy: Policy,
) -> LoopResult:
    ex = study.execution
    baselines = BaselineCache()
    result = LoopResult()
    consecutive = 0
    current: PlannedRun | None = None
    previous: PlannedRun | None = None
    try:
        for i, planned in enumerate(runs):
            if previous is not None:
                time.sleep(ex.gap_between_cycles_s if planned.cycle != previous.cycle else ex.gap_between_runs_s)
            exp = study.experiments[planned.experiment_index - 1]
            fresh_run_dir(manifest, planned.run_id)
            current = planned
            manifest.update(planned.run_id, "running", started_at=utc_now())
            progress.start(planned, exp.label)
            t0 = time.monotonic()
            try:
                outcome = runner.execute(
                    exp.config, manifest.study_dir / "runs" / planned.run_id, ex.run_timeout_s,
                    on_tick=progress.tick, extra_env=baselines.env_for(exp.config),
                    stall_s=ex.stall_timeout_s, stop_grace_s=ex.stop_grace_s,
                )
            except RunnerLost as e:
                progress.end(record_lost(manifest, planned, e, exp.id), time.monotonic() - t0)
                raise Failure(f"{e} during run {planned.run_id}; the study stopped there. Finished "
                              f"runs are kept. When it is back: {resume_hint(manifest)}") from None
            baselines.remember(outcome)
            record_outcome(manifest, planned, outcome, exp.id)
            if outcome.state == "done":
                consecutive = 0
            else:
                result.failed.append(planned.run_id)
                consecutive += 1
            current = None
            progress.end(outcome, time.monotonic() - t0)
            previous = planned
            stop = stop_reason(policy, outcome, planned.run_id, consecutive)
            if stop and runs[i + 1:]:
                skip_rest(manifest, runs[i + 1:], f"not run: the study {stop[0]} ({stop[1]})")
                manifest.set_status(*stop)
                result.stopped = f"study {stop[0]}: {stop[1]}"
                return result
        manifest.set_status("finished", f"{len(result.failed)} run(s) failed" if result.failed else None)
        return result
    except KeyboardInterrupt as e:
        why = describe(e)
        try:
            if current is not None:
                gone = RunOutcome("failed", None, error=f"interrupted ({why})", kind=failures.INTERRUPTED)
                _record_failure(manifest, current, gone, study.experiments[current.experiment_index - 1].id)
            manifest.set_status("interrupted", f"interrupted ({why})")
        except OSError:
            pass  # can't record it (disk full?): resume finds the run `running` and knows
        raise
    except OSError as e:
        if e.errno is None:  # not a file-system error (e.g. an HTTP client's): not ours to explain
            raise
        # Writing the study's own files failed (typically ENOSPC). The manifest on disk
        # is still the last complete one (atomic writes), so resume works once fixed.
        what = "no space left on the device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)
        raise Failure(
            f"cannot write the study's files ({what}: {e.filename or manifest.study_dir}); the study "
            f"stopped{f' during run {current.run_id}' if current else ''}. Finished runs are kept. "
            f"Fix it, then: {resume_hint(manifest)}"
        ) from None
