"""How big a study may get before llem asks.

A sweep is a Cartesian product: one more axis can turn 20 runs into 2,000 without
the author noticing. Above CONFIRM_ABOVE_RUNS runs llem asks (or wants --yes);
above MAX_SWEEP_POINTS expanded points it refuses before expanding, since merely
building and validating that many configurations would take minutes and memory.
"""

from __future__ import annotations

from collections.abc import Callable

from llenergymeasure.orchestrator.errors import UserError

CONFIRM_ABOVE_RUNS = 500
MAX_SWEEP_POINTS = 100_000


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
