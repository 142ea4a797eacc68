"""Statistics, Pareto frontiers and the cost view, against hand-computed values and
independent implementations (scipy's Welch test, a Monte Carlo coverage check)."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest
from scipy import stats as sps

from llenergymeasure.orchestrator.analysis import stats
from llenergymeasure.orchestrator.study.analysis_section import Costs
from llenergymeasure.orchestrator.analysis.costs import CO2, ENERGY_COST, ENERGY_KWH, FACILITY_KWH, GPU_TIME_COST, TOTAL_COST
from llenergymeasure.orchestrator.analysis.pareto import pareto_front
from llenergymeasure.orchestrator.analysis.formatting import fmt, summary_table
from llenergymeasure.orchestrator.analysis.summary import metric_columns, summarise
from llenergymeasure.orchestrator.analysis.tables import METRIC_COLUMNS


def test_describe_matches_a_hand_computed_t_interval():
    d = stats.describe([10.0, 12.0, 14.0])
    # mean 12, s = 2, t(0.975, 2) = 4.302653, half = 4.302653 * 2 / sqrt(3)
    half = 4.302652729911275 * 2 / math.sqrt(3)
    assert (d.n, d.mean, d.std) == (3, 12.0, 2.0)
    assert d.cv == pytest.approx(2 / 12)
    assert (d.ci_low, d.ci_high) == (pytest.approx(12 - half), pytest.approx(12 + half))


def test_describe_gives_no_interval_it_cannot_support():
    assert stats.describe([]).mean is None
    one = stats.describe([5.0, None, float("nan")])
    assert (one.n, one.mean, one.std, one.ci_low) == (1, 5.0, None, None)


def test_difference_agrees_with_scipys_welch_interval():
    a, b = [100.0, 104.0, 98.0, 101.0], [110.0, 118.0, 113.0]
    ours = stats.difference(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert ours.estimate == pytest.approx(sum(b) / 3 - sum(a) / 4)
    assert (ours.low, ours.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert ours.excludes(0.0) is True
    assert stats.difference([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]).excludes(0.0) is False


def test_ratio_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    rng = random.Random(3)
    true_a, true_b, sd, n, trials = 50.0, 100.0, 4.0, 3, 2000
    hits = 0
    for _ in range(trials):
        r = stats.ratio([rng.gauss(true_a, sd) for _ in range(n)], [rng.gauss(true_b, sd) for _ in range(n)])
        hits += r.low <= true_a / true_b <= r.high
    assert 0.92 <= hits / trials <= 0.98, hits / trials


def test_ratio_of_identical_samples_is_one_with_an_interval_around_it():
    r = stats.ratio([9.0, 10.0, 11.0], [9.0, 10.0, 11.0])
    assert r.estimate == 1.0 and r.low < 1.0 < r.high and r.excludes(1.0) is False
    assert stats.ratio([1.0], [2.0]) == stats.Interval(0.5, None, None)


def test_pareto_front_marks_the_undominated_points():
    # throughput up, energy down: (100, 1.0) and (300, 2.0) trade off; (90, 1.5) is dominated
    tps = [100.0, 300.0, 90.0, None, 300.0]
    energy = [1.0, 2.0, 1.5, 0.1, 2.0]
    assert pareto_front(tps, energy, maximise_x=True, maximise_y=False) == [True, True, False, None, True]


def _runs(**cols) -> pd.DataFrame:
    base = {"experiment_index": [1, 1, 1], "status": ["done"] * 3, "warnings": ["", "", ""]}
    return pd.DataFrame({**base, **cols})


EXPERIMENTS = [{"index": 1, "id": "a" * 64, "label": "x", "config": {"backend": "pytorch"}, "swept": {}}]


def test_cost_and_carbon_columns_match_a_hand_computed_case():
    # 0.9 J/token -> 0.25 kWh per million tokens; PUE 1.5 -> 0.375 kWh at the meter
    runs = _runs(energy_per_output_token_j=[0.9] * 3, output_tokens_per_s=[500.0] * 3, n_gpus=[2] * 3)
    costs = Costs(electricity_price_per_kwh=0.2, gpu_hour_price=3.0, pue=1.5,
                  grid_carbon_intensity_g_per_kwh=400, currency="EUR")
    s = summarise(runs, EXPERIMENTS, 1, costs).iloc[0]
    assert s[f"{ENERGY_KWH}_mean"] == pytest.approx(0.25)
    assert s[f"{FACILITY_KWH}_mean"] == pytest.approx(0.375)
    assert s[f"{ENERGY_COST}_mean"] == pytest.approx(0.075)
    # 1e6 tokens at 500 tok/s = 2000 s = 0.5556 h, x 2 GPUs x 3.0
    assert s[f"{GPU_TIME_COST}_mean"] == pytest.approx(2000 / 3600 * 2 * 3.0)
    assert s[f"{TOTAL_COST}_mean"] == pytest.approx(0.075 + 2000 / 3600 * 6.0)
    assert s[f"{CO2}_mean"] == pytest.approx(150.0)
    assert s["currency"] == "EUR"


def test_without_prices_there_are_no_cost_columns_and_partial_prices_give_partial_columns():
    runs = _runs(energy_per_output_token_j=[0.9] * 3, output_tokens_per_s=[500.0] * 3, n_gpus=[1] * 3)
    none = summarise(runs, EXPERIMENTS, 1, Costs())
    assert not [c for c in none.columns if "kwh" in c or "cost" in c or "co2" in c or c == "currency"]
    only_co2 = summarise(runs, EXPERIMENTS, 1, Costs(grid_carbon_intensity_g_per_kwh=100))
    assert f"{CO2}_mean" in only_co2 and f"{ENERGY_COST}_mean" not in only_co2
    assert only_co2.iloc[0][f"{CO2}_mean"] == pytest.approx(25.0)  # no PUE: none applied
    assert metric_columns(Costs(grid_carbon_intensity_g_per_kwh=100))[-2:] == [ENERGY_KWH, CO2]


def test_costs_are_null_where_energy_or_a_gpu_was_not_measured():
    runs = _runs(energy_per_output_token_j=[None] * 3, output_tokens_per_s=[500.0] * 3, n_gpus=[0] * 3)
    s = summarise(runs, EXPERIMENTS, 1, Costs(electricity_price_per_kwh=0.2, gpu_hour_price=2.0)).iloc[0]
    assert s[f"{ENERGY_COST}_n"] == 0 and s[f"{ENERGY_COST}_mean"] is None
    assert s[f"{GPU_TIME_COST}_n"] == 0  # a CPU run used no GPU: no GPU-time cost, not a made-up one


def test_summary_ratios_flags_and_frontier():
    runs = pd.DataFrame({
        "experiment_index": [1, 1, 1, 2, 2, 2, 3, 3],
        "status": ["done"] * 6 + ["done", "failed"],
        "warnings": ["", "", "", "", "thermal_throttling: GPU-1: hw_thermal", "", "", None],
        "output_tokens_per_s": [100, 102, 98, 400, 410, 390, 95, None],
        "energy_per_output_token_j": [2.0, 2.02, 1.98, 0.6, 0.61, 0.59, 2.5, None],
        "ttft_ms_p50": [10, 11, 9, 30, 31, 29, 12, None],
    })
    exps = [{"index": i, "id": str(i) * 64, "label": f"bs={b}", "config": {"backend": "pytorch",
             "pytorch": {"batch_size": b}}, "swept": {"pytorch.batch_size": b}} for i, b in ((1, 1), (2, 8), (3, 2))]
    s = summarise(runs, exps, 1).set_index("experiment_index")
    assert s.loc[1, "is_reference"] and s.loc[1, "output_tokens_per_s_ratio"] == 1.0
    assert s.loc[2, "output_tokens_per_s_ratio"] == pytest.approx(4.0)
    assert s.loc[2, "energy_per_output_token_j_ratio"] == pytest.approx(0.3)
    assert s.loc[2, "energy_per_output_token_j_ratio_ci95_low"] < 0.3 < s.loc[2, "energy_per_output_token_j_ratio_ci95_high"]
    assert s.loc[2, "pytorch.batch_size"] == 8
    assert not s.loc[1, "flagged"]
    assert "thermal_throttling" in s.loc[2, "flags"]
    assert "n=1 < 3" in s.loc[3, "flags"] and "1 failed run" in s.loc[3, "flags"]
    assert list(s["pareto_throughput_energy"]) == [False, True, False]
    assert list(s["pareto_latency_energy"]) == [True, True, False]


def test_noise_across_cycles_is_flagged_with_its_cv():
    """A configuration measured 34, 170 and 38 tok/s in its three cycles (seen here on a loaded
    machine) must not be published bare: its row says high_variance with the CV; a steady one
    does not, and analysis.max_cv moves the line."""
    runs = pd.DataFrame({
        "experiment_index": [1, 1, 1, 2, 2, 2],
        "status": ["done"] * 6,
        "warnings": [""] * 6,
        "output_tokens_per_s": [34.0, 170.0, 38.0, 500.0, 505.0, 495.0],
        "energy_per_output_token_j": [1.0, 1.01, 0.99, 0.5, 0.5, 0.5],
    })
    exps = [{"index": i, "id": str(i) * 64, "label": f"bs={b}", "config": {"backend": "pytorch",
             "pytorch": {"batch_size": b}}, "swept": {"pytorch.batch_size": b}} for i, b in ((1, 2), (2, 8))]
    s = summarise(runs, exps, 1).set_index("experiment_index")
    assert "high_variance: output_tokens_per_s CV 96% > 5% (analysis.max_cv)" in s.loc[1, "flags"], s.loc[1, "flags"]
    assert "energy_per_output_token_j" not in s.loc[1, "flags"]  # 1 % is steady
    assert not s.loc[2, "flagged"]
    loose = summarise(runs, exps, 1, max_cv=1.5).set_index("experiment_index")
    assert not loose.loc[1, "flagged"]



def test_every_latency_metric_is_summarised_like_ttft_and_printed():
    """TTFT, ITL, TPOT and E2E at p50/p90/p99 are runs.parquet columns; the summary gives each
    n, mean, std, a 95% t interval and a ratio to the reference; the printed table shows the p50s."""
    latency = [f"{m}_ms_p{p}" for m in ("ttft", "itl", "tpot", "e2e") for p in (50, 90, 99)]
    assert set(latency) <= set(METRIC_COLUMNS)
    rng = random.Random(11)
    runs = pd.DataFrame({"experiment_index": [1, 1, 1, 2, 2, 2], "status": ["done"] * 6, "warnings": [""] * 6,
                         **{c: [rng.uniform(10, 12) * (1 if i < 3 else 3) for i in range(6)] for c in latency}})
    exps = [{"index": i, "id": str(i) * 64, "label": f"bs={b}", "config": {"backend": "pytorch",
             "pytorch": {"batch_size": b}}, "swept": {"pytorch.batch_size": b}} for i, b in ((1, 1), (2, 8))]
    s = summarise(runs, exps, 1).set_index("experiment_index")
    for c in latency:
        means = {}
        for idx in (1, 2):
            v = runs.loc[runs["experiment_index"] == idx, c]
            means[idx] = v.mean()
            low, high = sps.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=sps.sem(v))
            assert s.loc[idx, f"{c}_n"] == 3 and s.loc[idx, f"{c}_mean"] == pytest.approx(v.mean()), c
            assert s.loc[idx, f"{c}_std"] == pytest.approx(v.std(ddof=1)), c
            assert (s.loc[idx, f"{c}_ci95_low"], s.loc[idx, f"{c}_ci95_high"]) == (pytest.approx(low), pytest.approx(high))
        assert s.loc[2, f"{c}_ratio"] == pytest.approx(means[2] / means[1]), c
    headers, rows = summary_table(s.reset_index())
    for header, c, digits in (("TTFT p50 ms", "ttft_ms_p50", 1), ("ITL p50 ms", "itl_ms_p50", 2),
                              ("TPOT p50 ms", "tpot_ms_p50", 2), ("E2E p50 ms", "e2e_ms_p50", 1)):
        cells = [r[headers.index(header)] for r in rows]
        assert [cell.split(" ± ")[0] for cell in cells] == [fmt(s.loc[i, f"{c}_mean"], digits) for i in (1, 2)]
