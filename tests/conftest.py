"""Shared test set-up: a private cache and data directory for the whole session,
so tests never touch the user's ~/.cache and the tiny model is built once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.helpers import LOCAL_BASE, REPO, SHARED_AIENERGYSCORE, docker_unavailable_reason, llem


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-load", type=int, default=0, metavar="N",
                     help="run the tests beside N busy processes (bounded: tests/support/cpu_load.py)")


@pytest.fixture(scope="session", autouse=True)
def cpu_load(request: pytest.FixtureRequest):
    """`--cpu-load N`: the whole session runs on a loaded machine, as users' machines often are."""
    from tests.support.cpu_load import CpuLoad

    n = request.config.getoption("--cpu-load")
    if not n:
        yield None
        return
    with CpuLoad(n) as load:
        yield load


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
    from llenergymeasure.backends.models import ensure_builtin

    return ensure_builtin("llem/tiny-llama")


@pytest.fixture
def shared_aienergyscore() -> Path:
    if not SHARED_AIENERGYSCORE.exists():
        pytest.skip("../shared/datasets is not present on this machine")
    return SHARED_AIENERGYSCORE


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


@pytest.fixture(scope="session")
def docker_image(tiny_model: Path) -> str:
    """The CPU PyTorch image, built (or found) from the local Debian base."""
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    r = llem("images", "build", "pytorch", "--base", LOCAL_BASE, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    import docker

    from llenergymeasure.orchestrator.build.images import IMAGES, image_tag

    return image_tag(IMAGES["pytorch"], LOCAL_BASE, docker.from_env())


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real single-node Slurm cluster for the session; SLURM_CONF points at it."""
    from tests.support.slurm_cluster import SlurmCluster, unavailable_reason

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
    """The fault-injection suite's totals (tests/support/faultkit.py), when it ran."""
    import sys as _sys

    kit = _sys.modules.get("tests.support.faultkit")
    if kit is None or not kit.TALLY:
        return
    t = kit.TALLY
    terminalreporter.section("fault injection")
    terminalreporter.write_line(
        f"{t['faults']} faults injected; {t['runs']} run checks over {t['studies']} study checks "
        "(finished runs unchanged, manifest consistent, no orphans, no secret in any file)")
    for key in sorted(k for k in t if k.startswith("fault: ")):
        terminalreporter.write_line(f"  {key[7:]}: {t[key]}")
