"""Recording runs into the manifest, and the study's failure policy: shared by the
sequential loop (loop.py) and the whole-plan runners (parallel.py), so that a run
is recorded, and a study stopped, the same way whichever schedules it.

Failure isolation: a failed run is recorded (manifest + error.json) and the study
goes on, except that it stops early when
- `--fail-fast` is given: at the first failure;
- `execution.max_consecutive_failures` runs fail in a row: the study pauses (a
  broken machine or image would otherwise burn through a days-long plan);
- the runner is lost (the Docker engine went away): every later run would fail.
Runs not reached are `skipped` (with why) when the study stopped on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.execution import failures
from llenergymeasure.orchestrator.execution.manifest import Manifest, StudyStatus
from llenergymeasure.orchestrator.execution.outcome import RunOutcome


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


def record_failure(manifest: Manifest, run_id: str, outcome: RunOutcome) -> None:
    """A failed run: error.json in its directory (whatever killed it), then the manifest."""
    run = manifest.run(run_id)
    finished = utc_now()
    exp_id = manifest.experiment(run.experiment_index).id
    failures.write_error_file(
        manifest.run_dir(run_id), failures.ErrorReport(
            kind=outcome.kind or failures.CRASHED, reason=outcome.error or "failed", exit_code=outcome.exit_code,
            experiment_id=exp_id, started_at=run.started_at, finished_at=finished),
    )
    manifest.update(run_id, "failed", finished_at=finished, exit_code=outcome.exit_code,
                    error=outcome.error, failure_kind=outcome.kind)


def record_outcome(manifest: Manifest, run_id: str, outcome: RunOutcome) -> None:
    """A finished run into the manifest: done, or failed with error.json written."""
    if outcome.state == "done":
        manifest.update(run_id, "done", finished_at=utc_now(), exit_code=outcome.exit_code,
                        error=None, failure_kind=None)
    else:
        record_failure(manifest, run_id, outcome)


def record_lost(manifest: Manifest, run_id: str, why: str) -> RunOutcome:
    """The runner went away during this run: it failed as infrastructure, and the study pauses."""
    lost = RunOutcome("failed", None, error=why, kind=failures.INFRASTRUCTURE)
    record_failure(manifest, run_id, lost)
    manifest.set_status("paused", why)
    return lost


def stop_reason(policy: Policy, outcome: RunOutcome, run_id: str,
                consecutive: int) -> tuple[StudyStatus, str] | None:
    """(status, why) when the study must not start more runs after this outcome."""
    if outcome.state != "failed":
        return None
    if policy.fail_fast:
        return "stopped", f"--fail-fast: run {run_id} failed"
    if policy.max_consecutive_failures and consecutive >= policy.max_consecutive_failures:
        return "paused", (f"{consecutive} runs failed in a row (execution.max_consecutive_failures: "
                          f"{policy.max_consecutive_failures}); the last: {outcome.error}")
    return None


def stop_study(manifest: Manifest, rest: list[str], stop: tuple[StudyStatus, str], result: LoopResult) -> None:
    """The study stops on purpose: runs not reached are skipped, saying why."""
    manifest.check_intact()  # the end of this session: say if finished results went missing
    reason = f"not run: the study {stop[0]} ({stop[1]})"
    for run_id in rest:
        run = manifest.run(run_id)
        run.state, run.error = "skipped", reason
    manifest.set_status(*stop)
    result.stopped = f"study {stop[0]}: {stop[1]}"


def finish_loop(manifest: Manifest, result: LoopResult) -> LoopResult:
    """The plan's end: the study is finished, unless its directory or results went missing."""
    manifest.check_intact()
    manifest.set_status("finished", f"{len(result.failed)} run(s) failed" if result.failed else None)
    return result
