"""`llem results`, `llem report`, `llem compare`: reading finished studies."""

from __future__ import annotations

from pathlib import Path

import click

from llenergymeasure.orchestrator.cli.app import FORMATS, guard, main

REFERENCE = click.option("--reference", type=click.IntRange(min=1), default=None,
                         help="Experiment number to take ratios against (default: the study's analysis.reference).")


@main.command("results")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True,
              help="table: for reading; csv/json: every summary column; markdown: the table's cells.")
@REFERENCE
@guard
def results_cmd(study_dir: Path, fmt: str, reference: int | None) -> None:
    """Summarise STUDY_DIR across cycles: means, 95% CIs, ratios to the reference, Pareto, flags."""
    from llenergymeasure.orchestrator.analysis.export import to_csv, to_json, to_markdown
    from llenergymeasure.orchestrator.analysis.formatting import cost_table, summary_table
    from llenergymeasure.orchestrator.analysis.results import open_study
    from llenergymeasure.orchestrator.analysis.serving import serving_table
    from llenergymeasure.orchestrator.terminal import Terminal

    results = open_study(study_dir, reference)
    serving = serving_table(results.summary)
    if fmt == "csv":
        click.echo(to_csv(results.summary), nl=False)
    elif fmt == "json":
        click.echo(to_json(results.summary))
    elif fmt == "markdown":
        click.echo(to_markdown(*summary_table(results.summary)))
        costs = cost_table(results.summary)
        if costs:
            click.echo("\n" + to_markdown(*costs))
        if serving:
            click.echo("\n" + to_markdown(*serving))
    else:
        term = Terminal()
        term.notify(f"{results.name}: {results.study_dir}")
        term.print_summary(results)
        if serving:  # goodput and saturation per configuration (a serving study)
            term.print_rows(*serving, "serving: offered and achieved request rates, goodput (requests/s meeting "
                                      "every serving.slo target) and runs that fell behind their load (saturated)")


@main.command("report")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write the HTML (default: STUDY_DIR/report.html).")
@REFERENCE
@click.option("--runs", "power_runs", default=None, metavar="RUN_ID,...",
              help="Runs whose power over time to chart (default: the first finished run of each configuration).")
@guard
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
@guard
def compare_cmd(dir_a: Path, dir_b: Path, fmt: str) -> None:
    """The configurations DIR_A and DIR_B share, side by side: B - A with its 95% CI."""
    from llenergymeasure.orchestrator.analysis.compare import compare, environment_differences
    from llenergymeasure.orchestrator.analysis.export import to_csv, to_json, to_markdown
    from llenergymeasure.orchestrator.analysis.formatting import compare_table
    from llenergymeasure.orchestrator.analysis.results import open_study
    from llenergymeasure.orchestrator.terminal import Terminal

    a, b = open_study(dir_a), open_study(dir_b)
    table, notes = compare(a, b)
    if fmt in ("csv", "json"):
        click.echo(to_csv(table), nl=False) if fmt == "csv" else click.echo(to_json(table))
        return
    diffs = environment_differences(a, b)
    if fmt == "markdown":
        if diffs:
            click.echo(to_markdown(["environment", "A", "B"], [list(d) for d in diffs]))
        click.echo(to_markdown(*compare_table(table)))
        return
    term = Terminal()
    term.notify(f"A: {a.study_dir}\nB: {b.study_dir}")
    term.print_environment_differences(diffs)
    term.print_comparison(table, "B - A per configuration: mean ± 95% CI half-width; 'differs' when the CI of "
                                 "the change excludes zero")
    for n in notes:
        term.notify(f"note: {n}")
