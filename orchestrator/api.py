"""The library's entry points, one code path with the `llem` commands of the same name.

A study's path through `run()` reads top to bottom, one step per package:

    load      study/       the study file -> validated experiments
    plan      study/       the run order; the runner and every experiment's placement
    prepare   build/       images and TensorRT-LLM engines (publication/ checks the pins)
    execute   execution/   device locks, the study directory, one run at a time or the plan at once
    finish    analysis/    runs.parquet, summary.parquet, report.html

Nothing is created on disk until the whole study has validated and its devices are
free. `RunOptions(resume=DIR)` continues a study through the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from llenergymeasure.orchestrator.analysis.concurrency import concurrency_note
from llenergymeasure.orchestrator.analysis.finish import Finished, finish_study, save_runs_table
from llenergymeasure.orchestrator.build.engines import gpu_for, plan_engines, trtllm_version
from llenergymeasure.orchestrator.build.images import image_status
from llenergymeasure.orchestrator.errors import Failure, UserError
from llenergymeasure.orchestrator.execution import resume as resuming
from llenergymeasure.orchestrator.execution.choose_runner import choose_runner
from llenergymeasure.orchestrator.execution.gpu_levers import check_levers
from llenergymeasure.orchestrator.execution.locks import lock_dir, lock_study_dir
from llenergymeasure.orchestrator.execution.manifest import AnalysisRecord, Manifest, open_study_manifest
from llenergymeasure.orchestrator.execution.recording import LoopResult, resume_hint
from llenergymeasure.orchestrator.execution.session import (
    PreparedStudy, Session, SessionSettings, check_output_root,
)
from llenergymeasure.orchestrator.execution.signals import Interrupted, describe, exit_code
from llenergymeasure.orchestrator.execution.slurm import followup
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.publication import checks as publication
from llenergymeasure.orchestrator.publication.lock import pins, record_cycles_run, verify_lock, write_bundle
from llenergymeasure.orchestrator.study.analysis_section import merged_costs
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.plan import PlannedRun, plan_for
from llenergymeasure.orchestrator.study.preflight import check_study
from llenergymeasure.orchestrator.study.size import confirm_run_count
from llenergymeasure.orchestrator.study.spec import Publication, Study
from llenergymeasure.orchestrator.study.user_config import load_user_config
from llenergymeasure.orchestrator.terminal import Terminal


@dataclass(frozen=True)
class RunOptions:
    """How to run a study: what `llem run`'s options say (the CLI builds one)."""

    runner: str | None = None  # auto | local | docker | slurm; None: the study's execution.runner, else auto
    output: Path = Path("results")  # results root; the study directory is created under it
    cycles: int | None = None  # overrides execution.n_cycles
    dry_run: bool = False  # print the plan, run nothing
    resume: Path | None = None  # continue the study in this directory
    retry_failed: bool = False  # with resume: run failed runs again too
    fail_fast: bool = False  # stop the study at the first failed run
    yes: bool = False  # run a very large study without asking
    wait: bool = False  # queue behind a study holding the same devices instead of refusing
    publication: bool = False  # as execution.publication: true
    detach: bool = False  # a whole-plan runner (Slurm) returns once the plan is submitted
    reproduces: Path | None = None  # the study directory this run re-runs (recorded in the manifest)
    confirm: Callable[[str], bool] | None = None  # asked before a very large study unless `yes`


@dataclass
class StudyRun:
    """What `run()` returns. `study_dir` is None for a dry run."""

    study: Study
    plan: list[PlannedRun]
    study_dir: Path | None = None
    runs: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    failed: list[str] = field(default_factory=list)  # run ids that failed in this session
    stopped: str | None = None  # why the study stopped before the end of its plan (resumable)
    unfinished: list[str] = field(default_factory=list)  # run ids not done when run() returned
    unwritten: list[str] = field(default_factory=list)  # study files (runs.parquet, ...) that could not be written

    @property
    def ok(self) -> bool:
        """Every run of the study is done and its tables and report are written: a study
        whose files a full disk kept out is not a success, though nothing is lost."""
        return self.study_dir is not None and not self.unfinished and not self.unwritten


def run(study_file: str | Path | None = None, options: RunOptions = RunOptions()) -> StudyRun:
    """Run a study (or a single-experiment) file, or continue one (`options.resume`).

    Raises UserError on bad input (the CLI exits 2), Failure when the study had to
    stop (runner lost, disk full: exit 1), KeyboardInterrupt on Ctrl-C / SIGTERM."""
    path = Path(study_file) if study_file is not None else None
    if options.resume is None:
        if path is None:
            raise UserError("run: give a study FILE, or --resume DIR to continue a study")
        with _interrupt_says("nothing was run and no study directory was created"):
            return _run(path, options, None)
    manifest = resuming.open_study_dir(Path(options.resume))
    # First, before any work: a study another llem is working on is refused at once.
    study_lock = None if options.dry_run else lock_study_dir(manifest.study_dir)
    try:
        with _interrupt_says(f"no run was started; continue with `llem run --resume {manifest.study_dir}`"):
            return _run(path, options, manifest)
    finally:
        if study_lock is not None:
            study_lock.release()


@contextmanager
def _interrupt_says(what: str) -> Iterator[None]:
    """Ctrl-C / SIGTERM before the session opened the study: the CLI says `what` happened
    (not that finished runs are kept, when there are none). An interrupt that already
    says what happened (the session's) passes unchanged."""
    try:
        yield
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted) and e.outcome:
            raise
        raise Interrupted(describe(e), exit_code(e), outcome=what) from None


def _run(study_file: Path | None, options: RunOptions, resumed: Manifest | None) -> StudyRun:
    term = Terminal()
    study = _load(study_file, options, resumed)
    if resumed is None and not options.dry_run:
        check_output_root(Path(options.output))  # a bad -o: exit 2 before anything is created
        # a very large study is confirmed before anything is built or its plan printed
        ex = study.execution  # n_cycles: auto is confirmed at its most, max_cycles
        confirm_run_count(len(study.experiments) * ex.most_cycles, len(study.experiments), ex.most_cycles,
                          options.yes, options.confirm)
    prepared = _prepare(study, options, resumed, term.notify)
    term.print_plan(prepared)
    if options.dry_run:
        term.print_dry_run(prepared.placements, _resume_preview(resumed, options.retry_failed))
        return StudyRun(study=study, plan=prepared.plan)
    session = Session(prepared, _session_settings(study, options, resumed, prepared), term.notify)
    try:
        loop = _execute(session, term)
        assert session.manifest is not None
        if loop is None:  # detached: `llem status` / `llem collect` follow up
            return StudyRun(study=study, plan=prepared.plan, study_dir=session.manifest.study_dir)
        return _finish(StudyRun(study=study, plan=prepared.plan), session.manifest, loop, term)
    except KeyboardInterrupt as e:
        if not session.opened or session.manifest is None:
            raise
        raise Interrupted(describe(e), exit_code(e), outcome=f"finished runs are kept in "
                          f"{session.manifest.study_dir}; the manifest records where it stopped") from None


def _execute(session: Session, term: Terminal) -> LoopResult | None:
    """execute: the session's runs; runs.parquet as it stands when it ends early."""
    loop: LoopResult | None = None
    try:
        loop = session.run(term.progress())
    finally:
        if loop is None and session.opened and not session.discarded and not session.lost:
            save_runs_table(session.manifest, term.notify)  # type: ignore[arg-type]  # stopped, interrupted or detached: the table so far
    return loop


def _load(study_file: Path | None, options: RunOptions, resumed: Manifest | None) -> Study:
    """load: the study file (on resume, the copy in the study directory unless one is given)."""
    if resumed is None:
        assert study_file is not None
        study = load_study(study_file, cycles=options.cycles, base_dir=_original_base_dir(options.reproduces))
    else:
        if options.cycles is not None:
            raise UserError("--cycles: cannot change the number of cycles of a study being resumed "
                            f"(it has {resumed.execution['n_cycles']}); start a new study instead")
        if options.runner not in (None, "auto", resumed.runner):
            raise UserError(f"--runner: the study ran with the {resumed.runner} runner; resuming with "
                            f"{options.runner} would mix runners in one study. Resume with --runner "
                            f"{resumed.runner}, or start a new study")
        base = None if study_file else resumed.study_base_dir  # the copy's paths mean the original's files
        study = load_study(study_file or resuming.study_file_of(resumed), cycles=resumed.cycles_override,
                           base_dir=Path(base) if base else None)
    if options.publication and study.execution.publication is None:
        study.execution.publication = Publication()
    return study


def _original_base_dir(reproduces: Path | None) -> Path | None:
    """A reproduction loads the original's lock file: its relative paths mean files beside the
    original study file, which the original's manifest recorded."""
    if reproduces is None:
        return None
    base = open_study_manifest(Path(reproduces)).study_base_dir
    return Path(base) if base else None


def _prepare(study: Study, options: RunOptions, resumed: Manifest | None, notify: Notify) -> PreparedStudy:
    """plan and prepare: the runner, every experiment's placement, images and engines, the
    run order; a publication study's pins are checked at each step they depend on."""
    pub = None if options.dry_run else study.execution.publication
    runner = choose_runner(resumed.runner if resumed else (options.runner or "auto"), study, notify)
    if options.detach and not runner.can_detach:
        raise UserError(f"--detach: the {runner.name} runner runs the study in this process, so there is "
                        "nothing to detach from; only a runner that hands the whole plan to a scheduler "
                        "(--runner slurm) returns once it is submitted. Drop --detach, or use --runner slurm")
    if pub is not None:
        publication.check_pins(study, runner)
    placements = check_study(study, runner, notify=notify, strict=not options.dry_run)
    levers = check_levers(study, runner, placements, strict=not options.dry_run, notify=notify)
    if not options.dry_run and runner.lock_keys(study, placements):
        lock_dir()  # a bad $LLEM_LOCK_DIR: exit 2 now, before images and engines are built
    if pub is not None:
        publication.check_energy(study, placements)
    prepared = PreparedStudy(study, [], runner, placements, levers=levers)
    if not options.dry_run or prepared.runnable:
        runner.prepare(study, notify, build=not options.dry_run)
    if pub is not None:
        publication.check_images(study, runner)
    prepared.plan = plan_for(len(study.experiments), study.execution)
    if resumed is not None:
        resuming.check_plan(resumed, study, prepared.plan)
    if study.lock is not None and not options.dry_run:
        verify_lock(study, prepared.plan, runner.name)  # the plan it starts with: auto's cycles are decided anew
    if resumed is not None and study.execution.auto:  # with the cycles added so far, which resume may finish
        prepared.plan = resumed.planned()
    if runner.name == "docker" or options.dry_run:
        prepared.images = image_status({e.config.backend for e in study.experiments})
    prepared.engines = _engines(prepared, notify)
    return prepared


def _engines(prepared: PreparedStudy, notify: Notify) -> dict[int, str] | None:
    """TensorRT-LLM experiments: each one's engine key and whether it is cached."""
    trt = [e for e in prepared.study.experiments if e.config.backend == "tensorrt"]
    if not trt:
        return None
    gpu = gpu_for(prepared.runner, trt[0].config)
    notify(f"TensorRT-LLM engine keys are for TensorRT-LLM {trtllm_version()} on GPU "
           f"{gpu['name']} (compute capability {gpu['compute_capability']}); another GPU means other keys")
    return {i: p.describe() for i, p in plan_engines(prepared.study.experiments, prepared.runner).items()}


def _session_settings(study: Study, options: RunOptions, resumed: Manifest | None,
                      prepared: PreparedStudy) -> SessionSettings:
    """execute: how the session runs; a new publication study gets its bundle before any run."""
    user_config, user_config_path = load_user_config()
    costs, cost_sources = merged_costs(study.analysis.costs, user_config.costs, user_config_path)
    on_created = None
    if study.execution.publication is not None and resumed is None:
        lock = pins(study, prepared.plan, prepared.runner.name)  # computed, so checked, before the directory exists
        on_created = lambda study_dir: write_bundle(study_dir, study, lock)  # noqa: E731
    return SessionSettings(
        output=Path(options.output), resumed=resumed, retry_failed=options.retry_failed,
        fail_fast=options.fail_fast, wait=options.wait, detach=options.detach, cycles_override=options.cycles,
        analysis=AnalysisRecord(reference_index=study.reference_index, costs=costs.model_dump(mode="json"),
                                max_cv=study.analysis.max_cv,
                                cost_sources=cost_sources),
        reproduces=options.reproduces, on_created=on_created)


def _resume_preview(resumed: Manifest | None, retry_failed: bool) -> str | None:
    if resumed is None:
        return None
    again, kept = resuming.to_rerun(resumed, retry_failed)
    return f"resume would run: {' '.join(again) or 'nothing'}" + (f"; failed and kept: {' '.join(kept)}" if kept else "")


def _finish(result: StudyRun, manifest: Manifest, loop: LoopResult, term: Terminal) -> StudyRun:
    """finish: the study's tables, summary and report, and what to do next."""
    _record_cycles_run(result.study, manifest, term.notify)
    if result.study.execution.auto:
        result.plan = manifest.planned()  # with the cycles it added
    finished = _finish_and_print(manifest, term)
    result.study_dir, result.failed, result.stopped = manifest.study_dir, loop.failed, loop.stopped
    result.unfinished, result.unwritten = manifest.unfinished(), finished.unwritten
    result.runs, result.summary = finished.results.runs, finished.results.summary
    if loop.stopped:
        term.notify(f"{loop.stopped}. Fix the cause, then continue: {resume_hint(manifest)}"
                    + (" (add --retry-failed to run the failed ones again)" if manifest.counts()["failed"] else ""))
    return result


def _record_cycles_run(study: Study, manifest: Manifest, notify: Notify) -> None:
    """A publication study with n_cycles: auto: its lock says how many cycles each configuration ran."""
    if study.execution.publication is None or not study.execution.auto or not manifest.layout.study_lock.is_file():
        return
    try:
        record_cycles_run(manifest)
    except OSError as e:  # the manifest keeps the record; the next --resume writes the lock again
        notify(f"warning: {manifest.layout.study_lock.name} could not record the cycles run ({e.strerror or e}); "
               f"`llem run --resume {manifest.study_dir}` writes it again")


def _finish_and_print(manifest: Manifest, term: Terminal) -> Finished:
    finished = finish_study(manifest, term.notify)
    term.print_summary(finished.results)
    note = concurrency_note(manifest)
    if note:
        term.notify(f"note: {note}")
    if finished.report is not None:
        term.notify(f"report: {finished.report}")
    c = manifest.counts()
    term.notify(f"{c['done']} of {len(manifest.runs)} runs done, {c['failed']} failed"
                + (f", {c['skipped']} skipped" if c["skipped"] else "")
                + (f", {c['pending']} pending" if c["pending"] else "") + f": {manifest.study_dir}")
    if finished.unwritten:
        term.notify(f"error: {finished.redo_hint()}")
    return finished


# -- Slurm studies followed after `llem run` returned


def collect(study_dir: Path) -> Manifest:
    """`llem collect DIR`: follow a Slurm study to its end, then finish it as `llem run` would."""
    term = Terminal()
    manifest = followup.open_slurm_study(Path(study_dir))
    followup.follow_to_end(manifest, term.notify)
    _finished_or_fail(_finish_and_print(manifest, term))
    return manifest


def _finished_or_fail(finished: Finished) -> None:
    """`llem collect` / `llem resubmit`: files that could not be written are a failure (exit 1)."""
    if finished.unwritten:
        raise Failure(f"the study's {', '.join(finished.unwritten)} could not be written (see above)")


def resubmit(study_dir: Path, detach: bool = False) -> Manifest:
    """`llem resubmit DIR`: submit again every run that is not done; unless `detach`, follow and finish."""
    term = Terminal()
    manifest, submitted = followup.resubmit(Path(study_dir), term.notify)
    if submitted and not detach:
        followup.follow_to_end(manifest, term.notify)
        _finished_or_fail(_finish_and_print(manifest, term))
    return manifest
