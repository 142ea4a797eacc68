"""Reading what a run left in its directory into an outcome.

A run is done only when its exit code is 0 *and* result.json validates; anything
else is a failure with its kind (orchestrator/execution/failures.py) and the best reason
available (why the runner stopped it, error.json, the exit status, the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from llenergymeasure.backends import contract
from llenergymeasure.backends.harness.result import RunResult
from llenergymeasure.backends.secrets import redact
from llenergymeasure.orchestrator.execution import failures
from llenergymeasure.orchestrator.execution.failures import log_tail

__all__ = ["RunOutcome", "load_result", "log_tail", "read_outcome"]


@dataclass
class RunOutcome:
    state: str  # "done" | "failed"
    exit_code: int | None
    error: str | None = None
    result: RunResult | None = None
    kind: str | None = None  # failures.* when failed


def load_result(run_dir: Path) -> RunResult | None:
    try:
        return RunResult.model_validate_json((run_dir / contract.RESULT_FILE).read_bytes())
    except (OSError, ValidationError):
        return None


def read_outcome(
    run_dir: Path, exit_code: int | None, reason: str | None = None, kind: str | None = None
) -> RunOutcome:
    """`reason`/`kind`: set when the runner itself ended the run (timeout, watchdog, ...)."""
    if reason is not None:
        return RunOutcome("failed", exit_code, error=redact(reason), kind=kind or failures.CRASHED)
    if exit_code == 0:
        result = load_result(run_dir)
        if result is not None:
            return RunOutcome("done", exit_code, result=result)
        reason = f"exited 0 but {contract.RESULT_FILE} is missing or does not validate"
        return RunOutcome("failed", exit_code, error=reason, kind=failures.INVALID_RESULT)
    err = failures.read_error_file(run_dir)
    if err is not None:
        etype, msg = str(err["error_type"]), str(err.get("message", ""))
        cause = failures.root_cause(run_dir, msg)
        msg += f" [root cause in {contract.LOG_FILE}: {cause}]" if cause else ""
        kind = failures.OUT_OF_MEMORY if failures.is_oom(etype, msg) else failures.ERROR
        return RunOutcome("failed", exit_code, error=redact(f"{etype}: {msg}"), kind=kind)
    tail = log_tail(run_dir, 3).strip().replace("\n", " | ")
    reason = failures.describe_exit(exit_code) + (f"; log: {tail}" if tail else "")
    return RunOutcome("failed", exit_code, error=redact(reason), kind=failures.CRASHED)
