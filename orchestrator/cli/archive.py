"""`llem archive add|list|query|push|migrate` and `llem site`: the results archive
(orchestrator/archive/) and its static explorer."""

from __future__ import annotations

from pathlib import Path

import click

from llenergymeasure.orchestrator.cli.app import guard, main

ARCHIVE = click.option("--archive", "archive", type=str, default=None, envvar="LLEM_ARCHIVE",  # str: hf://... too
                       help="The archive directory (default: $LLEM_ARCHIVE, else "
                            "$XDG_DATA_HOME/llenergymeasure/archive, i.e. ~/.local/share/llenergymeasure/archive).")
TABLE_FORMATS = click.Choice(["table", "csv", "json"])


def _print_frame(df, fmt: str, title: str | None = None) -> None:  # noqa: ANN001  (a pandas DataFrame)
    from llenergymeasure.orchestrator.analysis.export import to_csv, to_json
    from llenergymeasure.orchestrator.archive.query import cell
    from llenergymeasure.orchestrator.terminal import Terminal

    if fmt == "csv":
        click.echo(to_csv(df), nl=False)
    elif fmt == "json":
        click.echo(to_json(df))
    else:
        Terminal().print_rows([str(c) for c in df.columns], [[cell(v) for v in row] for row in df.itertuples(index=False)],
                              title)


@main.group("archive")
def archive_group() -> None:
    """A results archive many studies feed: add studies, list and query them (DuckDB), push to a Hub dataset."""


@archive_group.command("add")
@click.argument("study_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@ARCHIVE
@click.option("--partial", is_flag=True, help="Add a study whose runs have not all finished (marked partial).")
@click.option("--keep-identity", is_flag=True,
              help="Keep host and user names, home paths, GPU UUIDs and environment variables (stripped by default).")
@guard
def add_cmd(study_dirs: tuple[Path, ...], archive: str | None, partial: bool, keep_identity: bool) -> None:
    """Add finished STUDY_DIRS to the archive: validated, de-duplicated, written atomically."""
    from llenergymeasure.orchestrator.archive.add import add_studies

    out = add_studies(list(study_dirs), archive, partial, keep_identity)
    for sid in out.added:
        click.echo(f"added {sid}")
    for sid in out.replaced:
        click.echo(f"replaced {sid} (a more complete copy)")
    for sid, why in out.unchanged:
        click.echo(f"unchanged {sid}: {why}")
    click.echo(f"archive: {out.archive}")


@archive_group.command("list")
@ARCHIVE
@click.option("--format", "fmt", type=TABLE_FORMATS, default="table", show_default=True)
@guard
def list_cmd(archive: str | None, fmt: str) -> None:
    """Every study in the archive: when, what hardware, which models, how complete."""
    from llenergymeasure.orchestrator.archive.query import list_studies

    _print_frame(list_studies(archive), fmt)


@archive_group.command("query")
@click.argument("sql")
@ARCHIVE
@click.option("--format", "fmt", type=TABLE_FORMATS, default="table", show_default=True)
@guard
def query_cmd(sql: str, archive: str | None, fmt: str) -> None:
    """Run SQL over the archive's views: studies, runs, summary, environment (DuckDB).

    e.g. llem archive query "select label, mean, ci95_low, ci95_high from summary
    where metric = 'energy_per_output_token_j'"
    """
    from llenergymeasure.orchestrator.archive.query import query

    _print_frame(query(archive, sql), fmt)


@archive_group.command("push")
@click.option("--to", "to", required=True, metavar="hf://datasets/OWNER/NAME",
              help="The Hugging Face dataset to upload to (created when missing).")
@ARCHIVE
@click.option("--private", is_flag=True, help="Create the dataset private when it does not exist yet.")
@guard
def push_cmd(to: str, archive: str | None, private: bool) -> None:
    """Upload the archive's files to a Hugging Face dataset; the token comes from $HF_TOKEN only."""
    from llenergymeasure.orchestrator.archive.push import push

    url = push(archive, to, private)
    click.echo(f"pushed: {url}")


@archive_group.command("migrate")
@ARCHIVE
@guard
def migrate_cmd(archive: str | None) -> None:
    """Bring an archive written by an earlier llem to this llem's schema version."""
    from llenergymeasure.orchestrator.archive.migrate import migrate

    click.echo(migrate(archive))


@main.command("site")
@click.argument("archive", type=str, required=False)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The folder to write (index.html and the files it loads; nothing is fetched from the network).")
@guard
def site_cmd(archive: str | None, output: Path) -> None:
    """Write a static explorer of ARCHIVE (default: the user's archive) into a folder."""
    from llenergymeasure.orchestrator.archive.site import build_site

    index = build_site(archive, output)
    click.echo(f"site: {index}")
