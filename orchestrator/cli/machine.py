"""`llem config` (alias `llem doctor`): what this machine offers."""

from __future__ import annotations

import json

import click

from llenergymeasure.orchestrator.cli.app import guard, main


@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guard
def config_cmd(as_json: bool) -> None:
    """What this machine offers: GPUs, energy sources, Docker, backends, paths."""
    from llenergymeasure.orchestrator.execution.machine import as_dicts, collect
    from llenergymeasure.orchestrator.terminal import Terminal

    checks = collect()
    if as_json:
        click.echo(json.dumps(as_dicts(checks), indent=2))
        return
    Terminal().print_rows(["area", "item", "", "detail"],
                          [[c.area, c.item, "yes" if c.ok else "no", c.detail] for c in checks])


main.add_command(config_cmd, name="doctor")
