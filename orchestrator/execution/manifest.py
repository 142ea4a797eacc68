"""`manifest.json`: the expanded plan and every run's state, rewritten atomically
after each state change so that a crash never leaves it half-written.

Run states: pending -> running -> done | failed (with the reason and its kind,
orchestrator/execution/failures.py); skipped (with the reason) when the study stopped early
on purpose (--fail-fast, too many failures in a row). `--resume` re-runs pending,
skipped and interrupted runs (failed ones with --retry-failed); each earlier try
of a run is kept in its `attempts` (its files under attempts/<run id>/<n>/).

With `n_cycles: auto` the plan grows while the study runs: each added cycle's runs are
appended (`add_runs`), pending, after everything planned so far, and saved before any of
them starts.

The study's own `status`: running | finished | paused | stopped | interrupted |
failed, with `status_reason`; `sessions` lists every `llem run` / `--resume` that
worked on the study.

Every record is a pydantic model that refuses unknown keys: a field exists here or
nowhere. Optional parts (a run's GPUs under parallel scheduling, its Slurm task, the
study a reproduction re-runs) are left out of the file when unset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from llenergymeasure.backends import __version__
from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.contract import RESULT_FILE, SCHEMA_VERSION
from llenergymeasure.orchestrator.errors import Failure, UserError
from llenergymeasure.orchestrator.execution.layout import StudyLayout
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.study.spec import Study

RunState = Literal["pending", "running", "done", "failed", "skipped"]
STATES: tuple[RunState, ...] = ("pending", "running", "done", "failed", "skipped")
StudyStatus = Literal["running", "finished", "paused", "stopped", "interrupted", "failed"]


def _unset(value: Any) -> bool:
    return value is None


class StudyLost(Failure):
    """The study directory, its manifest or a finished run's result.json disappeared
    while llem worked on the study. The study stops (exit 1) instead of writing on:
    every write would recreate the directory, and a recreated study would claim
    results it no longer has."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Attempt(_Record):
    """An earlier try of a run, as it ended; its files moved to attempts/<run id>/<n>/."""

    state: RunState
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    error: str | None = None
    failure_kind: str | None = None
    files: str | None = None  # relative to the study directory; None when the try left no files


class SlurmTask(_Record):
    """Where Slurm ran a run, in Slurm's own words."""

    job_id: str | None = None
    array_task_id: int | None = None
    state: str | None = None  # PENDING, RUNNING, COMPLETED, TIMEOUT, ... (UNKNOWN when Slurm forgot it)
    node: str | None = Field(None, exclude_if=_unset)
    gpu_uuids: list[str] | None = Field(None, exclude_if=_unset)


class RunEntry(_Record):
    run_id: str  # e.g. "e03-c2"
    experiment_index: int
    cycle: int
    position: int  # 1-based place in the execution order
    run_dir: str  # relative to the study directory (StudyLayout.run_dir)
    state: RunState = "pending"
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    error: str | None = None
    failure_kind: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    gpu_uuids: list[str] | None = Field(None, exclude_if=_unset)  # placed by the parallel scheduler
    slurm: SlurmTask | None = Field(None, exclude_if=_unset)

    @classmethod
    def planned(cls, run: PlannedRun) -> RunEntry:
        """A planned run, pending."""
        return cls(run_id=run.run_id, experiment_index=run.experiment_index, cycle=run.cycle,
                   position=run.position, run_dir=StudyLayout.run_dir_entry(run.run_id))

    def reset(self) -> None:
        """Pending again, with nothing of the last try (which the caller kept)."""
        self.state, self.started_at, self.finished_at = "pending", None, None
        self.exit_code, self.error, self.failure_kind = None, None, None

    def as_attempt(self, files: str | None = None) -> Attempt:
        return Attempt(state=self.state, started_at=self.started_at, finished_at=self.finished_at,
                       exit_code=self.exit_code, error=self.error, failure_kind=self.failure_kind, files=files)


class ExperimentEntry(_Record):
    index: int  # 1-based, in expansion order
    id: str  # config hash
    label: str
    origin: str
    swept: dict[str, Any]
    config: dict[str, Any]  # ExperimentConfig as JSON, without unset values


class SessionEntry(_Record):
    """One `llem run` or `--resume` that worked on the study."""

    started_at: str
    command: Literal["run", "resume"]
    pid: int
    host: str
    devices: list[str]  # the device locks it held
    study_file: str
    execution: dict[str, Any]  # its execution settings (timeouts and gaps may change on resume)
    retry_failed: bool = False
    fail_fast: bool = False


class AnalysisRecord(_Record):
    """The reference experiment and the prices/intensity in force, with where each came from."""

    reference_index: int = 1
    costs: dict[str, Any] = Field(default_factory=dict)
    cost_sources: dict[str, str] = Field(default_factory=dict)
    max_cv: float = 0.05  # analysis.max_cv: above it a configuration is flagged high_variance


class Submission(_Record):
    job_id: str
    runs: list[str]  # run ids; array index i runs runs[i]
    script: str | None = None  # relative to the study directory
    submitted_at: str | None = None
    submit_s: float | None = None


class SlurmRecord(_Record):
    settings: dict[str, Any] = Field(default_factory=dict)  # the resolved slurm: section
    submissions: list[Submission] = Field(default_factory=list)


class Manifest(_Record):
    schema_version: int = SCHEMA_VERSION
    tool_version: str = __version__
    study_name: str
    study_file: str  # the copy in the study directory
    # where the study file was: its relative paths (model, dataset) mean files there, also
    # when the copy is loaded again (resume) or its lock (reproduce)
    study_base_dir: str | None = None
    created_at: str
    runner: str
    status: StudyStatus = "running"
    status_reason: str | None = None
    sessions: list[SessionEntry] = Field(default_factory=list)
    execution: dict[str, Any]  # the study's execution settings when it was created
    analysis: AnalysisRecord = Field(default_factory=AnalysisRecord)
    cycles_override: int | None = None  # --cycles, so that --resume expands the same plan
    reproduces: str | None = Field(None, exclude_if=_unset)  # the study directory this one re-runs
    experiments: list[ExperimentEntry]
    runs: list[RunEntry]
    slurm: SlurmRecord | None = Field(None, exclude_if=_unset)

    _study_dir: Path = PrivateAttr()
    _on_disk: bool = PrivateAttr(default=False)  # saved or loaded: from then on its file must stay there

    # -- creating, reading, writing
    @classmethod
    def create(cls, study_dir: Path, study: Study, plan: list[PlannedRun], runner: str,
               **fields: Any) -> Manifest:
        """A new study's manifest (all runs pending), saved. `fields`: analysis,
        cycles_override, reproduces."""
        manifest = cls(
            study_name=study.name, study_file=study.path.name, created_at=utc_now(), runner=runner,
            execution=study.execution.model_dump(mode="json"),
            experiments=[ExperimentEntry(index=e.index, id=e.id, label=e.label, origin=e.origin, swept=e.swept,
                                         config=e.config.model_dump(mode="json", exclude_none=True))
                         for e in study.experiments],
            runs=[RunEntry.planned(r) for r in plan],
            **fields,
        )
        manifest._study_dir = study_dir
        manifest.save()
        return manifest

    @classmethod
    def load(cls, study_dir: Path) -> Manifest:
        """Raises OSError (unreadable) or pydantic.ValidationError (not a manifest of this llem)."""
        manifest = cls.model_validate_json(StudyLayout(study_dir).manifest.read_bytes())
        manifest._study_dir, manifest._on_disk = study_dir, True
        return manifest

    def save(self) -> None:
        """Atomically; StudyLost when the study directory or this file was removed since
        (writing would silently recreate the directory)."""
        if self._on_disk:
            self.check_intact(results=False)
        write_json_atomic(self.layout.manifest, self.model_dump(mode="json"))
        self._on_disk = True

    def lost(self, results: bool = True) -> str | None:
        """What of the study is gone from disk: the directory, the manifest, or (with
        `results`) the result.json of runs the manifest says are done; None when nothing."""
        done = [r.run_id for r in self.runs if r.state == "done"]
        if not self._study_dir.is_dir():
            return (f"the study directory {self._study_dir} was removed"
                    + (f" (with the results of finished run(s) {', '.join(done)})" if done else ""))
        if not self.layout.manifest.is_file():
            return f"{self.layout.manifest} was removed"
        gone = [r for r in done if not (self.run_dir(r) / RESULT_FILE).is_file()] if results else []
        if gone:
            return f"the {RESULT_FILE} of finished run(s) {', '.join(gone)} was removed from {self._study_dir}"
        return None

    def check_intact(self, results: bool = True) -> None:
        """Raise StudyLost, saying what is gone, unless the study is still all there."""
        what = self.lost(results)
        if what is not None:
            raise StudyLost(f"{what} while llem worked on the study. The study stopped; llem does not "
                            "recreate a removed study directory. Restore it (e.g. from a backup) and "
                            f"continue with `llem run --resume {self._study_dir}`, or run the study again")

    @property
    def study_dir(self) -> Path:
        return self._study_dir

    @property
    def layout(self) -> StudyLayout:
        return StudyLayout(self._study_dir)

    # -- looking things up
    def run(self, run_id: str) -> RunEntry:
        return next(r for r in self.runs if r.run_id == run_id)

    def experiment(self, index: int) -> ExperimentEntry:
        return self.experiments[index - 1]

    def run_dir(self, run_id: str) -> Path:
        return self._study_dir / self.run(run_id).run_dir

    def in_order(self) -> list[RunEntry]:
        """The runs in execution order."""
        return sorted(self.runs, key=lambda r: r.position)

    def planned(self) -> list[PlannedRun]:
        return [PlannedRun(r.run_id, r.experiment_index, r.cycle, r.position) for r in self.runs]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for r in self.runs:
            out[r.state] += 1
        return out

    def unfinished(self) -> list[str]:
        return [r.run_id for r in self.runs if r.state != "done"]

    # -- changing state (each change saved before the next step)
    def update(self, run_id: str, state: RunState, **fields: Any) -> None:
        run = self.run(run_id)
        run.state = state
        for name, value in fields.items():
            setattr(run, name, value)
        self.save()

    def set_status(self, status: StudyStatus, reason: str | None = None) -> None:
        self.status, self.status_reason = status, reason
        self.save()

    def begin_session(self, **info: Any) -> None:
        self.sessions.append(SessionEntry(started_at=utc_now(), **info))
        self.status, self.status_reason = "running", None
        self.save()

    def add_runs(self, runs: list[PlannedRun]) -> None:
        """Runs planned on the fly (n_cycles: auto's added cycles), pending, after every run
        planned so far; the study is running again until they are done."""
        taken = {r.run_id for r in self.runs}
        assert not taken & {r.run_id for r in runs} and all(r.position > len(self.runs) for r in runs)
        self.runs = [*self.runs, *(RunEntry.planned(r) for r in runs)]
        self.status, self.status_reason = "running", None
        self.save()

    def new_attempt(self, run_id: str, files: str | None) -> int:
        """Move the run's last try into `attempts` (its files already moved to `files`)
        and make it pending again; returns the number of the try moved."""
        run = self.run(run_id)
        run.attempts = [*run.attempts, run.as_attempt(files)]
        run.reset()
        self.save()
        return len(run.attempts)


STUDY_DIR_HINT = "give the study directory `llem run` printed as `results: ...` (e.g. results/<study>_<timestamp>)"


def open_study_manifest(path: Path, option: str = "") -> Manifest:
    """The manifest of the study directory `path`, or UserError saying why it is not one
    (`option`: the command-line option that named it, e.g. --resume, for the message)."""
    where = f"{option}: {path}" if option else str(path)
    file = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if file == path:
        raise UserError(f"{where}: is a file, not a study directory; {STUDY_DIR_HINT}")
    if file is not None:
        raise UserError(f"{where}: {file} is a file, so this is not a study directory; {STUDY_DIR_HINT}")
    if not path.exists():
        raise UserError(f"{where}: no such directory; {STUDY_DIR_HINT}")
    manifest_file = StudyLayout(path).manifest
    if not manifest_file.is_file():
        raise UserError(f"{where}: not a study directory (no {manifest_file.name}); {STUDY_DIR_HINT}")
    try:
        raw = json.loads(manifest_file.read_bytes())
    except (OSError, ValueError) as e:
        raise UserError(f"{manifest_file}: cannot be read: a damaged manifest ({type(e).__name__}: {e}); "
                        "it is not one llem wrote") from None
    if isinstance(raw, dict) and raw.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise UserError(f"{manifest_file}: schema_version {raw['schema_version']} is not this llem's "
                        f"({SCHEMA_VERSION}); use the llem version that wrote it")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
        raise UserError(f"{manifest_file}: a damaged manifest, not one this llem wrote ({problems})") from None
    manifest._study_dir, manifest._on_disk = path, True
    return manifest
