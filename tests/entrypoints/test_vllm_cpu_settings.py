"""vLLM settings on the CPU build, for real (and quantisation of a checkpoint that is not quantised, refused): tensor parallelism across CPU workers on a
machine with fewer NUMA nodes than workers (vLLM refuses that under its own binding; llem
binds by hand) runs to a result, and pipeline parallelism, which vLLM 0.31's CPU build
fails at its first step, is refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llenergymeasure.backends.vllm.config import allowed_cpus
from llenergymeasure.orchestrator.execution.environments import environment_for
from tests.support.helpers import llem, write

BASE = """\
name: vllm-parallel-cpu
model: llem/tiny-llama
backend: vllm
n_prompts: 8
max_input_tokens: 32
max_output_tokens: 8
device: cpu
measurement: {warmup_batches: 1, min_window_s: 0, baseline_s: 0}
execution: {n_cycles: 1}
"""


def test_pipeline_parallelism_is_refused_on_the_cpu_before_anything_runs(tmp_path: Path) -> None:
    study = write(tmp_path / "pp.yaml", BASE + "vllm: {pipeline_parallel_size: 2}\n")
    r = llem("run", str(study), "--runner", "local", "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "vllm.pipeline_parallel_size > 1 cannot run on the CPU" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_quantisation_of_an_unquantised_checkpoint_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """Seen here: vLLM fails only after the engine began to start ('Cannot find the config file for gptq')."""
    study = write(tmp_path / "q.yaml", BASE + "vllm: {quantization: gptq}\n")
    r = llem("run", str(study), "--runner", "local", "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "vllm.quantization: gptq needs a checkpoint quantised with it" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tensor_parallel_workers_beyond_the_numa_nodes_run_on_the_cpu(tmp_path: Path, tiny_model: Path) -> None:
    if environment_for("vllm").missing():
        pytest.skip(environment_for("vllm").missing())
    if len(allowed_cpus()) < 2:
        pytest.skip("tensor_parallel_size 2 needs two CPUs")
    study = write(tmp_path / "tp.yaml", BASE + "vllm: {tensor_parallel_size: 2, dtype: float32, enforce_eager: true}\n")
    r = llem("run", str(study), "--runner", "local", "-o", str(tmp_path / "out"), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (result,) = (tmp_path / "out").glob("*/runs/*/result.json")
    data = json.loads(result.read_text())
    extra = data["resolved"]["extra"]
    assert extra["tensor_parallel_size"] == 2 and data["metrics"]["output_tokens"] > 0
    # one block of CPUs per worker where vLLM's own binding would have refused (one NUMA node here)
    from llenergymeasure.backends.vllm.backend import numa_nodes_with

    if numa_nodes_with(allowed_cpus()) < 2:
        assert extra["cpu_threads_bind"] is not None and extra["cpu_threads_bind"].count("|") == 1
