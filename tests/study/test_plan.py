from collections import Counter

import pytest

from llenergymeasure.orchestrator.study.plan import order_runs


def pairs(runs):
    return [(r.experiment_index, r.cycle) for r in runs]


def test_sequential_runs_all_cycles_of_an_experiment_together():
    assert pairs(order_runs(2, 2, "sequential")) == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_interleaved_runs_a_cycle_of_every_experiment_at_a_time():
    assert pairs(order_runs(2, 2, "interleaved")) == [(1, 1), (2, 1), (1, 2), (2, 2)]


def test_shuffled_is_a_seeded_permutation_per_cycle():
    a = order_runs(6, 3, "shuffled", shuffle_seed=1)
    assert pairs(a) == pairs(order_runs(6, 3, "shuffled", shuffle_seed=1))
    assert pairs(a) != pairs(order_runs(6, 3, "shuffled", shuffle_seed=2))
    for c in (1, 2, 3):
        assert sorted(e for e, cy in pairs(a) if cy == c) == [1, 2, 3, 4, 5, 6]
    cycle_orders = {tuple(e for e, cy in pairs(a) if cy == c) for c in (1, 2, 3)}
    assert len(cycle_orders) > 1  # a new order each cycle


@pytest.mark.parametrize("order", ["sequential", "interleaved", "shuffled"])
def test_every_run_once_with_unique_ids_and_positions(order):
    runs = order_runs(12, 3, order)
    assert Counter(pairs(runs)) == Counter((e, c) for e in range(1, 13) for c in range(1, 4))
    assert len({r.run_id for r in runs}) == 36
    assert [r.position for r in runs] == list(range(1, 37))
    assert runs[0].run_id.startswith("e") and "-c" in runs[0].run_id
