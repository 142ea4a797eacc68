"""`gpu:` settings on the host: set on exactly a run's GPUs before it starts, put back
after it, and never left changed.

    before changing anything   a restore record per GPU (UUID, previous values, owner pid
                               and start time) is written atomically into the device lock
                               directory ($LLEM_LOCK_DIR)
    run                        the settings are applied (all, or none: a refusal undoes
                               what was already set), the runner runs the run
    after (finally)            the previous values are put back, then the record removed;
                               Ctrl-C and SIGTERM unwind through the same `finally`
    SIGKILL, power loss        the record stays; the next start of any llem on the host
                               finds its owner dead and restores it, saying what it did
                               (as the Docker runner's reaper removes a dead owner's
                               containers, runners/container.py reap_orphans)

`execute` is the one way a run is executed with its levers: the study loop (local and
Docker runners), the parallel-GPU scheduler and the Slurm task on the node all call it.
`check_levers` checks the values against each GPU's own constraints when the study is
validated, and `LeverPlan.probe` checks permission once the devices are locked, before
the study directory exists: a study that could only run half its settings never starts.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from pydantic import BaseModel, ConfigDict, ValidationError

from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.gpu_settings import GpuSettings
from llenergymeasure.backends.processes import pid_alive
from llenergymeasure.orchestrator.errors import Failure, UserError
from llenergymeasure.orchestrator.execution import failures, gpu_control
from llenergymeasure.orchestrator.execution.gpu_control import (
    ControlError, ControlUnavailable, GpuConstraints, GpuControl, LeverState,
)
from llenergymeasure.orchestrator.execution.locks import DEFAULT_LOCK_DIR, ENV_LOCK_DIR, lock_dir
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.notify import Notify

if TYPE_CHECKING:
    from llenergymeasure.orchestrator.execution.runners.base import RunJob, Runner, RunnerBase
    from llenergymeasure.orchestrator.study.preflight import Placement
    from llenergymeasure.orchestrator.study.spec import Study

RECORD_PREFIX = "gpu-settings-"
CLAIM = ".restoring-"  # a record being restored: <record>.restoring-<pid>
# applied in this order, undone in the reverse one (persistence first: the driver stays loaded)
ORDER = ("persistence_mode", "power_limit_w", "sm_clocks_mhz", "memory_clocks_mhz")
NEEDS_PERMISSION = ("changing GPU power limits and clocks needs root (or permission an administrator "
                    "delegated); run llem with that permission, or remove the gpu: settings")


class RestoreRecord(BaseModel):
    """What to put back on one GPU, written before anything on it changes."""

    model_config = ConfigDict(extra="forbid")

    uuid: str
    name: str
    host: str
    owner_pid: int
    owner_started: str  # the owner's process start time: a reused pid is not the owner
    started_at: str
    run_dir: str | None
    previous: LeverState
    changes: list[str]  # gpu.* settings being changed, in ORDER
    requested: dict[str, object]


# -- records in the lock directory -----------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def record_path(uuid: str, directory: Path | None = None) -> Path:
    return (directory or lock_dir()) / f"{RECORD_PREFIX}{_safe(uuid)}.json"


def _me() -> tuple[int, str]:
    return os.getpid(), f"{psutil.Process().create_time():.2f}"


def _owner_alive(pid: int, started: str) -> bool:
    """The owner still runs: its pid exists with the same start time."""
    if not pid_alive(pid):
        return False
    try:
        return f"{psutil.Process(pid).create_time():.2f}" == started
    except psutil.Error:
        return True  # it exists but cannot be inspected: assume it is the owner


def _write(record: RestoreRecord, path: Path) -> None:
    write_bytes_atomic(path, record.model_dump_json(indent=2).encode())
    try:
        os.chmod(path, 0o666)  # another user's llem must be able to restore it (shared lock directory)
    except OSError:
        pass


def _read(path: Path) -> RestoreRecord | None:
    try:
        return RestoreRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


# -- applying and undoing ----------------------------------------------------------------


def _apply_one(control: GpuControl, uuid: str, setting: str, settings: GpuSettings) -> None:
    if setting == "persistence_mode":
        control.set_persistence_mode(uuid, bool(settings.persistence_mode))
    elif setting == "power_limit_w":
        control.set_power_limit_w(uuid, float(settings.power_limit_w))  # type: ignore[arg-type]
    elif setting == "sm_clocks_mhz":
        lo, hi = settings.sm_clocks_mhz  # type: ignore[misc]
        control.lock_sm_clocks(uuid, lo, hi)
    elif setting == "memory_clocks_mhz":
        lo, hi = settings.memory_clocks_mhz  # type: ignore[misc]
        control.lock_memory_clocks(uuid, lo, hi)


def _undo_one(control: GpuControl, uuid: str, setting: str, previous: LeverState) -> str:
    """Put one setting back; what was done, in words."""
    if setting == "persistence_mode":
        control.set_persistence_mode(uuid, bool(previous.persistence_mode))
        return f"persistence mode {'on' if previous.persistence_mode else 'off'}"
    if setting == "power_limit_w":
        control.set_power_limit_w(uuid, float(previous.power_limit_w))  # type: ignore[arg-type]
        return f"power limit {previous.power_limit_w:g} W"
    if setting == "sm_clocks_mhz":
        control.reset_sm_clocks(uuid)
        return "SM clocks unlocked"
    control.reset_memory_clocks(uuid)
    return "memory clocks unlocked"


def undo(control: GpuControl, record: RestoreRecord, settings: Iterable[str] | None = None) -> list[str]:
    """Undo `settings` (default: every change the record names), in reverse order. Every
    one is tried; ControlError for the first that failed, after trying the rest."""
    done, failed = [], None
    for s in reversed([s for s in ORDER if s in (record.changes if settings is None else set(settings))]):
        try:
            done.append(_undo_one(control, record.uuid, s, record.previous))
        except ControlError as e:
            failed = failed or e
    if failed is not None:
        raise failed
    return list(reversed(done))


def _unrestorable(setting: str, previous: LeverState) -> bool:
    """A value llem could not read before changing it could not be put back: not changed."""
    return (setting == "power_limit_w" and previous.power_limit_w is None) or \
        (setting == "persistence_mode" and previous.persistence_mode is None)


@dataclass
class RunLevers:
    """One run's settings on its GPUs: `apply` (all or none) and `restore`."""

    control: GpuControl
    settings: GpuSettings
    uuids: Sequence[str]
    run_dir: Path | None = None
    directory: Path = field(default_factory=lambda: lock_dir())
    records: list[RestoreRecord] = field(default_factory=list)
    applied: dict[str, list[str]] = field(default_factory=dict)  # uuid -> settings set so far

    def apply(self) -> None:
        """Write every GPU's restore record, then change the settings. ControlError when one
        is refused, with every change made before it undone (never half-applied)."""
        changes = [s for s in ORDER if getattr(self.settings, s) is not None]
        pid, started = _me()
        try:
            for uuid in self.uuids:
                restore_stale(self.control, uuid, self.directory)
                previous = self.control.state(uuid)
                for s in changes:
                    if _unrestorable(s, previous):
                        raise ControlError(f"gpu.{s}", uuid, "its current value cannot be read, so it could "
                                           "not be put back after the run; not changed")
                record = RestoreRecord(
                    uuid=uuid, name=self.control.constraints(uuid).name, host=platform.node(), owner_pid=pid,
                    owner_started=started, started_at=utc_now(), run_dir=str(self.run_dir) if self.run_dir else None,
                    previous=previous, changes=changes, requested=self.settings.requested())
                _write(record, record_path(uuid, self.directory))  # before anything on this GPU changes
                self.records.append(record)
            for record in self.records:
                for s in changes:
                    _apply_one(self.control, record.uuid, s, self.settings)
                    self.applied.setdefault(record.uuid, []).append(s)
        except BaseException:
            self.restore(raise_on_failure=False)
            raise

    def restore(self, raise_on_failure: bool = True) -> list[str]:
        """Put back what `apply` changed; each GPU's record is removed once it is back.
        A GPU that could not be put back keeps its record (the next llem start retries)
        and, with `raise_on_failure`, stops the study: every later run would measure it
        changed, and take the changed values for the ones to restore."""
        said, stuck = [], []
        for record in self.records:
            path = record_path(record.uuid, self.directory)
            try:
                done = undo(self.control, record, self.applied.get(record.uuid, []))
            except ControlError as e:
                stuck.append(f"{e} (record kept in {path}; the next llem start retries)")
                continue
            path.unlink(missing_ok=True)
            if done:
                said.append(f"GPU {record.uuid}: {', '.join(done)}")
        self.records, self.applied = [], {}
        if stuck and raise_on_failure:
            raise Failure("could not put back the gpu: settings of " + "; ".join(stuck)
                          + "; the study stopped so that no run measures a GPU left changed")
        return said


# -- a dead owner's records: restored at the next start ----------------------------------


def _claimer(path: Path) -> int | None:
    return int(path.name.rsplit(CLAIM, 1)[1]) if CLAIM in path.name else None


def _claim(path: Path) -> Path | None:
    """Take a record for restoring (rename: only one llem wins); None if another took it."""
    base = path.name.split(CLAIM, 1)[0]
    claimed = path.with_name(f"{base}{CLAIM}{os.getpid()}")
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return None
    return claimed


def _orphaned(path: Path) -> RestoreRecord | None:
    """The record at `path` if its owner (or the llem that was restoring it) is gone."""
    record = _read(path)
    if record is None or record.host != platform.node():
        return None
    claimer = _claimer(path)
    if claimer is not None:
        return record if claimer != os.getpid() and not pid_alive(claimer) else None
    if record.owner_pid == os.getpid() or _owner_alive(record.owner_pid, record.owner_started):
        return None
    return record


def _restore_claimed(control: GpuControl, record: RestoreRecord, claimed: Path) -> str:
    try:
        done = undo(control, record)
    except ControlError:
        os.rename(claimed, claimed.with_name(claimed.name.split(CLAIM, 1)[0]))  # left for a later start
        raise
    claimed.unlink(missing_ok=True)
    return (f"restored GPU {record.uuid} ({record.name}): {', '.join(done)}; llem pid {record.owner_pid} "
            f"changed it at {record.started_at} and did not put it back")


def restore_stale(control: GpuControl, uuid: str, directory: Path) -> str | None:
    """Before a run changes a GPU: a record left for it by a dead llem, or by this one
    (a restore that failed earlier), is restored first, so that the values recorded as
    "previous" are never values llem set. ControlError when another live llem holds it."""
    for path in sorted(directory.glob(f"{RECORD_PREFIX}{_safe(uuid)}.json*")):
        record = _read(path)
        if record is None:
            continue
        claimer = _claimer(path)
        if claimer is not None and claimer != os.getpid() and pid_alive(claimer):
            raise ControlError("gpu", uuid, f"llem pid {claimer} is restoring this GPU's settings right now")
        mine = record.owner_pid == os.getpid()
        if claimer is None and not mine and _owner_alive(record.owner_pid, record.owner_started):
            raise ControlError("gpu", uuid, f"llem pid {record.owner_pid} has changed settings on this GPU and "
                               "still runs; two studies must not change one GPU")
        claimed = _claim(path)
        if claimed is not None:
            return _restore_claimed(control, record, claimed)
    return None


def restore_orphans(notify: Notify, directory: Path | None = None,
                    opener: Callable[[], GpuControl] | None = None) -> list[str]:
    """Every record on this host whose owner died, restored; one line said per GPU.
    Cheap when there is none (a directory listing): it runs at every llem start."""
    d = directory or Path(os.environ.get(ENV_LOCK_DIR) or DEFAULT_LOCK_DIR)
    if not d.is_dir():
        return []
    orphans = [(p, r) for p in sorted(d.glob(f"{RECORD_PREFIX}*.json*")) if (r := _orphaned(p)) is not None]
    if not orphans:
        return []
    try:
        control = (opener or gpu_control.open_control)()
    except ControlUnavailable as e:
        notify(f"warning: {len(orphans)} GPU(s) were left with changed settings by a llem that died, and they "
               f"cannot be restored here: {e}. Records: {', '.join(str(p) for p, _ in orphans)}")
        return []
    said = []
    for path, record in orphans:
        claimed = _claim(path)
        if claimed is None:
            continue
        try:
            line = _restore_claimed(control, record, claimed)
        except ControlError as e:
            notify(f"warning: could not restore GPU {record.uuid} ({record.name}) left changed by llem pid "
                   f"{record.owner_pid}: {e}; {NEEDS_PERMISSION if e.no_permission else 'retried at the next start'}")
            continue
        notify(line)
        said.append(line)
    return said


def restore_at_start(notify: Notify) -> None:
    """`llem` starting: restore what dead llems left changed, never stopping the command
    (a broken lock directory is the lock code's to report, when it needs it)."""
    try:
        restore_orphans(notify)
    except (OSError, UserError) as e:
        notify(f"warning: could not look for GPU settings left changed by a dead llem ({e})")


# -- the shared run path ------------------------------------------------------------------


def run_gpus(runner: RunnerBase, job: RunJob, gpus: Sequence[str] | None = None) -> list[str]:
    """The GPUs a run uses on this host: the ones given (a Slurm allocation), the
    parallel scheduler's choice, else the runner's reading of the run's device."""
    if gpus is not None:
        return list(gpus)
    return list(job.gpus) or runner.gpu_uuids(job.config)


def _refused(job: RunJob, why: str) -> RunOutcome:
    """A run whose settings could not be applied: failed with the reason, nothing ran."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    now = utc_now()
    failures.write_error_file(job.run_dir, failures.ErrorReport(
        failures.INFRASTRUCTURE, why, None, job.config.config_hash(), now, now))
    return RunOutcome("failed", None, error=why, kind=failures.INFRASTRUCTURE)


def execute(runner: Runner, job: RunJob, gpus: Sequence[str] | None = None) -> RunOutcome:
    """Run one run with its experiment's gpu: settings on its GPUs, restored after it
    whatever happens (Ctrl-C and SIGTERM unwind through here); a run without them runs
    as it is. Raises Failure when a GPU could not be put back."""
    settings = job.config.gpu
    if settings is None:
        return runner.execute(job)
    uuids = run_gpus(runner, job, gpus)
    if not uuids:
        return _refused(job, "gpu: settings, but the run has no GPU on this host to apply them to")
    try:
        levers = RunLevers(gpu_control.open_control(), settings, uuids, job.run_dir)
        levers.apply()
    except (ControlError, ControlUnavailable) as e:
        return _refused(job, f"gpu: settings could not be applied ({e}); nothing was left changed")
    try:
        return runner.execute(job)
    finally:
        levers.restore()


# -- before the study: values against constraints, then permission ------------------------


def _range(values: Sequence[int]) -> str:
    return f"{min(values)} to {max(values)} MHz"


def value_problems(settings: GpuSettings, uuid: str, c: GpuConstraints) -> list[str]:
    """Each requested value the GPU's own constraints do not allow, with the allowed range."""
    out = []
    where = f"GPU {uuid} ({c.name})"
    if settings.power_limit_w is not None:
        if c.power_limit_w is None:
            out.append(f"gpu.power_limit_w: {where} reports no power limit range (NVML); it cannot be capped")
        elif not c.power_limit_w[0] <= settings.power_limit_w <= c.power_limit_w[1]:
            lo, hi = c.power_limit_w
            out.append(f"gpu.power_limit_w: {settings.power_limit_w:g} W is outside what {where} allows: "
                       f"{lo:g} to {hi:g} W")
    for name, supported, what in (("sm_clocks_mhz", c.sm_clocks_mhz, "SM"),
                                  ("memory_clocks_mhz", c.memory_clocks_mhz, "memory")):
        wanted = getattr(settings, name)
        if wanted is None:
            continue
        if not supported:
            out.append(f"gpu.{name}: {where} reports no supported {what} clocks (NVML); they cannot be locked")
        elif wanted[0] < min(supported) or wanted[1] > max(supported):
            out.append(f"gpu.{name}: {wanted} MHz is outside the {what} clocks {where} supports: "
                       f"{_range(supported)}")
    return out


@dataclass
class LeverPlan:
    """Which GPUs of this host a study changes, and how (for the permission probe)."""

    control: GpuControl
    settings_by_gpu: dict[str, set[str]] = field(default_factory=dict)  # uuid -> gpu.* settings used on it

    def probe(self, notify: Notify | None = None) -> None:
        """Check, once the devices are locked and before any run, that every setting the
        study changes may be changed on every GPU it changes it on, by writing what is
        already there (the power limit and persistence mode they have; clocks reset,
        which is the state llem restores them to). UserError naming the setting, the GPU
        and NVML's error when refused."""
        for uuid, used in sorted(self.settings_by_gpu.items()):
            state = self.control.state(uuid)
            try:
                for s in (s for s in ORDER if s in used):
                    if s == "power_limit_w" and state.power_limit_w is not None:
                        self.control.set_power_limit_w(uuid, state.power_limit_w)
                    elif s == "persistence_mode" and state.persistence_mode is not None:
                        self.control.set_persistence_mode(uuid, state.persistence_mode)
                    elif s == "sm_clocks_mhz":
                        self.control.reset_sm_clocks(uuid)
                    elif s == "memory_clocks_mhz":
                        self.control.reset_memory_clocks(uuid)
            except ControlError as e:
                name = self.control.constraints(uuid).name
                why = NEEDS_PERMISSION if e.no_permission else "NVML refuses to change it on this GPU"
                raise UserError(f"{e.setting}: cannot be changed on GPU {uuid} ({name}): NVML: {e.nvml_error}; "
                                f"{why}. Nothing was changed and no run started") from None
        if notify is not None and self.settings_by_gpu:
            notify(f"gpu: settings are applied to each run's GPUs before it starts and put back after it "
                   f"(restore records in {lock_dir()})")


def _study_gpus(runner: RunnerBase, config) -> list[str]:  # type: ignore[no-untyped-def]
    """The GPUs an experiment's runs may use here: any of the host's for the parallel
    scheduler (it chooses at run time), else the runner's reading of its device."""
    every = getattr(runner, "uuids", None)
    if isinstance(every, list):  # execution/parallel.py ParallelRunner
        return list(every)
    return runner.gpu_uuids(config)


def check_levers(study: Study, runner: RunnerBase, placements: Mapping[int, Placement], strict: bool,
                 notify: Notify, opener: Callable[[], GpuControl] | None = None) -> LeverPlan | None:
    """Validate every experiment's gpu: settings against this host's GPUs; the plan to
    probe. Strict (a real run): UserError (exit 2) naming the experiment, the setting and
    the allowed range. A dry run: the problem goes into the experiment's placement, so the
    plan still shows. A Slurm study is checked by each task on its node."""
    levered = [e for e in study.experiments if e.config.gpu is not None]
    if not levered:
        return None
    if runner.name == "slurm":
        notify("gpu: settings are applied by each Slurm task on its node, and checked there against its GPUs")
        return None
    try:
        control = (opener or gpu_control.open_control)()
    except ControlUnavailable as e:
        control, why = None, (f"gpu: settings need an NVIDIA GPU whose settings NVML can change on this host "
                              f"({e}); remove gpu: or run the study on a GPU machine")
    plan = LeverPlan(control) if control is not None else None
    for exp in levered:
        settings = exp.config.gpu
        assert settings is not None
        if control is None:
            problems = [why]
        else:
            gpus = _study_gpus(runner, exp.config)
            problems = [f"gpu: settings, but this experiment runs on the CPU here (device: {exp.config.device}, "
                        f"{runner.name} runner); remove gpu: or give it a GPU"] if not gpus else []
            for uuid in gpus:
                problems += value_problems(settings, uuid, control.constraints(uuid))
                plan.settings_by_gpu.setdefault(uuid, set()).update(settings.requested())  # type: ignore[union-attr]
        if problems:
            where = f"experiment {exp.index} ({exp.label})" if study.is_study else "experiment"
            if strict:
                raise UserError(f"{where}: " + "; ".join(problems))
            placements[exp.index].problem = placements[exp.index].problem or "; ".join(problems)
    return plan
