"""studies/cross-backend-cpu.yaml, run as the README says, through the local runner (vLLM
in .venv-vllm) and the Docker runner (the CPU vLLM image): PyTorch and vLLM side by side
with the same metric columns, the same workload and the same output lengths."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from llenergymeasure.orchestrator.execution.environments import environment_for
from tests.support.helpers import REPO

STUDY = "cross-backend-cpu.yaml"
LATENCIES = [f"{m}_ms_p{p}" for m in ("ttft", "itl", "tpot", "e2e") for p in (50, 90, 99)]


def run_study(runner: str, out: Path) -> Path:
    p = subprocess.run(["make", "study", f"STUDY={STUDY}", f"RUNNER={runner}", f"RESULTS={out}"], cwd=REPO,
                       capture_output=True, text=True, timeout=2400)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    (study_dir,) = out.iterdir()
    return study_dir


def check_both_backends_side_by_side(study_dir: Path) -> None:
    manifest = json.loads((study_dir / "manifest.json").read_text())
    assert [r["state"] for r in manifest["runs"]] == ["done"] * 12
    runs = pd.read_parquet(study_dir / "runs.parquet")
    assert sorted(runs["backend"].unique()) == ["pytorch", "vllm"]
    for backend, rows in runs.groupby("backend"):
        assert len(rows) == 6
        # one set of metric columns, filled for both backends alike
        assert rows[["output_tokens_per_s", *LATENCIES]].notna().all().all(), backend
    summary = pd.read_parquet(study_dir / "summary.parquet")
    assert len(summary) == 4 and (summary["runs_done"] == 3).all()
    # greedy with ignore_eos: every request of every pass made exactly 16 tokens on both
    for run_dir in sorted((study_dir / "runs").iterdir()):
        requests = pd.read_parquet(run_dir / "requests.parquet")
        assert (requests["output_tokens"] == 16).all(), run_dir.name
        assert (requests["output_token_ids"].map(len) == 16).all()
    report = (study_dir / "report.html").read_text()
    assert "vllm" in report and "pytorch" in report


@pytest.mark.slow
def test_cross_backend_cpu_study_through_the_local_runner(tmp_path: Path, tiny_model: Path) -> None:
    if environment_for("vllm").missing():
        pytest.skip(environment_for("vllm").missing())
    check_both_backends_side_by_side(run_study("local", tmp_path / "results"))


@pytest.mark.slow
def test_cross_backend_cpu_study_through_the_docker_runner(tmp_path: Path, docker_image: str) -> None:
    """One container per run: PyTorch in the CPU PyTorch image, vLLM in the CPU vLLM image
    (built by .ci/run; the runner builds whichever is missing from the local base)."""
    check_both_backends_side_by_side(run_study("docker", tmp_path / "results"))
