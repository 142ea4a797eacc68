"""Slurm's command-line tools, wrapped: submit (`sbatch`), read an array's task
states (`scontrol show job`, then the job-completion log for tasks it has
forgotten), cancel (`scancel`). Parsing is kept here so it can be tested on
real output."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from llenergymeasure.orchestrator.errors import Failure, UserError

# Slurm job states, grouped by what they mean for a run
WAITING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
ACTIVE = {"CONFIGURING", "RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}
# every other state is final: COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, CANCELLED,
# NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE, REVOKED, SPECIAL_EXIT

_FIELD = re.compile(r"(\S+?)=(\S*)")


@dataclass
class TaskState:
    task_id: int
    state: str  # Slurm's JobState, e.g. RUNNING, TIMEOUT
    exit_code: int | None = None  # the batch script's exit status
    signal: int | None = None
    node: str | None = None
    reason: str | None = None
    start_time: str | None = None
    end_time: str | None = None

    @property
    def final(self) -> bool:
        return self.state not in WAITING and self.state not in ACTIVE


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise UserError(f"--runner slurm: {', '.join(missing)} not found; run llem on a Slurm login node "
                        "(or install the Slurm client tools)")


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"`{' '.join(argv)}` did not answer in {timeout:g} s; is slurmctld reachable?") from None


def sbatch(script: Path, cwd: Path) -> str:
    """Submit a batch script; the job id (the array's id)."""
    p = _run(["sbatch", "--parsable", str(script)])
    if p.returncode != 0:
        raise UserError(f"sbatch refused the array ({p.stderr.strip()}); check the slurm: settings "
                        f"(partition, account, qos, time_limit, gpus_per_run); the script is {script}")
    return p.stdout.strip().split(";")[0]


def scancel(job_id: str) -> None:
    _run(["scancel", job_id])


def _ids(spec: str) -> list[int]:
    """ArrayTaskId of a record: '3', or pending tasks folded together: '4-9%2', '1,3,5-7'."""
    spec = spec.split("%")[0]
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            step = 1
            if ":" in hi:
                hi, s = hi.split(":")
                step = int(s)
            out.extend(range(int(lo), int(hi) + 1, step))
        elif part.isdigit():
            out.append(int(part))
    return out


def _exit(code: str | None) -> tuple[int | None, int | None]:
    if not code or ":" not in code:
        return None, None
    status, sig = code.split(":", 1)
    return int(status), int(sig)


def parse_records(text: str) -> dict[int, TaskState]:
    """`scontrol -o show job` or job-completion-log lines -> task id -> state."""
    tasks: dict[int, TaskState] = {}
    for line in text.splitlines():
        f = dict(_FIELD.findall(line))
        if "ArrayTaskId" not in f or "JobState" not in f:
            continue
        status, sig = _exit(f.get("ExitCode"))
        node = f.get("BatchHost") or f.get("NodeList")
        for tid in _ids(f["ArrayTaskId"]):
            tasks[tid] = TaskState(
                task_id=tid, state=f["JobState"], exit_code=status, signal=sig,
                node=None if node in (None, "", "(null)", "None") else node,
                reason=None if f.get("Reason") in (None, "None") else f.get("Reason"),
                start_time=f.get("StartTime") if f.get("StartTime") not in (None, "Unknown", "None") else None,
                end_time=f.get("EndTime") if f.get("EndTime") not in (None, "Unknown", "None") else None,
            )
    return tasks


def array_states(job_id: str) -> dict[int, TaskState] | None:
    """Every task slurmctld still holds for this array; None when it has forgotten the job."""
    p = _run(["scontrol", "-o", "show", "job", job_id])
    if p.returncode != 0:
        if "Invalid job id" in p.stderr:
            return None
        raise Failure(f"scontrol show job {job_id} failed: {p.stderr.strip()}")
    return parse_records(p.stdout)


def config_value(key: str) -> str | None:
    p = _run(["scontrol", "show", "config"])
    for line in p.stdout.splitlines():
        k, _, v = line.partition("=")
        if k.strip() == key:
            return v.strip()
    return None


def parse_sacct(text: str) -> dict[int, TaskState]:
    """`sacct -n -P -X -o JobID,State,ExitCode,NodeList,Start,End` lines of an array."""
    tasks: dict[int, TaskState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 6 or "_" not in parts[0]:
            continue
        tid = parts[0].split("_", 1)[1]
        if not tid.isdigit():
            continue  # a pending range such as 123_[4-9]
        status, sig = _exit(parts[2])
        tasks[int(tid)] = TaskState(int(tid), parts[1].split()[0], exit_code=status, signal=sig,
                                    node=parts[3] or None, start_time=parts[4] or None, end_time=parts[5] or None)
    return tasks


def finished_elsewhere(job_id: str) -> dict[int, TaskState]:
    """Finished tasks of this array from accounting (`sacct`, where slurmdbd runs) or
    else the job-completion log (jobcomp/filetxt, when we can read it); {} when the
    cluster keeps neither. For tasks slurmctld has already forgotten (MinJobAge)."""
    if (config_value("AccountingStorageType") or "accounting_storage/none") != "accounting_storage/none" \
            and shutil.which("sacct"):
        p = _run(["sacct", "-j", job_id, "-n", "-P", "-X", "-o", "JobID,State,ExitCode,NodeList,Start,End"])
        if p.returncode == 0:
            return parse_sacct(p.stdout)
    return completion_log(job_id)


def completion_log(job_id: str) -> dict[int, TaskState]:
    """Finished tasks of this array from the job-completion log (jobcomp/filetxt)."""
    if config_value("JobCompType") != "jobcomp/filetxt":
        return {}
    loc = config_value("JobCompLoc")
    try:
        text = Path(loc or "").read_text(errors="replace")
    except OSError:
        return {}
    lines = [ln for ln in text.splitlines() if f"ArrayJobId={job_id} " in ln]
    return parse_records("\n".join(lines))


def partition_nodes(partition: str | None) -> list[str]:
    argv = ["sinfo", "-h", "-N", "-o", "%N"] + (["-p", partition] if partition else [])
    p = _run(argv)
    return sorted({n.strip() for n in p.stdout.split() if n.strip()}) if p.returncode == 0 else []


def partition_names() -> list[str]:
    p = _run(["sinfo", "-h", "-o", "%R"])
    return [n.strip() for n in p.stdout.split() if n.strip()] if p.returncode == 0 else []
