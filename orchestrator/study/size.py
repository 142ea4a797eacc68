"""How big a study may get before llem asks, and before it refuses.

A sweep is a Cartesian product: one more axis can turn 20 runs into 2,000 without
the author noticing. Above CONFIRM_ABOVE_RUNS runs llem asks (or wants --yes).
Some sizes are refused outright, each before the work it would cause: a study
file above MAX_FILE_BYTES before it is parsed (`llem run /dev/zero` must not read
forever), more than MAX_CYCLES cycles or MAX_RUNS runs (experiments x cycles) or
MAX_SWEEP_POINTS sweep points before anything is expanded or printed, since merely
building, validating and listing that many would take minutes and gigabytes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llenergymeasure.orchestrator.errors import UserError

CONFIRM_ABOVE_RUNS = 500
MAX_SWEEP_POINTS = 100_000
MAX_CYCLES = 10_000
MAX_RUNS = 100_000
MAX_FILE_BYTES = 1 << 20  # 1 MiB: a hand-written study is a few KiB


def check_run_count(n_experiments: int, n_cycles: int, source: Path) -> None:
    """Refuse a plan of more than MAX_RUNS runs; counted before the experiments exist."""
    n_runs = n_experiments * n_cycles
    if n_runs > MAX_RUNS:
        raise UserError(f"{source}: this study expands to {n_runs:,} runs ({n_experiments:,} experiments x "
                        f"{n_cycles:,} cycles); the limit is {MAX_RUNS:,}. Narrow the sweep, use fewer "
                        "cycles, or split it into several studies")


def confirm_run_count(n_runs: int, n_experiments: int, n_cycles: int, yes: bool,
                      confirm: Callable[[str], bool] | None) -> None:
    """Raise UserError unless a study this big was confirmed (--yes, or `confirm`)."""
    if n_runs <= CONFIRM_ABOVE_RUNS or yes:
        return
    question = (f"this study expands to {n_runs} runs ({n_experiments} experiments x {n_cycles} cycles), "
                f"more than {CONFIRM_ABOVE_RUNS}")
    if confirm is not None and confirm(question + "; run them all?"):
        return
    raise UserError(f"{question}; pass --yes to run it anyway, check the plan with --dry-run, "
                    "or narrow the sweep")
