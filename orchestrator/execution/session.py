"""One session of work on a study: `llem run` (a new study directory) or
`llem run --resume DIR` (an existing one), from taking the devices to the last run.

    take the device locks (or queue behind their holder with --wait)
    -> create the study directory and its manifest (or reconcile a resumed one)
    -> hand the runs to the runner: one at a time (loop.py) or the whole plan
    -> release everything, whatever happened

Nothing is created on disk before the devices are free. A new study directory in
which nothing started (e.g. sbatch refused the array) is removed again. What comes
before (loading, planning, preparing) and after (tables, summary, report) is the
caller's: this package never reaches up into analysis.
"""

from __future__ import annotations

import errno
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from llenergymeasure.orchestrator.errors import Failure, NothingStarted, UserError
from llenergymeasure.orchestrator.execution import auto_cycles, gpu_levers
from llenergymeasure.orchestrator.execution import resume as resuming
from llenergymeasure.orchestrator.execution.locks import DeviceLocks, FileLock, lock_study_dir
from llenergymeasure.orchestrator.execution.loop import Progress, run_plan
from llenergymeasure.orchestrator.execution.manifest import AnalysisRecord, Manifest, StudyLost
from llenergymeasure.orchestrator.execution.recording import LoopResult, Policy, resume_hint
from llenergymeasure.orchestrator.execution.runners.base import PlanRunner, Runner
from llenergymeasure.orchestrator.execution.signals import sigterm_interrupts
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.study.preflight import Placement
from llenergymeasure.orchestrator.study.spec import Study


@dataclass
class PreparedStudy:
    """A study ready to execute: loaded, planned, its runner chosen and prepared."""

    study: Study
    plan: list[PlannedRun]
    runner: Runner | PlanRunner
    placements: dict[int, Placement]
    images: dict[str, str] | None = None  # backend -> expected image tag and whether it is present
    engines: dict[int, str] | None = None  # experiment index -> TensorRT-LLM engine key and cache state
    levers: gpu_levers.LeverPlan | None = None  # the GPUs whose gpu: settings the study changes here

    @property
    def runnable(self) -> bool:
        return all(p.problem is None for p in self.placements.values())


@dataclass
class SessionSettings:
    """How this session runs the study (what `llem run`'s options say)."""

    output: Path  # results root for a new study directory
    resumed: Manifest | None = None  # the study being resumed (its directory is locked by the caller)
    retry_failed: bool = False
    fail_fast: bool = False
    wait: bool = False  # queue behind a study holding the devices instead of refusing
    detach: bool = False  # a whole-plan runner returns once the plan is submitted
    cycles_override: int | None = None
    analysis: AnalysisRecord = field(default_factory=AnalysisRecord)
    reproduces: Path | None = None
    on_created: Callable[[Path], None] | None = None  # called when a new study directory exists, before any run


def check_output_root(root: Path) -> None:
    """`-o ROOT` must be (or become) a directory llem can create study directories in.
    Checked before anything exists, so that a bad -o is one message (exit 2), not a
    traceback once the devices are taken and the images built."""
    existing = next((p for p in (root, *root.parents) if p.exists()), Path("."))
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == root else f"is under {existing}, which is a file"
        raise UserError(f"-o {root}: {where}, not a directory; give the directory to create study "
                        "directories in (it is created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"-o {root}: cannot create a study directory there ({existing} is not writable "
                        "for this user); give a directory you can write to")


def _cannot_create(root: Path, e: OSError) -> Exception:
    """Creating the study directory failed: a full disk is a failure (exit 1), anything
    else (not a directory, no permission, a read-only file system) the -o given (exit 2)."""
    why = e.strerror or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return Failure(f"cannot create the study directory under {root} ({why}); nothing was run")
    return UserError(f"-o {root}: cannot create a study directory there ({why}: {e.filename or root}); "
                     "give a directory you can write to")


def new_study_dir(root: Path, name: str) -> Path:
    """A new, empty study directory under `root`, named by the study and the UTC time."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            candidate = root / (f"{name}_{stamp}" + (f"-{n}" if n > 1 else ""))
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as e:
        raise _cannot_create(root, e) from None
    raise Failure(f"cannot create a study directory under {root}: 999 studies named {name} this second")


class Session:
    def __init__(self, prepared: PreparedStudy, settings: SessionSettings, notify: Notify) -> None:
        self.prepared, self.settings, self.notify = prepared, settings, notify
        self.manifest: Manifest | None = settings.resumed
        self.opened = False  # the study directory is this session's (created, or reconciled on resume)
        self.discarded = False  # a new study directory removed again because nothing started
        self.lost = False  # the study directory (or its results) disappeared: write nothing more there
        self._study_lock: FileLock | None = None

    def run(self, progress: Progress) -> LoopResult | None:
        """The plan's runs (those not done yet, on resume); None when detached."""
        s, study = self.settings, self.prepared.study
        holder = str(s.resumed.study_dir) if s.resumed else f"study '{study.name}' (results under {s.output.resolve()})"
        devices = DeviceLocks(self.prepared.runner.lock_keys(study, self.prepared.placements), holder)
        with sigterm_interrupts():
            devices.acquire(wait=s.wait, notify=self.notify)
            try:
                gpu_levers.restore_orphans(self.notify)  # left by a llem that died while we waited
                if self.prepared.levers is not None:  # permission, before anything exists: never half-run
                    self.prepared.levers.probe(self.notify)
                todo = self._open()
                self.opened = True
                self._begin(devices.devices)
                return self._dispatch(todo, progress)
            except StudyLost:
                self.lost = True
                raise
            finally:
                self.prepared.runner.close()  # e.g. the local runner's launcher: before the devices are free
                if self._study_lock is not None:
                    self._study_lock.release()
                devices.release()
                if self.discarded and self.manifest is not None:
                    shutil.rmtree(self.manifest.study_dir, ignore_errors=True)

    def _open(self) -> list[PlannedRun]:
        """The manifest this session works on, and the runs it will run."""
        if self.settings.resumed is not None:
            return self._resume()
        study_dir = new_study_dir(self.settings.output, self.prepared.study.name)
        try:
            self._fill(study_dir)
        except BaseException as e:  # Ctrl-C, a full disk: a half-made study directory is not left behind
            shutil.rmtree(study_dir, ignore_errors=True)
            self.manifest = None
            if isinstance(e, OSError) and e.errno is not None:
                raise Failure(f"cannot write the new study directory {study_dir} ({e.strerror}); "
                              "it was removed again and nothing was run") from None
            raise
        return self.prepared.plan

    def _fill(self, study_dir: Path) -> None:
        """A new study directory's first files: the study lock, the study file, the manifest."""
        study, s = self.prepared.study, self.settings
        self._study_lock = lock_study_dir(study_dir)
        shutil.copyfile(study.path, study_dir / study.path.name)  # the study file as given
        self.manifest = Manifest.create(study_dir, study, self.prepared.plan, self.prepared.runner.name,
                                        analysis=s.analysis, cycles_override=s.cycles_override,
                                        reproduces=str(s.reproduces) if s.reproduces else None,
                                        study_base_dir=str(study.base_dir) if study.base_dir else None)
        if s.on_created is not None:
            s.on_created(study_dir)

    def _resume(self) -> list[PlannedRun]:
        manifest = self.manifest
        assert manifest is not None
        # a Slurm study's runs belong to Slurm (its runner refuses to resubmit while any is queued or running)
        killed = resuming.kill_leftovers(manifest.study_dir) if manifest.runner != "slurm" else []
        if killed:
            self.notify(f"stopped {len(killed)} leftover run process(es) of this study: {killed}")
        for note in resuming.reconcile(manifest):
            self.notify(f"resume: {note}")
        again, kept = resuming.to_rerun(manifest, self.settings.retry_failed)
        if kept:
            self.notify(f"resume: {len(kept)} failed run(s) kept as they are ({', '.join(kept)}); "
                        "--retry-failed runs them again")
        self.notify(f"resume: {manifest.counts()['done']} run(s) already done and kept; {len(again)} to run")
        wanted = set(again)
        return [p for p in self.prepared.plan if p.run_id in wanted]

    def _begin(self, devices: list[str]) -> None:
        """What this session ran with: on resume, timeouts and gaps may differ from the first."""
        assert self.manifest is not None
        s, study = self.settings, self.prepared.study
        self.manifest.begin_session(
            command="resume" if s.resumed else "run", pid=os.getpid(), host=platform.node(), devices=devices,
            study_file=str(study.path), execution=study.execution.model_dump(mode="json"),
            retry_failed=s.retry_failed, fail_fast=s.fail_fast)
        self.notify(f"results: {self.manifest.study_dir}")

    def _dispatch(self, todo: list[PlannedRun], progress: Progress) -> LoopResult | None:
        """`todo`, then (n_cycles: auto) each added cycle, until no configuration needs one."""
        manifest, execution = self.manifest, self.prepared.study.execution
        assert manifest is not None
        policy = Policy(fail_fast=self.settings.fail_fast, max_consecutive_failures=execution.max_consecutive_failures)
        pub = execution.publication
        try:
            result = self._run_runs(todo, progress, policy, None)
            previous = todo[-1] if todo else None
            while execution.auto and result is not None and result.stopped is None:
                added = auto_cycles.next_round(manifest, execution, self.notify,
                                               energy=pub is None or pub.energy_required)
                if not added:
                    break
                more = self._run_runs(added, progress, policy, previous)
                assert more is not None  # only a detached Slurm study returns None, and Slurm refuses auto
                result, previous = LoopResult(result.failed + more.failed, more.stopped), added[-1]
            return result
        except KeyboardInterrupt:
            self.notify(f"to continue this study: {resume_hint(manifest)}")
            raise
        except NothingStarted:
            self.discarded = self.settings.resumed is None  # a new study that never started: leave nothing behind
            raise

    def _run_runs(self, runs: list[PlannedRun], progress: Progress, policy: Policy,
                  previous: PlannedRun | None) -> LoopResult | None:
        """`runs` through the runner: the whole list at once (Slurm, parallel GPUs) or one by
        one (`previous`: the run before them, for the gap between cycles)."""
        manifest, runner = self.manifest, self.prepared.runner
        assert manifest is not None
        if isinstance(runner, PlanRunner):  # Slurm, parallel GPUs: the plan at once
            return runner.run_whole(manifest, [p.run_id for p in runs], self.notify, policy=policy,
                                    detach=self.settings.detach)
        progress.begin(runs, len(manifest.runs))
        return run_plan(manifest, self.prepared.study, runs, runner, progress, policy, previous=previous)
