"""Backends in environments of their own on the local runner (execution/environments.py):
vLLM runs for real, on the CPU, in `.venv-vllm` (created by `make setup BACKEND=vllm`,
which `make test` and .ci/run do); without it, a vLLM study exits 2 with that command."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from llenergymeasure.orchestrator.execution.environments import environment_for
from tests.support.helpers import llem, write

VLLM_ENV = environment_for("vllm")
needs_vllm_env = pytest.mark.skipif(
    VLLM_ENV.missing() is not None,
    reason=f"no vLLM environment at {VLLM_ENV.python}: `make setup BACKEND=vllm` creates it (make test does)",
)

VLLM_STUDY = """\
name: vllm-cpu
model: llem/tiny-llama
backend: vllm
dataset: synthetic
n_prompts: 8
max_input_tokens: 32
max_output_tokens: 8
device: cpu
measurement: {min_window_s: 0, warmup_batches: 1, baseline_s: 0}
vllm: {dtype: float32, enforce_eager: true}
"""


def test_a_missing_environment_exits_2_with_the_command_and_writes_nothing(tmp_path: Path) -> None:
    study = write(tmp_path / "v.yaml", VLLM_STUDY)
    out = tmp_path / "results"
    done = llem("run", str(study), "--runner", "local", "-o", str(out),
                env={"LLEM_ENV_DIR": str(tmp_path / "no-envs")})
    assert done.returncode == 2, done.stderr
    assert "make setup BACKEND=vllm" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_llem_config_says_whether_each_backend_imports(tmp_path: Path) -> None:
    done = llem("config", "--json", env={"LLEM_ENV_DIR": str(tmp_path)})
    rows = {c["item"]: c for c in json.loads(done.stdout) if c["area"] == "backend"}
    assert set(rows) == {"pytorch", "vllm", "tensorrt"}
    assert rows["pytorch"]["ok"] is True
    assert rows["vllm"]["ok"] is False and "make setup BACKEND=vllm" in rows["vllm"]["detail"]


@needs_vllm_env
def test_llem_config_finds_the_vllm_environment() -> None:
    done = llem("config", "--json")
    row = next(c for c in json.loads(done.stdout) if c["item"] == "vllm")
    assert row["ok"] is True, row
    assert row["detail"].startswith("vllm 0.31.0")


def test_a_setting_the_cpu_build_refuses_exits_2_before_anything_runs(tmp_path: Path) -> None:
    study = write(tmp_path / "v.yaml", VLLM_STUDY.replace("enforce_eager: true", "enforce_eager: true, "
                                                           "quantization: awq_marlin"))
    done = llem("run", str(study), "--runner", "local", "-o", str(tmp_path / "r"))
    assert done.returncode == 2, done.stderr
    assert "vllm.quantization: awq_marlin cannot run on the CPU" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@needs_vllm_env
def test_vllm_runs_for_real_on_the_cpu(tmp_path: Path) -> None:
    study = write(tmp_path / "v.yaml", VLLM_STUDY)
    done = llem("run", str(study), "--runner", "local", "-o", str(tmp_path / "r"), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = next((tmp_path / "r").glob("*/runs/e01-c1"))
    result = json.loads((run_dir / "result.json").read_text())
    extra = result["resolved"]["extra"]
    assert extra["vllm_version"] == "0.31.0"
    assert extra["token_timestamps"].startswith("engine core")
    assert extra["kv_cache_sizing"].startswith("sized by llem for 8 requests x 40 tokens")
    assert extra["kv_cache_memory_bytes"] > 0 and extra["max_model_len"] == 40
    assert extra["decoding"]["repetition_penalty"] == 1.0
    m = result["metrics"]
    assert m["n_requests"] == 8 * m["n_passes"] and m["output_tokens"] == 8 * m["n_requests"]
    assert m["model_load_s"] > 0 and m["ttft_ms_p50"] > 0
    requests = pd.read_parquet(run_dir / "requests.parquet")
    # DELTA outputs counted once each: exactly max_output_tokens (ignore_eos), never a running sum
    assert (requests["output_tokens"] == 8).all()
    assert (requests["output_token_ids"].map(len) == 8).all()
    # the prefix cache was emptied before warm-up and before every pass of the window
    assert "could not reset its prefix cache" not in (run_dir / "run.log").read_text()
    assert (requests["first_token_s"] >= requests["arrival_s"]).all()
