"""`run()`: the one code path behind `llem run` and `llenergymeasure.run()`.

study file -> validated experiments -> preflight -> run plan -> one run per
(experiment, cycle) through a runner -> manifest + runs.parquet -> summary.
Nothing is created on disk until the whole study has validated.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from orchestrator.analysis import load_user_config, merged_costs
from orchestrator.baselines import BaselineCache
from orchestrator.engines import gpu_for, plan_engines, trtllm_version
from orchestrator.images import image_status
from orchestrator.display import Progress, console, print_plan, print_summary
from orchestrator.manifest import Manifest, utc_now
from orchestrator.plan import PlannedRun, order_runs
from orchestrator.lock import ENVIRONMENT_FILE, LOCK_FILE, REPRODUCE_FILE, pins, verify_lock, write_bundle
from orchestrator.preflight import check_study
from orchestrator.publication import check_energy, check_images, check_pins
from orchestrator.parallel import parallel_runner
from orchestrator.runners import select_runner
from orchestrator.study import Publication, Study, load_study
from orchestrator.study_results import StudyResults, open_study
from orchestrator.summary import energy_reason, write_summary
from orchestrator.tables import write_runs_table


@dataclass
class StudyRun:
    """What `run()` returns. `study_dir` is None for a dry run."""

    study: Study
    plan: list[PlannedRun]
    study_dir: Path | None = None
    runs: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    failed: list[str] = field(default_factory=list)  # run ids

    @property
    def ok(self) -> bool:
        return self.study_dir is not None and not self.failed


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


def _write_report(analysed: StudyResults, notify: Callable[[str], None]) -> None:
    """The report is a view of results already safe on disk: if it fails, say so and go on."""
    from orchestrator.report import write_report

    try:
        path = write_report(analysed)
    except Exception as e:  # noqa: BLE001
        notify(f"warning: the HTML report could not be written ({type(e).__name__}: {e}); "
               f"results are intact; retry with `llem report {analysed.study_dir}`")
    else:
        notify(f"report: {path}")


def run(
    study_file: str | Path,
    *,
    runner: str = "auto",
    output: str | Path = "results",
    cycles: int | None = None,
    dry_run: bool = False,
    publication: bool = False,
    reproduces: Path | None = None,
    detach: bool = False,
) -> StudyRun:
    """Run a study (or a single experiment) file; raises UserError on bad input.
    `publication`: as `execution.publication: true`; `reproduces`: the study
    directory this run re-runs (recorded in the manifest); `detach`: a runner that takes
    the whole plan (Slurm) returns once it is submitted."""
    out = console()
    study = load_study(Path(study_file), cycles=cycles)
    if publication and study.execution.publication is None:
        study.execution.publication = Publication()
    pub = study.execution.publication
    user_config, user_config_path = load_user_config()
    costs, cost_sources = merged_costs(study.analysis.costs, user_config.costs, user_config_path)
    notify = lambda msg: out.print(msg, markup=False)  # noqa: E731
    the_runner = parallel_runner(select_runner(runner, study, notify), study, notify)
    if pub is not None and not dry_run:
        check_pins(study, the_runner)
    resolved = check_study(study, the_runner, notify=notify, strict=not dry_run)
    if pub is not None and not dry_run:
        check_energy(study, resolved)
    runnable = all(r.problem is None for r in resolved.values())
    if not dry_run or runnable:
        the_runner.prepare(study, notify, build=not dry_run)
    if pub is not None and not dry_run:
        check_images(study, the_runner)
    ex = study.execution
    plan = order_runs(len(study.experiments), ex.n_cycles, ex.order, ex.shuffle_seed)
    if study.lock is not None and not dry_run:
        verify_lock(study, plan, the_runner.name)
    lock = pins(study, plan, the_runner.name) if pub is not None and not dry_run else None
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
        problems: dict[str, list[int]] = {}
        for i, r in resolved.items():
            if r.problem:
                problems.setdefault(r.problem, []).append(i)
        for problem, indices in problems.items():
            which = "experiment " + ", ".join(map(str, indices)) if len(indices) < len(resolved) else "every experiment"
            out.print(f"not runnable here ({which}): {problem}", markup=False)
        n_bad = sum(len(v) for v in problems.values())
        out.print("dry run: nothing was run" + (f" ({n_bad} experiment(s) could not run on this "
                  "machine as it is)" if n_bad else ""))
        return result

    study_dir = _new_study_dir(Path(output), study.name)
    shutil.copyfile(study.path, study_dir / study.path.name)  # the study file as given
    analysis = {"reference_index": study.reference_index, "costs": costs.model_dump(mode="json"),
                "cost_sources": cost_sources}
    manifest = Manifest.create(study_dir, study, plan, the_runner.name, study.path.name, analysis)
    if reproduces is not None:
        manifest.data["reproduces"] = str(reproduces)
        manifest.save()
    if lock is not None:
        write_bundle(study_dir, study, lock)
        notify(f"publication: {LOCK_FILE}, {ENVIRONMENT_FILE} and {REPRODUCE_FILE} written to {study_dir}")
    result.study_dir = study_dir
    out.print(f"results: {study_dir}")
    progress = Progress(out, len(plan))
    baselines = BaselineCache()
    current: PlannedRun | None = None
    whole_plan = getattr(the_runner, "takes_whole_plan", False)  # Slurm: one job array, followed
    if whole_plan:
        the_runner.submit_plan(manifest, [p.run_id for p in plan], notify)
    try:
        previous: PlannedRun | None = None
        if whole_plan:
            if not the_runner.follow_plan(manifest, notify, detach=detach):
                return result  # detached: `llem status` / `llem collect` follow up
            result.failed = [r["run_id"] for r in manifest.data["runs"] if r["state"] == "failed"]
        for planned in [] if whole_plan else plan:
            if previous is not None:
                gap = ex.gap_between_cycles_s if planned.cycle != previous.cycle else ex.gap_between_runs_s
                time.sleep(gap)
            exp = study.experiments[planned.experiment_index - 1]
            current = planned
            manifest.update(planned.run_id, "running", started_at=utc_now())
            progress.start(planned, exp.label)
            t0 = time.monotonic()
            outcome = the_runner.execute(
                exp.config, study_dir / "runs" / planned.run_id, ex.run_timeout_s,
                on_tick=progress.tick, extra_env=baselines.env_for(exp.config),
            )
            baselines.remember(outcome)
            manifest.update(
                planned.run_id, outcome.state, finished_at=utc_now(),
                exit_code=outcome.exit_code, error=outcome.error,
            )
            current = None
            progress.end(outcome, time.monotonic() - t0)
            if outcome.state == "failed":
                result.failed.append(planned.run_id)
            previous = planned
    except KeyboardInterrupt:
        if current is not None:
            manifest.update(current.run_id, "failed", finished_at=utc_now(), error="interrupted (Ctrl-C)")
        raise
    finally:
        write_runs_table(manifest)

    analysed = open_study(study_dir)
    result.runs = pd.read_parquet(study_dir / "runs.parquet")
    result.summary = analysed.summary
    write_summary(analysed.summary, study_dir)
    print_summary(out, analysed.summary, energy_reason(result.runs), reference=analysed.reference_index)
    if whole_plan:
        from orchestrator.slurm.collect import concurrency_note

        notify(concurrency_note(manifest))
    _write_report(analysed, notify)
    counts = manifest.counts()
    out.print(f"{counts['done']} of {len(plan)} runs done, {counts['failed']} failed: {study_dir}")
    return result
