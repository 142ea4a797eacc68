"""Reading what a run left in its directory into an outcome.

A run is done only when its exit code is 0 *and* result.json validates; anything
else is a failure with the best reason available (error.json, then the log).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from backends import contract
from backends.harness.result import RunResult

LOG_TAIL_LINES = 20


@dataclass
class RunOutcome:
    state: str  # "done" | "failed"
    exit_code: int | None
    error: str | None = None
    result: RunResult | None = None


def log_tail(run_dir: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = (run_dir / contract.LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def load_result(run_dir: Path) -> RunResult | None:
    try:
        return RunResult.model_validate_json((run_dir / contract.RESULT_FILE).read_bytes())
    except (OSError, ValidationError):
        return None


def read_outcome(run_dir: Path, exit_code: int | None, reason: str | None = None) -> RunOutcome:
    if exit_code == 0 and reason is None:
        result = load_result(run_dir)
        if result is not None:
            return RunOutcome("done", exit_code, result=result)
        reason = f"exited 0 but {contract.RESULT_FILE} is missing or does not validate"
    if reason is None:
        try:
            err = json.loads((run_dir / contract.ERROR_FILE).read_text())
            reason = f"{err['error_type']}: {err['message']}"
        except (OSError, ValueError, KeyError):
            tail = log_tail(run_dir, 3).strip().replace("\n", " | ")
            reason = f"exit code {exit_code}" + (f"; log: {tail}" if tail else "")
    return RunOutcome("failed", exit_code, error=reason)
