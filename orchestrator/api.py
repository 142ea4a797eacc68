"""`run()`: the one code path behind `llem run` and `llenergymeasure.run()`.

study file -> validated experiments -> preflight -> run plan -> device locks ->
one run per (experiment, cycle) through a runner (orchestrator/execution/loop.py) ->
manifest + runs.parquet -> summary. Nothing is created on disk until the whole
study has validated and its devices are free. `resume=DIR` continues a study
(orchestrator/execution/resume.py) through the same path.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.execution import resume as resuming
from llenergymeasure.orchestrator.study.analysis_section import merged_costs
from llenergymeasure.orchestrator.study.user_config import load_user_config
from llenergymeasure.orchestrator.terminal import Progress, console, print_plan, print_summary
from llenergymeasure.orchestrator.build.engines import gpu_for, plan_engines, trtllm_version
from llenergymeasure.orchestrator.analysis.concurrency import concurrency_note
from llenergymeasure.orchestrator.errors import NothingStarted, UserError
from llenergymeasure.orchestrator.execution.loop import Policy, resume_hint, run_plan
from llenergymeasure.orchestrator.build.images import image_status
from llenergymeasure.orchestrator.publication.lock import ENVIRONMENT_FILE, LOCK_FILE, REPRODUCE_FILE, pins, verify_lock, write_bundle
from llenergymeasure.orchestrator.execution.locks import DeviceLocks, FileLock, device_keys, lock_study_dir
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.study.plan import PlannedRun, order_runs
from llenergymeasure.orchestrator.study.preflight import Placement, check_study
from llenergymeasure.orchestrator.publication.checks import check_energy, check_images, check_pins
from llenergymeasure.orchestrator.execution.parallel import parallel_runner
from llenergymeasure.orchestrator.execution.runners import Runner, select_runner
from llenergymeasure.orchestrator.execution.signals import sigterm_interrupts
from llenergymeasure.orchestrator.study.size import confirm_run_count
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.spec import Publication, Study
from llenergymeasure.orchestrator.analysis.results import StudyResults, open_study
from llenergymeasure.orchestrator.analysis.summary import energy_reason, write_summary
from llenergymeasure.orchestrator.analysis.tables import write_runs_table


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

    @property
    def ok(self) -> bool:
        """Every run of the study is done."""
        return self.study_dir is not None and not self.unfinished


def _new_study_dir(root: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = root / (f"{name}_{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a study directory under {root}")


def _write_report(analysed: StudyResults, notify: Notify) -> None:
    """The report is a view of results already safe on disk: if it fails, say so and go on."""
    from llenergymeasure.orchestrator.analysis.report import write_report

    try:
        path = write_report(analysed)
    except Exception as e:  # noqa: BLE001
        notify(f"warning: the HTML report could not be written ({type(e).__name__}: {e}); "
               f"results are intact; retry with `llem report {analysed.study_dir}`")
    else:
        notify(f"report: {path}")


def _devices(study: Study, runner: Runner, resolved: dict[int, Placement]) -> list[str]:
    """The devices the study's runs measure on, as lock names (orchestrator/execution/locks.py)."""
    keys: set[str] = set()
    if getattr(runner, "remote", False):  # Slurm: the runs measure on the nodes, not on this machine
        return []
    if hasattr(runner, "device_uuids"):  # parallel runs: any of the host's GPUs
        return sorted(device_keys(runner.device_uuids(), "cuda:0"))
    for e in study.experiments:
        uuids = runner.gpu_uuids(e.config) if hasattr(runner, "gpu_uuids") else []
        keys.update(device_keys(uuids, resolved[e.index].device))
    return sorted(keys)


def _open_resume(manifest: Manifest, study_file: Path | None, runner: str | None, cycles: int | None,
                 ) -> tuple[Study, str]:
    if cycles is not None:
        raise UserError("--cycles: cannot change the number of cycles of a study being resumed "
                        f"(it has {manifest.data['execution']['n_cycles']}); start a new study instead")
    recorded = manifest.data["runner"]
    if runner not in (None, "auto", recorded):
        raise UserError(f"--runner: the study ran with the {recorded} runner; resuming with {runner} would "
                        f"mix runners in one study. Resume with --runner {recorded}, or start a new study")
    path = study_file or resuming.study_file_of(manifest)
    study = load_study(path, cycles=manifest.data.get("cycles_override"))
    return study, recorded


def run(
    study_file: str | Path | None = None,
    *,
    runner: str | None = None,
    output: str | Path = "results",
    cycles: int | None = None,
    dry_run: bool = False,
    resume: str | Path | None = None,
    retry_failed: bool = False,
    fail_fast: bool = False,
    yes: bool = False,
    wait: bool = False,
    confirm: Callable[[str], bool] | None = None,
    publication: bool = False,
    reproduces: Path | None = None,
    detach: bool = False,
) -> StudyRun:
    """Run a study (or a single experiment) file, or continue one (`resume=DIR`).
    `publication`: as `execution.publication: true`; `reproduces`: the study
    directory this run re-runs (recorded in the manifest).

    Raises UserError on bad input (the CLI exits 2), Failure when the study had to
    stop (runner lost, disk full: exit 1), KeyboardInterrupt on Ctrl-C / SIGTERM.
    `confirm(question)` is asked before a very large study unless `yes`; `detach`: a
    runner that takes the whole plan (Slurm) returns once it is submitted."""
    args = dict(runner=runner, output=output, cycles=cycles, dry_run=dry_run, retry_failed=retry_failed,
                fail_fast=fail_fast, yes=yes, wait=wait, confirm=confirm, publication=publication,
                reproduces=reproduces, detach=detach)
    if resume is None:
        if study_file is None:
            raise UserError("run: give a study FILE, or --resume DIR to continue a study")
        return _run(Path(study_file), None, None, **args)
    manifest = resuming.open_study_dir(Path(resume))
    # First, before any work: a study another llem is working on is refused at once.
    study_lock = None if dry_run else lock_study_dir(manifest.study_dir)
    try:
        return _run(Path(study_file) if study_file else None, manifest, study_lock, **args)
    finally:
        if study_lock is not None:
            study_lock.release()


def _run(
    study_file: Path | None, manifest: Manifest | None, study_lock: FileLock | None, *,
    runner: str | None, output: str | Path, cycles: int | None, dry_run: bool, retry_failed: bool,
    fail_fast: bool, yes: bool, wait: bool, confirm: Callable[[str], bool] | None, publication: bool,
    reproduces: Path | None, detach: bool = False,
) -> StudyRun:
    out = console()
    notify = lambda msg: out.print(msg, markup=False, soft_wrap=True)  # noqa: E731
    resume = manifest.study_dir if manifest is not None else None
    if manifest is not None:
        study, runner = _open_resume(manifest, study_file, runner, cycles)
    else:
        assert study_file is not None
        study = load_study(study_file, cycles=cycles)
    if publication and study.execution.publication is None:
        study.execution.publication = Publication()
    pub = None if dry_run else study.execution.publication
    user_config, user_config_path = load_user_config()
    costs, cost_sources = merged_costs(study.analysis.costs, user_config.costs, user_config_path)
    the_runner = parallel_runner(select_runner(runner or "auto", study, notify), study, notify)
    if pub is not None:
        check_pins(study, the_runner)
    resolved = check_study(study, the_runner, notify=notify, strict=not dry_run)
    if pub is not None:
        check_energy(study, resolved)
    runnable = all(r.problem is None for r in resolved.values())
    if not dry_run or runnable:
        the_runner.prepare(study, notify, build=not dry_run)
    if pub is not None:
        check_images(study, the_runner)
    ex = study.execution
    plan = order_runs(len(study.experiments), ex.n_cycles, ex.order, ex.shuffle_seed)
    if manifest is not None:
        resuming.check_plan(manifest, study, plan)
    if study.lock is not None and not dry_run:
        verify_lock(study, plan, the_runner.name)
    lock = pins(study, plan, the_runner.name) if pub is not None and manifest is None else None
    images = image_status({e.config.backend for e in study.experiments}) if the_runner.name == "docker" or dry_run else None
    engines = None
    if any(e.config.backend == "tensorrt" for e in study.experiments):
        engines = {i: p.describe() for i, p in plan_engines(study.experiments, the_runner).items()}
        gpu = gpu_for(the_runner, next(e.config for e in study.experiments if e.config.backend == "tensorrt"))
        notify(f"TensorRT-LLM engine keys are for TensorRT-LLM {trtllm_version()} on GPU "
               f"{gpu['name']} (compute capability {gpu['compute_capability']}); another GPU means other keys")
    print_plan(out, study, plan, resolved, the_runner.describe(), images=images, engines=engines)
    result = StudyRun(study=study, plan=plan)
    if dry_run:
        _report_dry_run(out, resolved, manifest, retry_failed)
        return result
    if manifest is None:
        confirm_run_count(len(plan), len(study.experiments), ex.n_cycles, yes, confirm)

    holder = str(resume) if resume is not None else f"study '{study.name}' (results under {Path(output).resolve()})"
    devices = DeviceLocks(_devices(study, the_runner, resolved), holder)
    discard = False  # set when a new study directory must go again (nothing started)
    with sigterm_interrupts():
        devices.acquire(wait=wait, notify=notify)
        try:
            if manifest is None:
                study_dir = _new_study_dir(Path(output), study.name)
                study_lock = lock_study_dir(study_dir)
                shutil.copyfile(study.path, study_dir / study.path.name)  # the study file as given
                analysis = {"reference_index": study.reference_index, "costs": costs.model_dump(mode="json"),
                            "cost_sources": cost_sources}
                manifest = Manifest.create(study_dir, study, plan, the_runner.name, study.path.name,
                                           analysis=analysis, cycles_override=cycles)
                if reproduces is not None:
                    manifest.data["reproduces"] = str(reproduces)
                    manifest.save()
                if lock is not None:
                    write_bundle(study_dir, study, lock)
                    notify(f"publication: {LOCK_FILE}, {ENVIRONMENT_FILE} and {REPRODUCE_FILE} written to {study_dir}")
                todo = plan
            else:
                todo = _prepare_resume(out, manifest, plan, retry_failed)
            # what this session ran with: on resume, timeouts and gaps may differ from the first
            manifest.begin_session(command="resume" if resume is not None else "run", pid=os.getpid(),
                                   host=platform.node(), devices=devices.devices, study_file=str(study.path),
                                   execution=ex.model_dump(mode="json"), retry_failed=retry_failed,
                                   fail_fast=fail_fast)
            result.study_dir = manifest.study_dir
            out.print(f"results: {manifest.study_dir}")
            policy = Policy(fail_fast=fail_fast, max_consecutive_failures=ex.max_consecutive_failures)
            try:
                if getattr(the_runner, "takes_whole_plan", False):  # Slurm, parallel GPUs: the plan at once
                    loop = the_runner.run_whole(manifest, [p.run_id for p in todo], notify, detach=detach,
                                                policy=policy)
                    if loop is None:
                        return result  # detached: `llem status` / `llem collect` follow up
                else:
                    loop = run_plan(manifest, study, todo, the_runner, Progress(out, len(todo)), policy)
            except KeyboardInterrupt:
                out.print(f"to continue this study: {resume_hint(manifest)}", markup=False, soft_wrap=True)
                raise
            except NothingStarted:
                discard = resume is None  # a new study that never started: leave nothing behind
                raise
            finally:
                if not discard:
                    _write_tables(manifest, notify)
        finally:
            if study_lock is not None and resume is None:
                study_lock.release()  # (a resumed study's lock is released by run())
            devices.release()
            if manifest is not None and resume is None and discard:
                shutil.rmtree(manifest.study_dir, ignore_errors=True)

    result.failed, result.stopped = loop.failed, loop.stopped
    result.unfinished = [r["run_id"] for r in manifest.data["runs"] if r["state"] != "done"]
    analysed = open_study(manifest.study_dir)
    result.runs = analysed.runs
    result.summary = analysed.summary
    try:
        write_summary(analysed.summary, manifest.study_dir)
    except OSError as e:  # disk full: the run directories are the record; `llem results` recomputes it
        notify(f"summary.parquet not written ({e.strerror or e}); `llem results {manifest.study_dir}` recomputes it")
    print_summary(out, analysed.summary, energy_reason(analysed.runs), reference=analysed.reference_index)
    note = concurrency_note(manifest)
    if note:
        notify(f"note: {note}")
    _write_report(analysed, notify)
    counts = manifest.counts()
    out.print(f"{counts['done']} of {len(plan)} runs done, {counts['failed']} failed"
              + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
              + (f", {counts['pending']} pending" if counts["pending"] else "")
              + f": {manifest.study_dir}")
    if loop.stopped:
        out.print(f"{loop.stopped}. Fix the cause, then continue: {resume_hint(manifest)}"
                  + (" (add --retry-failed to run the failed ones again)" if counts["failed"] else ""),
                  markup=False, soft_wrap=True)
    return result


def _prepare_resume(out, manifest: Manifest, plan: list[PlannedRun], retry_failed: bool) -> list[PlannedRun]:
    # a Slurm study's runs belong to Slurm (its runner refuses to resubmit while any is queued or running)
    killed = resuming.kill_leftovers(manifest.study_dir) if manifest.data["runner"] != "slurm" else []
    if killed:
        out.print(f"stopped {len(killed)} leftover run process(es) of this study: {killed}", markup=False)
    for note in resuming.reconcile(manifest):
        out.print(f"resume: {note}", markup=False)
    again, kept = resuming.to_rerun(manifest, retry_failed)
    if kept:
        out.print(f"resume: {len(kept)} failed run(s) kept as they are ({', '.join(kept)}); "
                  "--retry-failed runs them again", markup=False)
    done = manifest.counts()["done"]
    out.print(f"resume: {done} run(s) already done and kept; {len(again)} to run", markup=False)
    wanted = set(again)
    return [p for p in plan if p.run_id in wanted]


def _report_dry_run(out, resolved: dict[int, Placement], manifest: Manifest | None, retry_failed: bool) -> None:
    problems: dict[str, list[int]] = {}
    for i, r in resolved.items():
        if r.problem:
            problems.setdefault(r.problem, []).append(i)
    for problem, indices in problems.items():
        which = "experiment " + ", ".join(map(str, indices)) if len(indices) < len(resolved) else "every experiment"
        out.print(f"not runnable here ({which}): {problem}", markup=False)
    if manifest is not None:
        again, kept = resuming.to_rerun(manifest, retry_failed)
        out.print(f"resume would run: {' '.join(again) or 'nothing'}"
                  + (f"; failed and kept: {' '.join(kept)}" if kept else ""), markup=False)
    n_bad = sum(len(v) for v in problems.values())
    out.print("dry run: nothing was run" + (f" ({n_bad} experiment(s) could not run on this "
              "machine as it is)" if n_bad else ""))


def _write_tables(manifest: Manifest, notify: Notify) -> None:
    try:
        write_runs_table(manifest)
    except OSError as e:  # disk full: the manifest is the record; runs.parquet is rebuilt on resume
        notify(f"runs.parquet not updated ({e.strerror or e}); it is rebuilt when the study resumes")
