"""`llem status`, `llem collect`, `llem resubmit`: a Slurm study after `llem run` returned."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from llenergymeasure.orchestrator.cli.app import guard, main


@main.command("status")
@click.argument("study_dir", type=click.Path(path_type=Path))
@guard
def status_cmd(study_dir: Path) -> None:
    """Where a Slurm study's runs are now (reads the array once and updates the manifest)."""
    from llenergymeasure.orchestrator.execution.slurm.followup import status

    for line in status(study_dir).lines():
        click.echo(line)


@main.command("collect")
@click.argument("study_dir", type=click.Path(path_type=Path))
@guard
def collect_cmd(study_dir: Path) -> None:
    """Follow a (detached) Slurm study to its end and write runs.parquet, summary and report."""
    from llenergymeasure.orchestrator.api import collect

    if collect(study_dir).counts()["failed"]:
        sys.exit(1)


@main.command("resubmit")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--detach", is_flag=True, help="Return once submitted.")
@guard
def resubmit_cmd(study_dir: Path, detach: bool) -> None:
    """Slurm: submit again only the runs of STUDY_DIR that are not done (failed, timed out, cancelled)."""
    from llenergymeasure.orchestrator.api import resubmit

    manifest = resubmit(study_dir, detach=detach)
    if not detach and manifest.counts()["failed"]:
        sys.exit(1)
