"""The serving section of the analysis (orchestrator/analysis/serving.py) on summaries built
by hand: which configuration the report names at each load, and why."""

from __future__ import annotations

import pandas as pd

from llenergymeasure.orchestrator.analysis.serving import (
    answer, saturation_columns, serving_section, serving_table, slo_text,
)


def row(index: int, label: str, *, j: float | None, j_ci: float = 0.01, share: float = 1.0, saturated: int = 0,
        goodput: float = 3.0, rate="4") -> dict:
    out = {"experiment_index": index, "label": label, "backend": "pytorch", "runs_done": 3, "runs_planned": 3,
           "slo_met_share_mean": share, "slo_met_share_ci95_low": share, "slo_met_share_ci95_high": share,
           "saturated_runs": saturated, "saturation_assessed_runs": 3, "goodput_rps_mean": goodput,
           "goodput_rps_ci95_low": goodput - 0.1, "goodput_rps_ci95_high": goodput + 0.1,
           "energy_per_output_token_j_mean": j,
           "energy_per_output_token_j_ci95_low": None if j is None else j - j_ci,
           "energy_per_output_token_j_ci95_high": None if j is None else j + j_ci,
           "output_tokens_per_s_mean": 10.0 * index}
    return out


SLO = slo_text({"ttft_ms": 500, "tpot_ms": 50})


def test_the_slo_line_names_every_target():
    assert SLO == "TTFT ≤ 500 ms, TPOT ≤ 50 ms"


def test_the_answer_is_the_lowest_energy_per_token_among_those_meeting_the_slo():
    s = pd.DataFrame([row(1, "pytorch", j=0.50), row(2, "vllm", j=0.30),
                      row(3, "cheap but late", j=0.10, share=0.80),       # misses the SLO
                      row(4, "cheap but saturated", j=0.05, saturated=1)])  # fell behind once
    text = answer(s, True, None, SLO)
    assert "among the 2 configurations that meet the SLO" in text and "vllm (0.300 ± 0.010 J/token)" in text
    assert "overlaps" not in text


def test_overlapping_intervals_are_said_to_be_indistinguishable():
    s = pd.DataFrame([row(1, "pytorch", j=0.31, j_ci=0.05), row(2, "vllm", j=0.30, j_ci=0.05)])
    assert "Its interval overlaps pytorch's" in answer(s, True, None, SLO)


def test_none_meeting_the_slo_is_said():
    s = pd.DataFrame([row(1, "a", j=0.5, share=0.5), row(2, "b", j=0.3, saturated=2)])
    assert answer(s, True, None, SLO).startswith("No configuration meets the SLO (TTFT ≤ 500 ms")


def test_without_energy_the_answer_is_by_goodput_and_says_so():
    s = pd.DataFrame([row(1, "pytorch", j=None, goodput=2.0), row(2, "vllm", j=None, goodput=3.5)])
    text = answer(s, False, "no RAPL here", SLO)
    assert text.startswith("Energy per token was not measured (no RAPL here), so the answer is by goodput alone")
    assert "vllm has the highest" in text


def test_the_section_groups_configurations_by_load_level_in_rate_order():
    experiments = [{"index": i, "config": {"scenario": "serving", "serving": {
        "request_rate": rate, "n_requests": 8, "max_concurrency": 4, "slo": {"ttft_ms": 500}}}}
        for i, rate in ((1, "inf"), (2, 4.0), (3, "inf"), (4, 4.0))]
    s = pd.DataFrame([row(i, f"c{i}", j=None) for i in (1, 2, 3, 4)])
    section = serving_section(s, experiments, False, "no energy source")
    assert [lvl["label"] for lvl in section["levels"]] == [
        "4.00 requests/s (max_concurrency 4, n_requests 8)",
        "every request at once (request_rate inf) (max_concurrency 4, n_requests 8)"]
    assert [[r["index"] for r in lvl["rows"]] for lvl in section["levels"]] == [[2, 4], [1, 3]]
    assert section["levels"][0]["slo"] == "TTFT ≤ 500 ms"
    assert serving_section(s, [{"index": 1, "config": {"scenario": "offline"}}], False, None) is None


def test_saturation_columns_count_assessed_runs_only():
    ok = pd.DataFrame({"saturated": [True, False, None]})
    assert saturation_columns(ok) == {"saturated_runs": 1, "saturation_assessed_runs": 2, "saturated_share": 0.5}
    assert saturation_columns(pd.DataFrame({"saturated": [None]}))["saturated_runs"] is None


def test_llem_results_table_shows_goodput_and_saturation():
    s = pd.DataFrame([{**row(1, "vllm", j=None), "offered_request_rate_rps_mean": 4.1,
                       "achieved_request_rate_rps_mean": 4.0}])
    headers, rows = serving_table(s)
    assert headers[-3:] == ["goodput req/s", "meeting SLO", "saturated"]
    assert rows[0][-3:] == ["3.00 ± 0.10", "100%", "0/3 runs"]
    assert serving_table(pd.DataFrame([{"experiment_index": 1}])) is None
