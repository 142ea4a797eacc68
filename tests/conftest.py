"""Shared test set-up: a private cache and data directory for the whole session,
so tests never touch the user's ~/.cache and the tiny model is built once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_AIENERGYSCORE = REPO.parent / "shared" / "datasets" / "aienergyscore-text-generation.jsonl"


@pytest.fixture(scope="session", autouse=True)
def llem_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llem")
    dirs = {"cache": root / "cache", "data": root / "data", "locks": root / "locks"}
    os.environ["LLEM_CACHE_DIR"] = str(dirs["cache"])
    os.environ["LLEM_DATA_DIR"] = str(dirs["data"])
    os.environ["LLEM_CONFIG"] = str(root / "config.yaml")  # no user config unless a test writes one
    # device locks private to this session: a suite running beside another (or beside a
    # real study on this machine) must neither block it nor be blocked
    os.environ["LLEM_LOCK_DIR"] = str(dirs["locks"])
    return dirs


@pytest.fixture(scope="session")
def tiny_model(llem_dirs: dict[str, Path]) -> Path:
    from backends.models import ensure_builtin

    return ensure_builtin("llem/tiny-llama")


@pytest.fixture
def shared_aienergyscore() -> Path:
    if not SHARED_AIENERGYSCORE.exists():
        pytest.skip("../shared/datasets is not present on this machine")
    return SHARED_AIENERGYSCORE


def llem(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
         ) -> subprocess.CompletedProcess:
    """Run the real `llem` CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
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


@pytest.fixture(scope="session")
def batch_sweep(tiny_model: Path):
    """The README's first command, exactly as written, run once per session:
    (the finished process, the study directories it created). Removed afterwards."""
    import shutil

    results = REPO / "results"
    before = set(results.iterdir()) if results.exists() else set()
    p = subprocess.run(["make", "study", "STUDY=batch-sweep.yaml"], cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
    new = sorted(set(results.iterdir()) - before) if results.exists() else []
    yield p, new
    for d in new:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def cpu_study(batch_sweep) -> Path:
    """A real 4-configuration x 3-cycle study on this machine (the README's batch sweep)."""
    p, new = batch_sweep
    assert p.returncode == 0 and len(new) == 1, p.stdout[-3000:] + p.stderr[-3000:]
    return new[0]


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


@pytest.fixture(scope="session")
def docker_image(tiny_model: Path) -> str:
    """The CPU PyTorch image, built (or found) from the local Debian base."""
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    r = llem("images", "build", "pytorch", "--base", LOCAL_BASE, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    import docker

    from orchestrator.images import IMAGES, image_tag

    return image_tag(IMAGES["pytorch"], LOCAL_BASE, docker.from_env())


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real single-node Slurm cluster for the session; SLURM_CONF points at it."""
    from tests.slurm_cluster import SlurmCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    """The fault-injection suite's totals (tests/faultkit.py), when it ran."""
    import sys as _sys

    kit = _sys.modules.get("tests.faultkit")
    if kit is None or not kit.TALLY:
        return
    t = kit.TALLY
    terminalreporter.section("fault injection")
    terminalreporter.write_line(
        f"{t['faults']} faults injected; {t['runs']} run checks over {t['studies']} study checks "
        "(finished runs unchanged, manifest consistent, no orphans, no secret in any file)")
    for key in sorted(k for k in t if k.startswith("fault: ")):
        terminalreporter.write_line(f"  {key[7:]}: {t[key]}")
