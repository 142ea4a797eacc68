"""Which llem runs are active on this host, so that a run whose CPU energy was read
while another ran says so (warning `cpu_energy_shared`).

RAPL counts every socket's packages and DRAM for every process of the host: another
llem run's loading, warm-up or window lands in this run's `cpu_energy_j` (and in
`energy_j` on a CPU run). The harness sees only its own run, so the host side tells:
every run, whichever runner executes it (local, Docker, Apptainer) and whoever
schedules it (the study loop, `parallel_gpus`, a Slurm task on a shared node),
registers for its whole life in a host-wide directory beside the device locks
(`$LLEM_LOCK_DIR/runs/`): one JSON file per run, flock(2)-held while it runs, so a
holder that dies is seen as gone (the kernel drops its lock; no pid to outlive it).
Runs of other studies on the host register there too. After the run, and while it is
still registered, the runs whose lives overlapped its measured window (the result's
`window_started_at`/`window_finished_at`) are looked up; when there are any and CPU
energy was measured, the warning is added to its result.json, from which runs.parquet
is built. A finished run's file stays until no registered run started before it ended.

Best effort: where the registry cannot be written, the run goes on without it and
nothing is claimed either way.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, ValidationError

from llenergymeasure.backends import contract
from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.harness.result import RunResult
from llenergymeasure.backends.harness.validity import cpu_energy_shared_warning
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.locks import lock_dir
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.execution.runners.base import RunJob

log = logging.getLogger("llem.host_runs")

REGISTRY = "runs"  # under the device lock directory
STALE_UNREADABLE_S = 3600.0  # an unparseable, unheld file this old is debris (a crash mid-write)


class HostRun(BaseModel):
    """One run's entry in the registry (read by other llem processes)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    pid: int
    host: str
    started_unix: float
    ended_unix: float | None = None  # None while it runs (or if its holder died: see _entries)

    def label(self) -> str:
        """`<study dir>/<run id>` (run directories are STUDY/runs/RUN_ID)."""
        p = Path(self.run_dir)
        return f"{p.parent.parent.name}/{p.name}"


def registry_dir() -> Path:
    d = lock_dir() / REGISTRY
    if not d.is_dir():
        d.mkdir(exist_ok=True)
        try:
            os.chmod(d, 0o1777)  # every user's runs register here, like the lock directory itself
        except OSError:
            pass
    return d


def _held(path: Path) -> bool | None:
    """Whether someone holds the file's lock (its run is alive); None if it can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def _entries(d: Path) -> list[tuple[Path, HostRun]]:
    """Every readable entry of this host, a dead holder's closed at now (it ended no
    later), and debris removed."""
    host, now = platform.node(), time.time()
    out = []
    for path in sorted(d.glob("*.json")):
        held = _held(path)
        try:
            entry = HostRun.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            _remove_debris(path, held, now)
            continue
        if entry.host != host:
            continue  # a registry on a file system shared between nodes: not this host's RAPL
        if held is False and entry.ended_unix is None:
            held = _held(path)  # again: a registrant locks its file before writing it, so read after that
        if held is False and entry.ended_unix is None:
            # Its holder died: it ended no later than now, which is written down so that it
            # is not found "ending now" again; where the file can't be written, its last
            # write (the registration) stands for the end instead, or it would overlap
            # every later run.
            entry.ended_unix = now
            if not _write(path, entry):
                entry.ended_unix = _mtime(path, entry.started_unix)
        out.append((path, entry))
    return out


def _remove_debris(path: Path, held: bool | None, now: float) -> None:
    try:
        if held is False and now - path.stat().st_mtime > STALE_UNREADABLE_S:
            path.unlink()
    except OSError:
        pass


def _write(path: Path, entry: HostRun) -> bool:
    """Rewrite an entry in place (not by rename: its holder's lock is on this inode);
    False when it can't be written."""
    try:
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(entry.model_dump_json().encode())
    except OSError:
        return False
    return True


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return default


def _prune(entries: list[tuple[Path, HostRun]]) -> None:
    """Drop ended runs that no registered run can have overlapped: ended before every
    live run started."""
    live_starts = [e.started_unix for _, e in entries if e.ended_unix is None]
    horizon = min(live_starts, default=float("inf"))
    for path, e in entries:
        if e.ended_unix is not None and e.ended_unix < horizon:
            try:
                path.unlink()
            except OSError:
                pass


class Registration:
    """A run's entry, held from __enter__ to __exit__."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path: Path | None = None
        self.entry: HostRun | None = None
        self._fd: int | None = None

    def __enter__(self) -> Self:
        try:
            d = registry_dir()
            self.entry = HostRun(run_dir=str(self.run_dir), pid=os.getpid(), host=platform.node(),
                                 started_unix=time.time())
            path = d / f"{os.getpid()}-{uuid.uuid4().hex}.json"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: nobody else holds it
            os.fchmod(fd, 0o666)  # whoever finds it dead closes it (see _entries), whatever the umask
            os.write(fd, self.entry.model_dump_json().encode())
            self.path, self._fd = path, fd
            _prune(_entries(d))
        except (OSError, UserError) as e:
            log.warning("host run registry unavailable (%s): overlapping runs on this host are not tracked", e)
            self.entry = None
        return self

    def others(self, t0: float, t1: float) -> list[HostRun]:
        """The other registered runs of this host whose lives overlapped [t0, t1] (unix s);
        runs still going count up to now."""
        if self.path is None:
            return []
        now = time.time()
        return [e for p, e in _entries(self.path.parent) if p != self.path
                and e.started_unix < t1 and (e.ended_unix if e.ended_unix is not None else now) > t0]

    def __exit__(self, *exc: object) -> None:
        if self.path is None or self._fd is None or self.entry is None:
            return
        self.entry.ended_unix = time.time()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, self.entry.model_dump_json().encode(), 0)
        except OSError:
            pass  # left open-ended: the next reader closes it when it finds the lock gone
        os.close(self._fd)  # releases the lock
        self._fd = None
        try:
            _prune(_entries(self.path.parent))
        except OSError:
            pass


def _unix(stamp: str | None) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def window_unix(result: RunResult, fallback: tuple[float, float]) -> tuple[float, float]:
    """The measured window's edges in unix seconds, or `fallback` (the run's life as the
    host saw it) for a result that does not record them."""
    t0, t1 = _unix(result.window_started_at), _unix(result.window_finished_at)
    return (t0, t1) if t0 is not None and t1 is not None else fallback


def mark_cpu_energy_shared(run_dir: Path, outcome: RunOutcome, others: list[HostRun]) -> None:
    """Add cpu_energy_shared to a finished run's result (result.json and the outcome) when
    other runs overlapped its window and CPU energy was measured (else there is no figure
    to qualify)."""
    result = outcome.result
    if outcome.state != "done" or result is None or not others or result.metrics.cpu_energy_j is None:
        return
    labels = sorted({e.label() for e in others})
    amended = result.model_copy(update={"warnings": [*result.warnings, cpu_energy_shared_warning(labels)]})
    write_json_atomic(run_dir / contract.RESULT_FILE, amended.model_dump(mode="json"))
    outcome.result = amended


def execute_on_host(job: RunJob, execute: Callable[[], RunOutcome]) -> RunOutcome:
    """`execute()` (which runs `job`: a runner's execute, with whatever wraps it),
    registered as active on this host for the run's whole life; a finished run that had
    others beside it in its window is marked cpu_energy_shared."""
    with Registration(job.run_dir) as me:
        started = time.time()
        outcome = execute()
        if outcome.result is not None:  # looked up while still registered: runs started meanwhile count
            others = me.others(*window_unix(outcome.result, (started, time.time())))
            mark_cpu_energy_shared(job.run_dir, outcome, others)
    return outcome
