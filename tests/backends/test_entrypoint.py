"""`python -m llenergymeasure.backends`: the run contract, exercised in real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.result import RunError, RunResult
from tests.support.helpers import latency_percentiles


def run_backend(run_dir: Path, config_json: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLEM_EXPERIMENT")}
    env["LLEM_RUN_DIR"] = str(run_dir)
    if config_json is not None:
        env["LLEM_EXPERIMENT_JSON"] = config_json
    return subprocess.run([sys.executable, "-m", "llenergymeasure.backends"], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_successful_run_writes_a_valid_result(tiny_model, tmp_path):
    cfg = ExperimentConfig(model="llem/tiny-llama", n_prompts=6, max_input_tokens=24,
                           max_output_tokens=8, pytorch={"batch_size": 4})
    p = run_backend(tmp_path, cfg.canonical_json())
    assert p.returncode == 0, p.stderr
    result = RunResult.model_validate_json((tmp_path / "result.json").read_text())
    m = result.metrics
    assert result.experiment_id == cfg.config_hash()
    assert m.output_tokens == m.n_requests * 8  # fixed output length
    assert m.input_tokens == m.n_requests * 24  # synthetic prompts truncate to exactly max_input_tokens
    assert 0 < m.ttft_ms_p50 <= m.ttft_ms_p99 and 0 < m.itl_ms_p50 <= m.itl_ms_p99
    assert m.output_tokens_per_s == pytest.approx(m.output_tokens / m.duration_s)
    assert m.peak_memory_mb > 0 and m.model_load_s > 0
    assert m.flops_estimate == 2 * result.resolved.n_parameters * (m.input_tokens + m.output_tokens)
    assert result.resolved.device == "cpu" and result.resolved.dtype == "float32"
    # CPU runs are measured by RAPL where readable; otherwise energy is null and says why
    if result.energy_source == "rapl":
        assert m.energy_j > 0 and m.cpu_energy_j == m.energy_j
    else:
        assert m.energy_j is None and "RAPL" in result.energy_unavailable_reason
    # passes repeat until the window lasts measurement.min_window_s (default 5 s)
    assert m.n_passes >= 1 and m.n_requests == 6 * m.n_passes  # one pass may outlast 5 s on a busy machine
    assert m.duration_s >= 5.0 or (m.n_passes == 1000 and any(w.startswith("window_short") for w in result.warnings))
    assert result.environment["packages"]["torch"].startswith("2.13.0")
    assert not (tmp_path / "error.json").exists()
    assert 0 < m.tpot_ms_p50 <= m.tpot_ms_p99 and m.ttft_ms_p50 < m.e2e_ms_p50 <= m.e2e_ms_p99
    assert len(pd.read_parquet(tmp_path / "requests.parquet")) == m.n_requests
    ts = pd.read_parquet(tmp_path / "timeseries.parquet")
    assert {"t_s", "phase", "device", "memory_used_mb"} <= set(ts.columns)
    assert {"load", "window"} <= set(ts["phase"])


@pytest.mark.slow
def test_requests_parquet_recomputes_the_latencies_and_later_batches_wait_from_arrival(tiny_model, tmp_path):
    """requests.parquet of a real run is enough to recompute every latency percentile of its
    result.json but ITL; and a static batch's requests share a submission time while TTFT counts
    from the pass's start, so the second batch's TTFT includes the first batch."""
    cfg = ExperimentConfig(model="llem/tiny-llama", n_prompts=6, max_input_tokens=24, max_output_tokens=6,
                           pytorch={"batch_size": 4}, measurement={"min_window_s": 0.5})
    p = run_backend(tmp_path, cfg.canonical_json())
    assert p.returncode == 0, p.stderr
    m = RunResult.model_validate_json((tmp_path / "result.json").read_text()).metrics
    req = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(req) == m.n_requests and sorted(req["pass_index"].unique()) == list(range(m.n_passes))
    assert req["request_index"].tolist() == list(range(6)) * m.n_passes
    assert req["output_tokens"].sum() == m.output_tokens and req["input_tokens"].sum() == m.input_tokens
    for name, value in latency_percentiles(req).items():
        assert value is not None and getattr(m, name) == pytest.approx(value, rel=1e-9, abs=1e-6), name
    assert req.loc[req["pass_index"] == 0, "arrival_s"].eq(0.0).all()  # times count from the window's start
    for _, one in req.groupby("pass_index"):
        assert one["arrival_s"].nunique() == 1  # offline: the whole pass arrives at once
        first, second = one[one["request_index"] < 4], one[one["request_index"] >= 4]
        assert first["submitted_s"].nunique() == 1 and second["submitted_s"].nunique() == 1
        assert (second["submitted_s"] >= first["last_token_s"].max()).all()
        ttft_second = second["first_token_s"] - second["arrival_s"]
        assert (ttft_second > first["last_token_s"].max() - first["arrival_s"].max()).all()
    assert req.groupby("pass_index")["arrival_s"].first().is_monotonic_increasing


def test_missing_or_invalid_config_exits_2_with_error_json(tmp_path):
    p = run_backend(tmp_path / "a", None)
    assert p.returncode == 2
    err = RunError.model_validate_json((tmp_path / "a" / "error.json").read_text())
    assert "LLEM_EXPERIMENT_JSON is not set" in err.message

    p = run_backend(tmp_path / "b", json.dumps({"model": "m", "pytorch": {"batchsize": 1}}))
    assert p.returncode == 2 and "batchsize" in (tmp_path / "b" / "error.json").read_text()
    assert not (tmp_path / "b" / "result.json").exists()


def test_runtime_failure_exits_1_with_error_json(tmp_path):
    cfg = ExperimentConfig(model="llem/tiny-llama", dataset=str(tmp_path / "missing.jsonl"))
    p = run_backend(tmp_path / "run", cfg.canonical_json())
    assert p.returncode == 1
    err = json.loads((tmp_path / "run" / "error.json").read_text())
    assert err["status"] == "failed" and err["error_type"] == "DatasetError"
    assert err["experiment_id"] == cfg.config_hash()
    assert not (tmp_path / "run" / "result.json").exists()


def test_a_run_ends_without_interpreter_teardown_unless_it_left_children(tmp_path):
    """exit_now: once every file is fsynced the process ends at once (the teardown of torch and
    transformers costs about a second a run and measures nothing), but not while child processes
    (an engine's workers) are left: those need the normal exit that shuts them down."""
    code = """
import atexit, subprocess, sys
from pathlib import Path
from llenergymeasure.backends.harness.entrypoint import exit_now
atexit.register(lambda: Path(sys.argv[1]).write_text("teardown ran"))
print("printed before the end", flush=False)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) if sys.argv[2] == "child" else None
try:
    exit_now(7)
finally:
    if child is not None:
        child.kill()
"""
    for mode, teardown in (("alone", False), ("child", True)):
        marker = tmp_path / f"teardown-{mode}"
        r = subprocess.run([sys.executable, "-c", code, str(marker), mode], capture_output=True, text=True, timeout=60)
        assert r.returncode == 7 and "printed before the end" in r.stdout, r.stderr
        assert marker.exists() == teardown, mode
