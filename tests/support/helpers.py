"""Helpers the tests share (the fixtures are in tests/conftest.py): the repository,
the real `llem` CLI in a subprocess, study files, and whether Docker can be used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_AIENERGYSCORE = REPO.parent / "shared" / "datasets" / "aienergyscore-text-generation.jsonl"


def llem(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
         ) -> subprocess.CompletedProcess:
    """Run the real `llem` CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "llenergymeasure.orchestrator.cli", *args],
        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def wait_for_second_run(out: Path, timeout_s: float = 300) -> Path:
    """The manifest of the study under `out`, once run 1 is done and run 2 running."""
    import json
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for m in out.glob("*/manifest.json"):
            states = [x["state"] for x in json.loads(m.read_text())["runs"]]
            if states[:2] == ["done", "running"]:
                return m
        time.sleep(0.2)
    raise AssertionError("the second run never started")


CPU_STUDY = """\
name: cpu-three-cycles
model: llem/tiny-llama
backend: pytorch
dataset: synthetic
n_prompts: 8
max_input_tokens: 32
max_output_tokens: 8
measurement: {min_window_s: 0.5, warmup_batches: 1}
sweep:
  pytorch.batch_size: [1, 4]
execution: {n_cycles: 3, order: interleaved}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


LOCAL_BASE = os.environ.get("LLEM_TEST_DOCKER_BASE", "llem-base:bookworm-cpu")
DOCKER_ENV = {"LLEM_BASE_IMAGE_PYTORCH": LOCAL_BASE}  # build and run on the local CPU base


def docker_unavailable_reason() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as e:  # noqa: BLE001
        return f"no Docker engine reachable ({type(e).__name__}); .ci/run starts one"
    try:
        client.images.get(LOCAL_BASE)
    except Exception:  # noqa: BLE001
        return f"base image {LOCAL_BASE} is missing; build it with images/base/build-local-base.sh"
    return None


def latency_percentiles(requests) -> dict[str, float | None]:
    """TTFT, TPOT and E2E percentiles (ms) recomputed from a run's requests.parquet (a
    DataFrame) alone, as a reader without llem would: the check that the file is enough.
    Same definitions as backends/harness/metrics.py, written out again on purpose."""
    import numpy as np

    out: dict[str, float | None] = {}
    r = requests[requests["output_tokens"] >= 1]
    ttft = (r["first_token_s"] - r["arrival_s"]) * 1000
    e2e = (r["last_token_s"] - r["arrival_s"]) * 1000
    several = r["output_tokens"] >= 2  # TPOT needs a decode step
    per_request = {
        "ttft_ms": ttft,
        "tpot_ms": (e2e - ttft)[several] / (r["output_tokens"][several] - 1),
        "e2e_ms": e2e,
    }
    for name, values in per_request.items():
        for p in (50, 90, 99):
            out[f"{name}_p{p}"] = float(np.percentile(values, p)) if len(values) else None
    return out
