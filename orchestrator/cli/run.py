"""`llem run` and `llem reproduce`: run a study (or a locked publication study again)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from llenergymeasure.orchestrator.cli.app import guard, main
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.size import MAX_CYCLES


@main.command("run")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--runner", type=click.Choice(["auto", "local", "docker", "slurm"]), default=None,
              help="Where runs execute: auto (the default) picks the best available; "
                   "--resume keeps the study's; a study may choose with execution.runner.")
@click.option("--dry-run", is_flag=True, help="Print the plan and run nothing.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results root; the study directory is created under it.")
@click.option("--cycles", type=click.IntRange(min=1, max=MAX_CYCLES), default=None, help="Override execution.n_cycles.")
@click.option("--resume", "resume", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Continue the study in DIR: runs not done yet (FILE, if given, must expand to the same plan).")
@click.option("--retry-failed", is_flag=True, help="With --resume: also run failed runs again.")
@click.option("--fail-fast", is_flag=True, help="Stop the study at the first failed run.")
@click.option("-y", "--yes", is_flag=True, help="Run a very large study without asking.")
@click.option("--wait", is_flag=True, help="Queue behind a study using the same devices instead of refusing.")
@click.option("--publication", is_flag=True,
              help="Refuse to start unless everything is pinned; write study.lock.yaml, environment.json, REPRODUCE.md.")
@click.option("--detach", is_flag=True,
              help="Slurm: return once the job array is submitted; follow with llem status / llem collect.")
@guard
def run_cmd(file: Path | None, **options: Any) -> None:
    """Run a study or single-experiment YAML FILE, or continue one with --resume DIR."""
    from llenergymeasure.orchestrator.api import RunOptions, run

    if file is None and options["resume"] is None:
        raise UserError("run: give a study FILE, or --resume DIR to continue a study")
    if options["retry_failed"] and options["resume"] is None:
        raise UserError("--retry-failed: only means something with --resume DIR")
    if file is not None:
        if not file.exists() and (Path("studies") / file).exists():
            raise UserError(f"{file}: no such file; did you mean studies/{file}?")
        if file.is_dir() and (file / "manifest.json").exists():
            raise UserError(f"{file}: is a study directory, not a study file; to continue it: "
                            f"llem run --resume {file}")
    confirm = (lambda q: click.confirm(q, default=False)) if sys.stdin.isatty() else None
    opts = RunOptions(**options, confirm=confirm)
    result = run(file, opts)
    if not opts.dry_run and not opts.detach and not result.ok:  # a run failed, or the study stopped before its end
        sys.exit(1)


@main.command("reproduce")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results root for the new study directory.")
@click.option("--runner", type=click.Choice(["auto", "local", "docker"]), default="auto", show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Changes within this fraction of the original mean count as consistent.")
@guard
def reproduce_cmd(study_dir: Path, output: Path, runner: str, tolerance: float) -> None:
    """Re-run the locked publication study STUDY_DIR and compare it with the original."""
    from llenergymeasure.orchestrator.api import RunOptions, run
    from llenergymeasure.orchestrator.analysis.report import write_report
    from llenergymeasure.orchestrator.analysis.results import open_study
    from llenergymeasure.orchestrator.publication.reproduce import locked_study_file, reproduction, write_reproduction
    from llenergymeasure.orchestrator.terminal import Terminal

    lock = locked_study_file(study_dir)
    original = open_study(study_dir)
    result = run(lock, RunOptions(runner=runner, output=output, reproduces=study_dir.resolve()))
    assert result.study_dir is not None
    table, diffs = reproduction(original, open_study(result.study_dir), tolerance)
    write_reproduction(result.study_dir, table)
    report = write_report(open_study(result.study_dir))
    term = Terminal()
    if diffs:
        term.print_environment_differences(diffs, "original", "reproduction")
    term.print_comparison(table, f"reproduction vs original: consistent = change's 95% CI includes zero or "
                                 f"|change| <= {tolerance:.0%} of the original", verdicts=True)
    n_diff = int(table["verdict"].str.startswith("different").sum())
    term.notify(f"{len(table) - n_diff} of {len(table)} comparisons consistent; report: {report}")
    if not result.ok:
        sys.exit(1)
