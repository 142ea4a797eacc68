"""The study summary's prefill/decode split (orchestrator/analysis/phase_split.py): the decode
figure's interval propagated from both windows across cycles (against scipy's Welch interval),
flagged when it spans zero; and the energy-delay product and tokens per joule summarised
like every metric, null where energy is."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats as sps

from llenergymeasure.orchestrator.analysis.phase_split import DECODE, PREFILL, SPANS_ZERO, decode_interval
from llenergymeasure.orchestrator.analysis.summary import summarise

CONFIG = {"backend": "pytorch", "measurement": {"phase_split": True}}
K = 64.0  # decode tokens per pass


def runs(full: list[float], prefill: list[float], energy: bool = True) -> pd.DataFrame:
    n = len(full)
    return pd.DataFrame({
        "experiment_index": [1] * n, "status": ["done"] * n, "cycle": list(range(1, n + 1)), "warnings": [""] * n,
        "phase_split.full_energy_per_pass_j": full if energy else [None] * n,
        "phase_split.prefill_energy_per_pass_j": prefill if energy else [None] * n,
        "phase_split.decode_tokens_per_pass": [K] * n,
        PREFILL: [p / 512 for p in prefill] if energy else [None] * n,
        DECODE: [(f - p) / K for f, p in zip(full, prefill)] if energy else [None] * n,
        "prefill_time_per_input_token_s": [1e-4] * n, "decode_time_per_output_token_s": [2e-3] * n,
        "energy_j": [f * 3 for f in full] if energy else [None] * n,
        "energy_delay_product_js": [f / 8 * 0.5 for f in full] if energy else [None] * n,
        "output_tokens_per_joule": [K / f for f in full] if energy else [None] * n,
    })


EXPERIMENTS = [{"index": 1, "id": "x", "label": "(base)", "config": CONFIG, "swept": {}}]


def test_decode_interval_is_welchs_difference_of_the_two_windows_over_k():
    full, prefill = [24.0, 25.0, 23.5], [6.0, 6.4, 5.9]
    r = decode_interval(full, prefill, K)
    ref = sps.ttest_ind(full, prefill, equal_var=False).confidence_interval(0.95)
    assert r.estimate == pytest.approx((sum(full) / 3 - sum(prefill) / 3) / K)
    assert (r.low, r.high) == (pytest.approx(ref.low / K), pytest.approx(ref.high / K))
    assert decode_interval(full, prefill, 0.0).estimate is None  # max_output_tokens 1: no decode


def test_summary_gives_the_decode_interval_and_flags_one_spanning_zero():
    tight = summarise(runs([24.0, 25.0, 23.5], [6.0, 6.4, 5.9]), EXPERIMENTS).iloc[0]
    assert tight[f"{DECODE}_ci95_low"] > 0 and tight[SPANS_ZERO] is not None and not bool(tight[SPANS_ZERO])
    assert SPANS_ZERO not in tight["flags"]
    assert tight[f"{PREFILL}_mean"] == pytest.approx(sum(p / 512 for p in [6.0, 6.4, 5.9]) / 3)
    noisy = summarise(runs([10.0, 30.0, 6.0], [9.0, 6.0, 12.0]), EXPERIMENTS).iloc[0]
    assert noisy[f"{DECODE}_ci95_low"] < 0 < noisy[f"{DECODE}_ci95_high"] and bool(noisy[SPANS_ZERO])
    assert f"{SPANS_ZERO}: decode energy per output token" in noisy["flags"] and noisy["flagged"]


def test_without_energy_the_split_has_times_but_no_energy_and_no_flag():
    row = summarise(runs([1.0] * 3, [1.0] * 3, energy=False), EXPERIMENTS).iloc[0]
    assert row[f"{DECODE}_mean"] is None and row[SPANS_ZERO] is None and SPANS_ZERO not in row["flags"]
    assert row["decode_time_per_output_token_s_mean"] == pytest.approx(2e-3)
    assert pd.isna(row["energy_delay_product_js_mean"]) and pd.isna(row["output_tokens_per_joule_mean"])


def test_energy_delay_product_and_tokens_per_joule_are_summarised():
    row = summarise(runs([24.0, 25.0, 23.5], [6.0, 6.4, 5.9]), EXPERIMENTS).iloc[0]
    assert row["energy_delay_product_js_mean"] == pytest.approx(sum(f / 8 * 0.5 for f in [24.0, 25.0, 23.5]) / 3)
    assert row["output_tokens_per_joule_mean"] == pytest.approx(sum(K / f for f in [24.0, 25.0, 23.5]) / 3)
    assert row["output_tokens_per_joule_ci95_low"] < row["output_tokens_per_joule_mean"]
