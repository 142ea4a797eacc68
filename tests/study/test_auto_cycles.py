"""`execution.n_cycles: auto` (issue 18, "Noise: caught, and beaten by cycles"): the stopping
rule on seeded draws of known variance, the interval it stops on (the summary's), the
settings, and the run ids and order of cycles added on the fly.

The metric source here is a seeded normal draw per cycle: a configuration's "measurement"
with a known coefficient of variation (the mean is 100, so sigma is the CV in %). Nothing
here measures anything; the real studies are in tests/execution/test_auto_cycles_runs.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from llenergymeasure.orchestrator.analysis import stats
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.plan import added_round, order_runs, plan_for
from llenergymeasure.orchestrator.study.precision import (
    ENERGY, THROUGHPUT, Verdict, ci_half_width_pct, judge, not_met_flag,
)
from llenergymeasure.orchestrator.study.spec import Execution
from tests.support.helpers import write

TARGET, MAX = 5.0, 10


class KnownNoise:
    """A fake metric source: each cycle of a configuration draws throughput and energy per
    token from normal distributions of mean 100 and the given CVs (in %), seeded."""

    def __init__(self, seed: int, throughput_cv: float, energy_cv: float | None) -> None:
        self.rng = np.random.default_rng(seed)
        self.cvs = {THROUGHPUT: throughput_cv, ENERGY: energy_cv}
        self.values: dict[str, list[float | None]] = {THROUGHPUT: [], ENERGY: []}

    def cycle(self) -> None:
        for m, cv in self.cvs.items():  # energy None: a machine without an energy meter
            self.values[m].append(None if cv is None else float(self.rng.normal(100.0, cv)))


def auto_study(sources: dict[str, KnownNoise], target: float = TARGET, max_cycles: int = MAX) -> dict[str, Verdict]:
    """What n_cycles: auto does with these configurations: three cycles of all, then one more
    cycle at a time of only those `judge` says need it (execution/auto_cycles.py's loop)."""
    for s in sources.values():
        for _ in range(3):
            s.cycle()
    final: dict[str, Verdict] = {}
    while True:
        verdicts = {k: judge(s.values, len(s.values[THROUGHPUT]), target, max_cycles)
                    for k, s in sources.items() if k not in final}
        final |= {k: v for k, v in verdicts.items() if not v.more}
        more = [k for k, v in verdicts.items() if v.more]
        if not more:
            return final
        for k in more:
            sources[k].cycle()


def test_a_quiet_configuration_stops_at_three_a_noisy_one_goes_on_and_a_hopeless_one_is_flagged():
    final = auto_study({"quiet": KnownNoise(3, 0.5, 0.5), "noisy energy": KnownNoise(1, 0.5, 4.0),
                        "hopeless": KnownNoise(5, 30.0, 1.0)})
    assert (final["quiet"].decision, final["quiet"].cycles, final["quiet"].flag) == ("met", 3, None)
    noisy = final["noisy energy"]  # throughput is quiet: energy per token alone keeps it going
    assert noisy.decision == "met" and 3 < noisy.cycles < MAX and noisy.flag is None
    first = KnownNoise(1, 0.5, 4.0)  # its first three cycles again (the same seed)
    for _ in range(3):
        first.cycle()
    assert ci_half_width_pct(first.values[THROUGHPUT]) <= TARGET < ci_half_width_pct(first.values[ENERGY])
    assert noisy.ci_pct[ENERGY] <= TARGET
    hopeless = final["hopeless"]
    assert (hopeless.decision, hopeless.cycles) == ("max_cycles", MAX)
    assert hopeless.flag.startswith("ci_target_not_met: throughput CI ±") and "energy" not in hopeless.flag
    assert hopeless.flag.endswith(f"> 5% after {MAX} cycles")
    assert hopeless.ci_pct[THROUGHPUT] > TARGET


@pytest.mark.parametrize("cv", [0.5, 4.0, 30.0])
def test_stopping_follows_the_known_variance_over_many_seeds(cv):
    """200 seeded configurations per CV. With sigma known, the chance that three cycles
    already meet the target is P(t(2) * s / sqrt(3) <= 5), i.e. chi2(2) <= 2 (5 sqrt(3) / (t sigma))^2:
    the rule must stop at three cycles that often (a wrong quantile or level would not),
    every configuration that stops early must be within the target, and none ever runs
    past max_cycles."""
    finals = [auto_study({"c": KnownNoise(seed, cv, None)})["c"] for seed in range(200)]
    t2 = sps.t.ppf(0.975, 2)
    expected_at_three = sps.chi2.cdf(2 * (TARGET * math.sqrt(3) / (t2 * cv)) ** 2, 2)
    at_three = sum(v.cycles == 3 for v in finals) / len(finals)
    assert abs(at_three - expected_at_three) < 0.08, (at_three, expected_at_three)
    for v in finals:
        assert 3 <= v.cycles <= MAX and v.unjudged == (ENERGY,)  # no energy: throughput alone, said
        if v.decision == "met":
            assert v.ci_pct[THROUGHPUT] <= TARGET and v.flag is None
        else:
            assert v.decision == "max_cycles" and v.cycles == MAX and v.ci_pct[THROUGHPUT] > TARGET and v.flag
    if cv == 0.5:
        assert all(v.cycles == 3 for v in finals)
    if cv == 30.0:
        assert all(v.decision == "max_cycles" for v in finals)
    if cv == 4.0:
        assert 0.6 < sum(v.cycles > 3 for v in finals) / len(finals) and any(v.cycles >= 6 for v in finals)


def test_the_rule_stops_on_the_summarys_interval():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        xs = list(rng.normal(50.0, 3.0, n))
        d = stats.describe(xs)
        assert ci_half_width_pct(xs) == pytest.approx(100 * (d.ci_high - d.ci_low) / 2 / d.mean, rel=1e-12)
    assert ci_half_width_pct([1.0]) is None and ci_half_width_pct([None, float("nan"), 2.0]) is None


def test_failed_runs_and_missing_values():
    samples = {THROUGHPUT: [100.0, 130.0], ENERGY: [None, None]}
    v = judge(samples, 3, TARGET, MAX, failed=1)  # more cycles do not mend a failing configuration
    assert v.decision == "failed" and v.flag.startswith("ci_target_not_met: throughput CI ±")
    assert "energy per token not measured" in v.describe()
    # energy measured by one run only: no interval, which meets no target
    v = judge({THROUGHPUT: [100.0, 100.1, 99.9], ENERGY: [1.0, None, None]}, 3, TARGET, MAX)
    assert v.more and v.ci_pct[ENERGY] is None
    assert not_met_flag({ENERGY: None}, 5, 4) == "ci_target_not_met: energy per token CI no interval > 5% after 4 cycles"


# -- the settings -------------------------------------------------------------------------

BASE = "model: llem/tiny-llama\nn_prompts: 2\nmax_input_tokens: 8\nmax_output_tokens: 2\n" \
       "sweep: {pytorch.batch_size: [1, 2, 4]}\n"


def _load(tmp_path: Path, execution: str, **kw) -> Execution:
    return load_study(write(tmp_path / "s.yaml", BASE + f"execution: {execution}\n"), **kw).execution


def test_auto_settings_defaults_bounds_and_messages(tmp_path):
    ex = _load(tmp_path, "{n_cycles: auto}")
    assert (ex.auto, ex.target_ci_pct, ex.max_cycles, ex.first_cycles, ex.most_cycles) == (True, 5.0, 10, 3, 10)
    assert ex.describe_cycles() == "auto (3–10 cycles, target ±5 %)"
    assert _load(tmp_path, "{n_cycles: 4}").describe_cycles() == "4"
    bad = {
        "{n_cycles: 3, max_cycles: 6}": "execution.max_cycles: applies only with n_cycles: auto (n_cycles is 3)",
        "{target_ci_pct: 2}": "execution.target_ci_pct: applies only with n_cycles: auto",
        "{n_cycles: auto, max_cycles: 2}": "execution.max_cycles: must be an integer from 3 to 10000",
        "{n_cycles: auto, target_ci_pct: 0}": "execution.target_ci_pct: must be a number greater than 0 and at most 100",
        "{n_cycles: automatic}": "execution.n_cycles: must be an integer from 1 to 10000, or auto (got 'automatic')",
        "{n_cycles: true}": "execution.n_cycles: must be an integer, not a boolean (or auto) (got True)",
        "{n_cycles: 2.5}": "execution.n_cycles: must be an integer from 1 to 10000, or auto (got 2.5)",
        "{n_cycles: 0}": "execution.n_cycles: must be an integer from 1 to 10000, or auto (got 0)",
    }
    for text, message in bad.items():
        with pytest.raises(UserError) as e:
            _load(tmp_path, text)
        assert message in str(e.value), (text, str(e.value))


def test_cycles_on_the_command_line_replace_auto(tmp_path):
    ex = _load(tmp_path, "{n_cycles: auto, max_cycles: 6, target_ci_pct: 2}", cycles=4)
    assert (ex.auto, ex.n_cycles, ex.first_cycles, ex.most_cycles) == (False, 4, 4, 4)


def test_an_auto_study_is_sized_for_its_most_runs(tmp_path):
    """The run-count limit counts max_cycles: a study that could grow past it is refused up front."""
    many = "model: llem/tiny-llama\nsweep: {seed: [" + ", ".join(map(str, range(20_000))) + "]}\n"
    with pytest.raises(UserError, match="200,000 runs .20,000 experiments x 10 cycles"):
        load_study(write(tmp_path / "big.yaml", many + "execution: {n_cycles: auto}\n"))


# -- run ids and the order of added cycles --------------------------------------------------

def test_run_ids_are_sized_for_max_cycles_and_added_cycles_continue_the_plan():
    first = plan_for(4, Execution.model_validate({"n_cycles": "auto", "max_cycles": 10}))
    assert [r.run_id for r in first[:5]] == ["e01-c01", "e02-c01", "e03-c01", "e04-c01", "e01-c02"]
    assert len(first) == 12 and {r.cycle for r in first} == {1, 2, 3}
    added = added_round({3: 4, 1: 4}, 4, "interleaved", 0, 10, first_position=13)
    assert [(r.run_id, r.position) for r in added] == [("e01-c04", 13), ("e03-c04", 14)]
    last = added_round({2: 10}, 4, "sequential", 0, 10, first_position=20)
    assert [r.run_id for r in last] == ["e02-c10"]
    # not auto: the ids are as they always were
    assert [r.run_id for r in plan_for(2, Execution())][:2] == ["e01-c1", "e02-c1"]


def test_a_shuffled_auto_study_adds_cycles_in_the_seeded_order():
    full = order_runs(6, 5, "shuffled", shuffle_seed=7)
    cycle5 = [r.experiment_index for r in full if r.cycle == 5]
    added = added_round({e: 5 for e in (2, 4, 5)}, 6, "shuffled", 7, 10, first_position=1)
    assert [r.experiment_index for r in added] == [e for e in cycle5 if e in (2, 4, 5)]
    assert added == added_round({e: 5 for e in (5, 4, 2)}, 6, "shuffled", 7, 10, first_position=1)
