"""`llem`: a thin click layer over the library. Exit codes: 0 success, 1 a run or
download failed, 2 bad input (one message, no traceback), 130 interrupted."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from llenergymeasure.backends import __version__
from llenergymeasure.backends.table import BACKENDS
from llenergymeasure.orchestrator.errors import Failure, UserError


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map failures to exit codes; only internal errors print a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:
            from llenergymeasure.orchestrator.execution.signals import describe, exit_code

            click.echo(f"\ninterrupted ({describe(e)}): finished runs are kept; the manifest records "
                       "where it stopped", err=True)
            sys.exit(exit_code(e))
        except Failure as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except click.exceptions.Exit:
            raise
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            click.echo(f"llem: internal error ({type(e).__name__}); please report it with the traceback above", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llem")
def main() -> None:
    """LLenergyMeasure: what a deployment choice does to an LLM's energy, throughput and latency."""


@main.command("run")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--runner", type=click.Choice(["auto", "local", "docker", "slurm"]), default=None,
              help="Where runs execute: auto (the default) picks the best available; "
                   "--resume keeps the study's; a study may choose with execution.runner.")
@click.option("--dry-run", is_flag=True, help="Print the plan and run nothing.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results root; the study directory is created under it.")
@click.option("--cycles", type=click.IntRange(min=1), default=None, help="Override execution.n_cycles.")
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
@_guard
def run_cmd(file: Path | None, runner: str | None, dry_run: bool, output: Path, cycles: int | None,
            resume: Path | None, retry_failed: bool, fail_fast: bool, yes: bool, wait: bool, publication: bool,
            detach: bool) -> None:
    """Run a study or single-experiment YAML FILE, or continue one with --resume DIR."""
    from llenergymeasure.orchestrator.api import run

    if file is None and resume is None:
        raise UserError("run: give a study FILE, or --resume DIR to continue a study")
    if retry_failed and resume is None:
        raise UserError("--retry-failed: only means something with --resume DIR")
    if file is not None:
        if not file.exists() and (Path("studies") / file).exists():
            raise UserError(f"{file}: no such file; did you mean studies/{file}?")
        if file.is_dir() and (file / "manifest.json").exists():
            raise UserError(f"{file}: is a study directory, not a study file; to continue it: "
                            f"llem run --resume {file}")
    confirm = (lambda q: click.confirm(q, default=False)) if sys.stdin.isatty() else None
    result = run(file, runner=runner, output=output, cycles=cycles, dry_run=dry_run, resume=resume,
                 retry_failed=retry_failed, fail_fast=fail_fast, yes=yes, wait=wait, confirm=confirm,
                 publication=publication, detach=detach)
    if not dry_run and not detach and not result.ok:  # a run failed, or the study stopped before its end
        sys.exit(1)


@main.command("status")
@click.argument("study_dir", type=click.Path(path_type=Path))
@_guard
def status_cmd(study_dir: Path) -> None:
    """Where a Slurm study's runs are now (reads the array once and updates the manifest)."""
    from llenergymeasure.orchestrator.execution.slurm.followup import status

    for line in status(study_dir).lines():
        click.echo(line)


@main.command("collect")
@click.argument("study_dir", type=click.Path(path_type=Path))
@_guard
def collect_cmd(study_dir: Path) -> None:
    """Follow a (detached) Slurm study to its end and write runs.parquet, summary and report."""
    from llenergymeasure.orchestrator.execution.slurm.followup import collect

    manifest = collect(study_dir, lambda m: click.echo(m))
    if manifest.counts()["failed"]:
        sys.exit(1)


@main.command("resubmit")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--detach", is_flag=True, help="Return once submitted.")
@_guard
def resubmit_cmd(study_dir: Path, detach: bool) -> None:
    """Slurm: submit again only the runs of STUDY_DIR that are not done (failed, timed out, cancelled)."""
    from llenergymeasure.orchestrator.execution.slurm.followup import resubmit

    manifest = resubmit(study_dir, lambda m: click.echo(m), detach=detach)
    if not detach and manifest.counts()["failed"]:
        sys.exit(1)


FORMATS = click.Choice(["table", "csv", "json", "markdown"])


def _energy_note(results: Any) -> str | None:
    from llenergymeasure.orchestrator.analysis.summary import energy_reason

    return energy_reason(results.runs)


@main.command("results")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True,
              help="table: for reading; csv/json: every summary column; markdown: the table's cells.")
@click.option("--reference", type=click.IntRange(min=1), default=None,
              help="Experiment number to take ratios against (default: the study's analysis.reference).")
@_guard
def results_cmd(study_dir: Path, fmt: str, reference: int | None) -> None:
    """Summarise STUDY_DIR across cycles: means, 95% CIs, ratios to the reference, Pareto, flags."""
    from llenergymeasure.orchestrator.terminal import console, cost_table, print_summary, summary_table
    from llenergymeasure.orchestrator.analysis.export import to_csv, to_json, to_markdown
    from llenergymeasure.orchestrator.analysis.results import open_study

    results = open_study(study_dir, reference)
    if fmt == "csv":
        click.echo(to_csv(results.summary), nl=False)
    elif fmt == "json":
        click.echo(to_json(results.summary))
    elif fmt == "markdown":
        click.echo(to_markdown(*summary_table(results.summary)))
        costs = cost_table(results.summary)
        if costs:
            click.echo("\n" + to_markdown(*costs))
    else:
        out = console()
        out.print(f"{results.name}: {results.study_dir}", markup=False)
        print_summary(out, results.summary, _energy_note(results), reference=results.reference_index)


@main.command("report")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write the HTML (default: STUDY_DIR/report.html).")
@click.option("--reference", type=click.IntRange(min=1), default=None,
              help="Experiment number to take ratios against (default: the study's analysis.reference).")
@click.option("--runs", "power_runs", default=None, metavar="RUN_ID,...",
              help="Runs whose power over time to chart (default: the first finished run of each configuration).")
@_guard
def report_cmd(study_dir: Path, output: Path | None, reference: int | None, power_runs: str | None) -> None:
    """Write a self-contained HTML report of STUDY_DIR (also written at the end of every study)."""
    from llenergymeasure.orchestrator.analysis.report import write_report
    from llenergymeasure.orchestrator.analysis.results import open_study

    chosen = [r.strip() for r in power_runs.split(",") if r.strip()] if power_runs else None
    path = write_report(open_study(study_dir, reference), output, chosen)
    click.echo(f"report: {path}")


@main.command("compare")
@click.argument("dir_a", type=click.Path(path_type=Path))
@click.argument("dir_b", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@_guard
def compare_cmd(dir_a: Path, dir_b: Path, fmt: str) -> None:
    """The configurations DIR_A and DIR_B share, side by side: B - A with its 95% CI."""
    from llenergymeasure.orchestrator.analysis.compare import compare, environment_differences
    from llenergymeasure.orchestrator.terminal import compare_table, console
    from llenergymeasure.orchestrator.analysis.export import to_csv, to_json, to_markdown
    from llenergymeasure.orchestrator.analysis.results import open_study

    a, b = open_study(dir_a), open_study(dir_b)
    table, notes = compare(a, b)
    if fmt == "csv":
        click.echo(to_csv(table), nl=False)
        return
    if fmt == "json":
        click.echo(to_json(table))
        return
    headers, rows = compare_table(table)
    diffs = environment_differences(a, b)
    if fmt == "markdown":
        if diffs:
            click.echo(to_markdown(["environment", "A", "B"], [list(d) for d in diffs]))
        click.echo(to_markdown(headers, rows))
        return
    from rich.table import Table

    out = console()
    out.print(f"A: {a.study_dir}\nB: {b.study_dir}", markup=False)
    if diffs:
        t = Table(title="environment differences (these explain most differences)", title_justify="left")
        for col in ("what", "A", "B"):
            t.add_column(col, overflow="fold")
        for d in diffs:
            t.add_row(*d)
        out.print(t)
    else:
        out.print("environment: no difference in GPUs, driver, CPU, packages, image or llem version")
    t = Table(title="B - A per configuration: mean ± 95% CI half-width; 'differs' when the CI of the "
                    "change excludes zero", title_justify="left")
    for col in headers:
        t.add_column(col, justify="left" if col in ("settings", "metric") else "right", overflow="fold")
    for row in rows:
        t.add_row(*row)
    out.print(t)
    for n in notes:
        out.print(f"note: {n}", markup=False)


@main.command("reproduce")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results root for the new study directory.")
@click.option("--runner", type=click.Choice(["auto", "local", "docker"]), default="auto", show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Changes within this fraction of the original mean count as consistent.")
@_guard
def reproduce_cmd(study_dir: Path, output: Path, runner: str, tolerance: float) -> None:
    """Re-run the locked publication study STUDY_DIR and compare it with the original."""
    from llenergymeasure.orchestrator.api import run
    from llenergymeasure.orchestrator.terminal import compare_table, console
    from llenergymeasure.orchestrator.analysis.report import write_report
    from llenergymeasure.orchestrator.publication.reproduce import locked_study_file, reproduction, write_reproduction
    from llenergymeasure.orchestrator.analysis.results import open_study

    lock = locked_study_file(study_dir)
    original = open_study(study_dir)
    result = run(lock, runner=runner, output=output, reproduces=study_dir.resolve())
    assert result.study_dir is not None
    table, diffs = reproduction(original, open_study(result.study_dir), tolerance)
    write_reproduction(result.study_dir, table)
    report = write_report(open_study(result.study_dir))
    from rich.table import Table

    out = console()
    if diffs:
        t = Table(title="environment differences (listed first: they explain most differences)",
                  title_justify="left")
        for col in ("what", "original", "reproduction"):
            t.add_column(col, overflow="fold")
        for d in diffs:
            t.add_row(*d)
        out.print(t)
    headers, rows = compare_table(table)
    t = Table(title=f"reproduction vs original: consistent = change's 95% CI includes zero or |change| <= "
                    f"{tolerance:.0%} of the original", title_justify="left")
    for col in [*headers, "verdict"]:
        t.add_column(col, overflow="fold")
    for row, verdict in zip(rows, table["verdict"]):
        t.add_row(*row, verdict)
    out.print(t)
    n_diff = int(table["verdict"].str.startswith("different").sum())
    out.print(f"{len(table) - n_diff} of {len(table)} comparisons consistent; report: {report}", markup=False)
    if not result.ok:
        sys.exit(1)


@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guard
def config_cmd(as_json: bool) -> None:
    """What this machine offers: GPUs, energy sources, Docker, backends, paths."""
    from llenergymeasure.orchestrator.execution.machine import as_dicts, collect
    from llenergymeasure.orchestrator.terminal import console

    checks = collect()
    if as_json:
        click.echo(json.dumps(as_dicts(checks), indent=2))
        return
    from rich.table import Table

    t = Table(show_header=True)
    for col in ("area", "item", "", "detail"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.area, c.item, "yes" if c.ok else "no", c.detail)
    console().print(t)


main.add_command(config_cmd, name="doctor")


@main.group("datasets")
def datasets_group() -> None:
    """Built-in prompt sets."""


@datasets_group.command("list")
@_guard
def datasets_list() -> None:
    """Show the built-in prompt sets and whether each is installed."""
    from llenergymeasure.backends.prompts import BUILTIN_DATASETS, installed_path

    for name in BUILTIN_DATASETS:
        if name == "synthetic":
            click.echo(f"{name}: generated on the fly (always available)")
        else:
            p = installed_path(name)
            click.echo(f"{name}: " + (f"installed at {p}" if p.exists() else f"not installed (llem datasets fetch {name})"))


@datasets_group.command("fetch")
@click.argument("name")
@click.option("--from", "source", type=click.Path(path_type=Path), default=None,
              help="Install from a local copy (JSONL/CSV/Parquet) instead of downloading.")
@_guard
def datasets_fetch(name: str, source: Path | None) -> None:
    """Download a built-in prompt set at its pinned revision and verify it."""
    from llenergymeasure.orchestrator.build.datasets import fetch_dataset

    dest = fetch_dataset(name, source, notify=lambda m: click.echo(m, err=True))
    click.echo(f"{name}: installed at {dest}")


@main.group("images")
def images_group() -> None:
    """Backend images (one per backend, tagged by content)."""


@images_group.command("build")
@click.argument("backend", required=False, type=click.Choice(BACKENDS))
@click.option("--base", default=None, help="Base image instead of the Dockerfile's pinned default.")
@_guard
def images_build(backend: str | None, base: str | None) -> None:
    """Build BACKEND's image (default: every backend's)."""
    from llenergymeasure.orchestrator.build.images import IMAGES, base_for, build_image, docker_client

    client = docker_client()
    for name in [backend] if backend else list(IMAGES):
        spec = IMAGES[name]
        build_image(client, spec, base_for(spec, base), log=lambda m: click.echo(m, err=True))


@images_group.command("list")
@_guard
def images_list() -> None:
    """Each backend's expected tag, whether it exists here, and its id and digests."""
    from llenergymeasure.orchestrator.build.images import IMAGES, base_for, docker_client, find_image, image_tag, stale_images

    client = docker_client()
    for name, spec in IMAGES.items():
        base = base_for(spec)
        tag = image_tag(spec, base, client)
        image = find_image(client, tag)
        state = f"present {image.id[:19]}" if image else "missing"
        digests = ", ".join(image.attrs.get("RepoDigests") or []) if image else ""
        click.echo(f"{name:9} {tag:40} {state}" + (f" {digests}" if digests else ""))
        click.echo(f"{'':9} base {base}")
        for old in stale_images(client, spec):
            click.echo(f"{'':9} stale: {', '.join(old.tags) or old.id[:19]} (built from other harness content)")


@main.group("cache")
def cache_group() -> None:
    """The TensorRT-LLM engine cache ($LLEM_TRT_CACHE_DIR, else <llem cache>/trt-engines)."""


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@cache_group.command("list")
@_guard
def cache_list() -> None:
    """Cached engines, most recently used first."""
    from llenergymeasure.orchestrator.terminal import console
    from llenergymeasure.orchestrator.build.engine_store import cache_root, list_engines

    entries = list_engines()
    if not entries:
        click.echo(f"no cached engines in {cache_root()}")
        return
    from rich.table import Table

    t = Table(show_header=True, title=str(cache_root()))
    for col in ("key", "model", "build settings", "size", "build s", "created", "last used", "state"):
        t.add_column(col)
    for e in entries:
        state = f"damaged: {e.problem}" if e.problem else ("in use" if e.in_use else "ok")
        t.add_row(e.key[:12], e.model, e.settings_summary if e.material else "?", _gb(e.size_bytes),
                  f"{e.build_seconds:.1f}" if e.build_seconds is not None else "-",
                  e.created_at or "-", e.last_used_at or "-", state)
    console().print(t)
    click.echo(f"{len(entries)} engine(s), {_gb(sum(e.size_bytes for e in entries))}")


@cache_group.command("prune")
@click.option("--older-than", "older_than", type=float, default=None, metavar="DAYS",
              help="Remove engines not used for DAYS days.")
@click.option("--max-size", "max_size", type=float, default=None, metavar="GB",
              help="Then remove least recently used engines until the cache is at most GB (10^9 bytes).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@_guard
def cache_prune(older_than: float | None, max_size: float | None, dry_run: bool) -> None:
    """Remove damaged, old or least recently used engines; never one a run is using.

    Without --older-than or --max-size only damaged entries and leftovers of
    interrupted builds are removed.
    """
    from llenergymeasure.orchestrator.build.engine_store import prune

    removed = prune(older_than_days=older_than, max_total_gb=max_size, dry_run=dry_run,
                    notify=lambda m: click.echo(m, err=True))
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        why = f" (damaged: {e.problem})" if e.problem else f" (last used {e.last_used_at})"
        click.echo(f"{verb} {e.key[:12]} {e.model} {_gb(e.size_bytes)}{why}")
    click.echo(f"{verb} {len(removed)} engine(s), {_gb(sum(e.size_bytes for e in removed))}")


if __name__ == "__main__":
    main()
