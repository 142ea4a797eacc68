"""The run plan: one run per (experiment, cycle), in the study's order.

- sequential: all cycles of experiment 1, then of experiment 2, ...
- interleaved: cycle 1 of every experiment, then cycle 2, ... (spreads drift,
  e.g. warming hardware, across configurations)
- shuffled: like interleaved, with the experiments in a seeded random order in
  every cycle (removes systematic order effects)

With `n_cycles: auto` the plan starts as the first cycles (study/precision.py) and grows
by `added_round`: one cycle of only the configurations that need it, appended after
everything planned. Run ids are sized for max_cycles from the start (`e01-c03` when up to
10 cycles), so that an added `e01-c10` sorts and reads like the first ones.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llenergymeasure.orchestrator.study.spec import Execution


@dataclass(frozen=True)
class PlannedRun:
    run_id: str  # e.g. "e03-c2"
    experiment_index: int
    cycle: int
    position: int  # 1-based place in the execution order


def run_id(experiment_index: int, cycle: int, n_experiments: int, n_cycles: int) -> str:
    we, wc = max(2, len(str(n_experiments))), len(str(n_cycles))
    return f"e{experiment_index:0{we}d}-c{cycle:0{wc}d}"


def order_runs(n_experiments: int, n_cycles: int, order: str, shuffle_seed: int = 0,
               id_cycles: int | None = None) -> list[PlannedRun]:
    """The plan. `id_cycles`: the most cycles the study may reach (n_cycles: auto's
    max_cycles), which sizes the run ids; by default n_cycles."""
    exps = list(range(1, n_experiments + 1))
    cycles = range(1, n_cycles + 1)
    if order == "sequential":
        pairs = [(e, c) for e in exps for c in cycles]
    elif order == "interleaved":
        pairs = [(e, c) for c in cycles for e in exps]
    elif order == "shuffled":
        rng = random.Random(shuffle_seed)
        pairs = []
        for c in cycles:
            perm = exps[:]
            rng.shuffle(perm)
            pairs.extend((e, c) for e in perm)
    else:
        raise ValueError(f"unknown order {order!r}")
    return [
        PlannedRun(run_id(e, c, n_experiments, id_cycles or n_cycles), e, c, pos)
        for pos, (e, c) in enumerate(pairs, start=1)
    ]


def added_round(next_cycles: Mapping[int, int], n_experiments: int, order: str, shuffle_seed: int,
                id_cycles: int, first_position: int) -> list[PlannedRun]:
    """One added round (`n_cycles: auto`): the next cycle of each experiment in `next_cycles`
    (experiment index -> its cycle number, the same for all of them unless a retried failure
    put one behind), placed from `first_position`. Interleaved and sequential studies take
    them in experiment order; shuffled ones in the order the round's cycle has in a fixed
    plan of as many cycles, so that the same seed always gives the same order, on resume too."""
    if order == "shuffled":
        cycle = max(next_cycles.values())
        full = order_runs(n_experiments, cycle, order, shuffle_seed)
        ordered = [r.experiment_index for r in full if r.cycle == cycle and r.experiment_index in next_cycles]
    else:
        ordered = sorted(next_cycles)
    return [PlannedRun(run_id(e, next_cycles[e], n_experiments, id_cycles), e, next_cycles[e], pos)
            for pos, e in enumerate(ordered, start=first_position)]


def plan_for(n_experiments: int, execution: Execution) -> list[PlannedRun]:
    """The plan a study starts with: all its cycles, or n_cycles: auto's first cycles (with
    run ids sized for max_cycles)."""
    return order_runs(n_experiments, execution.first_cycles, execution.order, execution.shuffle_seed,
                      id_cycles=execution.most_cycles)
