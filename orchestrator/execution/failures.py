"""How a run failed, in a few kinds, and its error.json.

The kind decides what `--resume` does with a failed run: failures that say
nothing about the configuration (the study was interrupted, the Docker engine or
the disk went away, a finished result was later damaged) are re-run by default;
failures of the run itself (an exception, a crash, a timeout, a stall) only with
--retry-failed, since they would most likely fail again.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.backends import contract
from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.harness.result import RunError
from llenergymeasure.backends.secrets import redact

ERROR = "error"  # the harness raised (its error.json says what)
OUT_OF_MEMORY = "out_of_memory"
CRASHED = "crashed"  # died without error.json: a signal, a hard exit, the container killed
TIMEOUT = "timeout"  # execution.run_timeout_s
STALLED = "stalled"  # execution.stall_timeout_s (the watchdog)
INVALID_RESULT = "invalid_result"  # exited 0 without a result.json that validates
INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM, or the orchestrator died while it ran
INFRASTRUCTURE = "infrastructure"  # the Docker engine became unreachable, the disk filled
RESULT_DAMAGED = "result_damaged"  # was done, but result.json no longer validates

RETRY_BY_DEFAULT = frozenset({INTERRUPTED, INFRASTRUCTURE, RESULT_DAMAGED})

_ERROR_TYPES = {
    OUT_OF_MEMORY: "OutOfMemory", CRASHED: "Crashed", TIMEOUT: "Timeout", STALLED: "Stalled",
    INVALID_RESULT: "InvalidResult", INTERRUPTED: "Interrupted", INFRASTRUCTURE: "InfrastructureFailure",
    RESULT_DAMAGED: "ResultDamaged",
}
LOG_TAIL_LINES = 20
OOM_SIGNAL_HINT = "; the kernel's OOM killer sends SIGKILL when memory runs out"


def describe_exit(exit_code: int | None) -> str:
    """'killed by SIGKILL' for signals (negative codes from subprocess, 128+N from Docker)."""
    if exit_code is None:
        return "no exit code"
    n = -exit_code if exit_code < 0 else exit_code - 128 if 128 < exit_code < 160 else 0
    if n:
        try:
            name = signal.Signals(n).name
        except ValueError:
            name = f"signal {n}"
        return f"killed by {name}" + (OOM_SIGNAL_HINT if n == signal.SIGKILL else "")
    return f"exit code {exit_code}"


def is_oom(error_type: str, message: str) -> bool:
    return "OutOfMemory" in error_type or "out of memory" in message.lower()


def read_error_file(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / contract.ERROR_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "error_type" in data else None


def log_tail(run_dir: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = (run_dir / contract.LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return redact("\n".join(lines[-n:]))


# An engine whose worker process failed raises in the run's process only a pointer to it
# (vLLM: "Engine core initialization failed. See root cause above."): the cause is a line
# the worker printed to the same log, such as "AssertionError: Not enough allowed NUMA nodes ...".
ROOT_CAUSE_POINTER = "See root cause above"
_EXCEPTION_LINE = re.compile(r"^(?:\([^)]*\) )?(?:[A-Z]+ [\d-]+ [\d:]+ \[[^\]]*\] )?"
                             r"((?:[A-Za-z_][\w.]*)?(?:Error|Exception)): (\S.*)$")


def root_cause(run_dir: Path, message: str) -> str | None:
    """The worker's own exception line from run.log when `message` only points at it."""
    if ROOT_CAUSE_POINTER not in message:
        return None
    try:
        lines = (run_dir / contract.LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        m = _EXCEPTION_LINE.match(line.strip())
        if m and ROOT_CAUSE_POINTER not in m.group(2):
            return redact(f"{m.group(1)}: {m.group(2)}")
    return None


@dataclass(frozen=True)
class ErrorReport:
    """Why a run failed, as the host saw it (error.json adds what the harness said)."""

    kind: str
    reason: str
    exit_code: int | None
    experiment_id: str | None
    started_at: str | None
    finished_at: str


def write_error_file(run_dir: Path, report: ErrorReport) -> None:
    """error.json with type, message and the last log lines, whatever killed the run.
    The harness's own error is kept: as is for `error` failures, in `cause` when the
    host stopped the run (a timed-out run's harness reports 'Terminated', which is
    true but not why)."""
    harness = read_error_file(run_dir)
    if report.kind in (ERROR, OUT_OF_MEMORY) and harness is not None:
        err = {**harness, "kind": report.kind, "exit_code": report.exit_code}
    else:
        err = {
            "experiment_id": report.experiment_id,
            "error_type": _ERROR_TYPES.get(report.kind, "Failed"),
            "message": report.reason,
            "traceback": (harness or {}).get("traceback", ""),
            "started_at": (harness or {}).get("started_at", report.started_at),
            "finished_at": report.finished_at,
            "kind": report.kind,
            "exit_code": report.exit_code,
            "cause": f"{harness['error_type']}: {harness.get('message', '')}" if harness else None,
        }
    err["log_tail"] = log_tail(run_dir)
    known = set(RunError.model_fields)
    err = RunError.model_validate({k: v for k, v in err.items() if k in known})
    write_json_atomic(run_dir / contract.ERROR_FILE, err.model_dump(mode="json"))
