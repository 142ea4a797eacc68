"""The run plan: one run per (experiment, cycle), in the study's order.

- sequential: all cycles of experiment 1, then of experiment 2, ...
- interleaved: cycle 1 of every experiment, then cycle 2, ... (spreads drift,
  e.g. warming hardware, across configurations)
- shuffled: like interleaved, with the experiments in a seeded random order in
  every cycle (removes systematic order effects)
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class PlannedRun:
    run_id: str  # e.g. "e03-c2"
    experiment_index: int
    cycle: int
    position: int  # 1-based place in the execution order


def run_id(experiment_index: int, cycle: int, n_experiments: int, n_cycles: int) -> str:
    we, wc = max(2, len(str(n_experiments))), len(str(n_cycles))
    return f"e{experiment_index:0{we}d}-c{cycle:0{wc}d}"


def order_runs(n_experiments: int, n_cycles: int, order: str, shuffle_seed: int = 0) -> list[PlannedRun]:
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
        PlannedRun(run_id(e, c, n_experiments, n_cycles), e, c, pos)
        for pos, (e, c) in enumerate(pairs, start=1)
    ]
