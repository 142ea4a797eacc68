"""Results people act on, end to end: a real 3-cycle CPU study's summary.parquet
(the README's batch sweep),
`llem results` in every format, `llem compare`, the cost view from the study file
and from the user config, and the HTML report of a recorded multi-backend study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.support.helpers import CPU_STUDY, llem, write
from llenergymeasure.orchestrator.analysis.costs import CO2, ENERGY_COST
from llenergymeasure.orchestrator.analysis.results import open_study
from tests.support.recorded_study import build, recorded_result

pytestmark = pytest.mark.slow


def test_three_cycle_study_writes_summary_with_intervals_and_ratios(cpu_study: Path):
    s = pd.read_parquet(cpu_study / "summary.parquet").set_index("experiment_index")
    assert list(s.index) == [1, 2, 3, 4] and list(s["runs_done"]) == [3, 3, 3, 3]
    runs = pd.read_parquet(cpu_study / "runs.parquet")
    for idx in (1, 2, 3, 4):
        tps = runs.loc[runs["experiment_index"] == idx, "output_tokens_per_s"]
        assert s.loc[idx, "output_tokens_per_s_n"] == 3
        assert s.loc[idx, "output_tokens_per_s_mean"] == pytest.approx(tps.mean())
        assert s.loc[idx, "output_tokens_per_s_std"] == pytest.approx(tps.std(ddof=1))
        assert s.loc[idx, "output_tokens_per_s_ci95_low"] < tps.mean() < s.loc[idx, "output_tokens_per_s_ci95_high"]
    assert s.loc[1, "is_reference"] and s.loc[1, "output_tokens_per_s_ratio"] == 1.0
    ratio = s.loc[4, "output_tokens_per_s_ratio"]
    assert ratio == pytest.approx(s.loc[4, "output_tokens_per_s_mean"] / s.loc[1, "output_tokens_per_s_mean"])
    assert s.loc[4, "output_tokens_per_s_ratio_ci95_low"] < ratio < s.loc[4, "output_tokens_per_s_ratio_ci95_high"]
    # the CPU has no energy sensor here: energy stats are empty, never invented
    assert s["energy_per_output_token_j_n"].eq(0).all() and s["pareto_throughput_energy"].isna().all()
    assert s.loc[1, "energy_unavailable_reason"]
    assert not [c for c in s.columns if "cost" in c or "co2" in c]
    assert (cpu_study / "report.html").exists()


def test_llem_results_prints_the_summary_in_every_format(cpu_study: Path):
    r = llem("results", str(cpu_study))
    assert r.returncode == 0, r.stderr
    assert "pytorch.batch_size=8" in r.stdout and "reference" in r.stdout and "95% CI" in r.stdout
    assert "energy: n/a because" in r.stdout
    summary = pd.read_parquet(cpu_study / "summary.parquet")
    rows = json.loads(llem("results", str(cpu_study), "--format", "json").stdout)
    assert [r["output_tokens_per_s_mean"] for r in rows] == pytest.approx(list(summary["output_tokens_per_s_mean"]))
    csv = llem("results", str(cpu_study), "--format", "csv").stdout
    assert csv.splitlines()[0].startswith("experiment_index,experiment_id,label") and len(csv.splitlines()) == 5
    md = llem("results", str(cpu_study), "--format", "markdown").stdout.splitlines()
    assert md[0].startswith("| # | settings |") and md[1].startswith("|---") and md[2].startswith("| 1* |")
    # ratios against another configuration on request
    flipped = json.loads(llem("results", str(cpu_study), "--format", "json", "--reference", "2").stdout)
    assert flipped[1]["output_tokens_per_s_ratio"] == 1.0 and flipped[0]["output_tokens_per_s_ratio"] < 1


def test_results_refuses_what_is_not_a_study(tmp_path: Path, cpu_study: Path):
    for args in ([str(tmp_path)], [str(tmp_path / "nope")], [str(cpu_study), "--reference", "9"]):
        r = llem("results", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "not a study directory" in llem("results", str(tmp_path)).stderr
    r = llem("report", str(cpu_study), "--runs", "e99-c9", "-o", str(tmp_path / "r.html"))
    assert r.returncode == 2 and "no run e99-c9" in r.stderr and not (tmp_path / "r.html").exists()
    (tmp_path / "manifest.json").write_text("{not json")
    r = llem("report", str(tmp_path))
    assert r.returncode == 2 and "damaged manifest" in r.stderr and not (tmp_path / "report.html").exists()


def test_compare_the_same_configurations_across_two_studies(cpu_study: Path, tmp_path: Path):
    r = llem("compare", str(cpu_study), str(cpu_study), "--format", "json")
    rows = json.loads(r.stdout)
    assert {x["metric"] for x in rows} >= {"output_tokens_per_s", "ttft_ms_p50"}
    assert all(x["change"] == 0 and x["ci_excludes_zero"] is False for x in rows)
    text = llem("compare", str(cpu_study), str(cpu_study)).stdout
    assert "no difference in GPUs" in text and "differs" in text
    # a second study whose runs are all faster on paper by 10x the fastest run (same
    # spread, so the Welch interval of the change must exclude zero), with a new torch
    other = tmp_path / cpu_study.name
    shutil.copytree(cpu_study, other)
    shift = 10 * pd.read_parquet(cpu_study / "runs.parquet")["output_tokens_per_s"].max()
    for result in other.glob("runs/*/result.json"):
        data = json.loads(result.read_text())
        data["metrics"]["output_tokens_per_s"] += shift
        data["environment"]["packages"]["torch"] = "9.9.9"
        result.write_text(json.dumps(data))
    rows = json.loads(llem("compare", str(cpu_study), str(other), "--format", "json").stdout)
    tps = [x for x in rows if x["metric"] == "output_tokens_per_s"]
    assert len(tps) == 4
    assert all(x["change"] == pytest.approx(shift) and x["ci_excludes_zero"] for x in tps)
    assert all(x["change_pct"] == pytest.approx(100 * shift / x["a_mean"]) for x in tps)
    text = llem("compare", str(cpu_study), str(other)).stdout
    assert "environment.torch" in text and "9.9.9" in text
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "manifest.json").write_text(json.dumps({  # a study of no configuration at all
        "study_name": "unrelated", "study_file": "u.yaml", "created_at": "2026-01-01T00:00:00.000+00:00",
        "runner": "local", "execution": {}, "experiments": [], "runs": []}))
    r = llem("compare", str(cpu_study), str(unrelated))
    assert r.returncode == 2 and "share no configuration" in r.stderr


COSTS = """
analysis:
  reference: {pytorch.batch_size: 4}
  costs:
    electricity_price_per_kwh: 0.30
    gpu_hour_price: 2.5
"""


def test_costs_come_from_the_study_and_the_user_config_and_are_recorded(tmp_path: Path, tiny_model: Path):
    user = write(tmp_path / "config.yaml", "costs:\n  electricity_price_per_kwh: 0.10\n  pue: 1.3\n"
                 "  grid_carbon_intensity_g_per_kwh: 250\n")
    study = write(tmp_path / "s.yaml", CPU_STUDY.replace("n_cycles: 3", "n_cycles: 1")
                  .replace("[1, 4]", "[1, 4]\n") + COSTS)
    r = llem("run", str(study), "--runner", "local", "-o", str(tmp_path / "out"), env={"LLEM_CONFIG": str(user)})
    assert r.returncode == 0, r.stderr[-2000:]
    (study_dir,) = (tmp_path / "out").iterdir()
    analysis = json.loads((study_dir / "manifest.json").read_text())["analysis"]
    assert analysis["reference_index"] == 2
    assert analysis["costs"]["electricity_price_per_kwh"] == 0.30  # the study wins
    assert analysis["costs"]["pue"] == 1.3 and analysis["cost_sources"]["pue"] == f"user config {user}"
    s = pd.read_parquet(study_dir / "summary.parquet")
    assert {f"{ENERGY_COST}_mean", f"{CO2}_mean"} <= set(s.columns)
    assert s[f"{ENERGY_COST}_n"].eq(0).all(), "no energy was measured on this CPU, so no energy cost"
    assert "n=1 < 3" in s.loc[0, "flags"]
    assert "cost and carbon" in r.stdout


def test_bad_analysis_settings_exit_2_before_anything_is_written(tmp_path: Path):
    cases = {
        "analysis:\n  reference: {pytorch.batch_size: 3}\n": "matches no experiment",
        "analysis:\n  reference: 7\n": "experiment 7 does not exist",
        "analysis:\n  costs: {pue: 0.5}\n": "analysis.costs.pue",
        "analysis:\n  cost: {pue: 1.5}\n": "did you mean 'costs'",
    }
    for extra, message in cases.items():
        study = write(tmp_path / "s.yaml", CPU_STUDY + extra)
        r = llem("run", str(study), "-o", str(tmp_path / "out"))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
    bad_user = write(tmp_path / "user.yaml", "costs: {electricity_price: 1}\n")
    r = llem("run", str(write(tmp_path / "s.yaml", CPU_STUDY)), "-o", str(tmp_path / "out"),
             env={"LLEM_CONFIG": str(bad_user)})
    assert r.returncode == 2 and str(bad_user) in r.stderr and "electricity_price" in r.stderr
    assert not (tmp_path / "out").exists()


def test_recorded_multi_backend_study_summary(cpu_study: Path, tmp_path: Path):
    study_dir = build(tmp_path, recorded_result(cpu_study),
                      "analysis:\n  costs: {electricity_price_per_kwh: 0.2, grid_carbon_intensity_g_per_kwh: 400}\n")
    res = open_study(study_dir)
    s = res.summary.set_index("experiment_index")
    assert list(s["backend"]) == ["pytorch", "pytorch", "vllm", "vllm", "tensorrt", "tensorrt"]
    assert s["runs_failed"].sum() == 1 and s["flagged"].any()
    # energy per token falls with batch size on every backend; batch 8 TensorRT-LLM is on the frontier
    assert (s["energy_per_output_token_j_ratio"].iloc[1:] < 1).all()
    assert bool(s.loc[6, "pareto_throughput_energy"]) and not bool(s.loc[1, "pareto_throughput_energy"])
    assert s[f"{CO2}_mean"].notna().all()
