"""The `llem` command group, and the one mapping from what went wrong to an exit code:
0 success, 1 a run or download failed, 2 bad input (one message, no traceback), 130
Ctrl-C, 143 SIGTERM. Only internal errors print a traceback."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from llenergymeasure.backends import __version__
from llenergymeasure.orchestrator.errors import Failure, UserError
from llenergymeasure.orchestrator.execution.signals import Interrupted, describe, exit_code


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map failures to exit codes; only internal errors print a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:
            said = e.outcome if isinstance(e, Interrupted) else None  # what it left behind, where known
            click.echo(f"\ninterrupted ({describe(e)})" + (f": {said}" if said else ""), err=True)
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
    # GPU settings (gpu:) a llem that died left changed on this host are put back first,
    # whatever the command (execution/gpu_levers.py); a directory listing when there are none
    from llenergymeasure.orchestrator.execution.gpu_levers import restore_at_start

    restore_at_start(lambda line: click.echo(f"llem: {line}", err=True))


FORMATS = click.Choice(["table", "csv", "json", "markdown"])
