"""The summary of an `n_cycles: auto` study: the cycles each configuration ran, and the
`ci_target_not_met` flag on one that stopped with its interval still wider than the target,
computed from the same finished runs and the same interval as the summary's own columns."""

from __future__ import annotations

import pandas as pd
import pytest

from llenergymeasure.orchestrator.analysis.summary import summarise

EXPS = [{"index": i, "id": str(i) * 64, "label": f"bs={b}", "config": {"backend": "pytorch", "pytorch": {"batch_size": b}},
         "swept": {"pytorch.batch_size": b}} for i, b in ((1, 1), (2, 2), (3, 4))]


def _runs() -> pd.DataFrame:
    """1: three quiet cycles; 2: ten noisy ones (max_cycles); 3: three cycles, one failed, and an
    added one not run yet (a study stopped mid-round)."""
    rows = [(1, "done", 100.0, 1.0), (1, "done", 100.5, 1.01), (1, "done", 99.5, 0.99)]
    rows += [(2, "done", t, 1.0) for t in (100, 140, 80, 120, 90, 130, 70, 110, 95, 125)]
    rows += [(3, "done", 50.0, None), (3, "failed", None, None), (3, "done", 70.0, None), (3, "pending", None, None)]
    return pd.DataFrame(rows, columns=["experiment_index", "status", "output_tokens_per_s", "energy_per_output_token_j"])


def test_cycles_run_and_the_target_flag():
    s = summarise(_runs(), EXPS, 1, ci_target_pct=5.0).set_index("experiment_index")
    assert s["cycles_run"].to_dict() == {1: 3, 2: 10, 3: 3}  # done or failed; the pending one did not run
    assert s["runs_planned"].to_dict() == {1: 3, 2: 10, 3: 4}
    assert "ci_target_not_met" not in s.loc[1, "flags"]
    flag = next(f for f in s.loc[2, "flags"].split("; ") if f.startswith("ci_target_not_met"))
    low, high, mean = (s.loc[2, f"output_tokens_per_s_{k}"] for k in ("ci95_low", "ci95_high", "mean"))
    assert flag == f"ci_target_not_met: throughput CI ±{100 * (high - low) / 2 / mean:.1f}% > 5% after 10 cycles"
    assert "energy" not in flag  # energy per token was steady
    # 3 measured no energy: throughput alone, and its failure is flagged beside it
    assert "ci_target_not_met: throughput CI ±" in s.loc[3, "flags"] and "after 3 cycles" in s.loc[3, "flags"]
    assert "1 failed run(s)" in s.loc[3, "flags"] and "energy per token" not in s.loc[3, "flags"]


def test_no_target_no_flag():
    s = summarise(_runs(), EXPS, 1).set_index("experiment_index")  # a study with a fixed number of cycles
    assert not s["flags"].str.contains("ci_target_not_met").any()
    assert s.loc[2, "cycles_run"] == 10


def test_a_throughput_only_summary_judges_throughput_only():
    runs = _runs()
    runs.loc[runs["experiment_index"] == 1, "energy_per_output_token_j"] = [1.0, 2.0, 0.5]  # noisy, but not published
    s = summarise(runs, EXPS, 1, include_energy=False, ci_target_pct=5.0).set_index("experiment_index")
    assert "ci_target_not_met" not in s.loc[1, "flags"]
    with_energy = summarise(runs, EXPS, 1, ci_target_pct=5.0).set_index("experiment_index")
    assert "ci_target_not_met: energy per token CI ±" in with_energy.loc[1, "flags"]


@pytest.mark.parametrize("target", [1.0, 50.0])
def test_the_flag_follows_the_target(target):
    s = summarise(_runs(), EXPS, 1, ci_target_pct=target).set_index("experiment_index")
    assert ("ci_target_not_met" in s.loc[2, "flags"]) == (target == 1.0)
