"""Fault injection with the Docker runner, against the real Docker engine and the
real image (skips without one, like tests/execution/test_docker.py): a container killed with
SIGKILL, the engine becoming unreachable mid-run (a socket proxy in front of it is
killed; dockerd itself is never touched), a hung run stopped by the watchdog, and
--resume completing the study, with the orphaned container reaped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import faultkit as fk
from tests.support.helpers import DOCKER_ENV, REPO, write

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _reap_llem_processes():
    yield
    fk.reap()


class DockerProxy:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "support" / "docker_proxy.py"), str(self.path)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def test_docker_container_killed_and_engine_lost_then_resume(tmp_path, docker_image):
    proxy = DockerProxy(tmp_path / "docker.sock")
    proxy.start()
    try:
        f = write(tmp_path / "dfaults.yaml", fk.TINY + """
sweep: {pytorch.batch_size: [1, 2, 3]}
execution: {n_cycles: 1, order: sequential}
""")
        via_proxy = {**DOCKER_ENV, "DOCKER_HOST": f"unix://{proxy.path}"}
        out = tmp_path / "out"
        proc = fk.start("run", str(f), "--runner", "docker", "-o", str(out),
                        environ=fk.env(**via_proxy, LLEM_TEST_FAULT="e02-c1:sleep=300,e03-c1:sleep=300"))
        study = fk.the_study(out)
        fk.wait_hooked(study, "e02-c1")
        finished = fk.checksums(study)
        assert "runs/e01-c1/result.json" in finished

        (cid,) = fk.containers(study)  # the running run's container, locked down
        info = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True).stdout)[0]
        host = info["HostConfig"]
        assert host["Privileged"] is False and host["CapDrop"] == ["ALL"] and host["NetworkMode"] == "none"
        assert "no-new-privileges:true" in host["SecurityOpt"]
        rw = [m["Destination"] for m in info["Mounts"] if m["RW"]]
        assert rw == ["/llem/run"] and len(info["Mounts"]) > 1  # cache and data read-only
        assert f"HF_TOKEN={fk.SECRET}" in info["Config"]["Env"]  # the secret travels in the env only

        subprocess.run(["docker", "kill", cid], check=True, capture_output=True)
        fk.fault("container killed with SIGKILL (docker kill)")
        fk.wait_hooked(study, "e03-c1")
        proxy.kill()
        fk.fault("Docker engine unreachable mid-run")
        code, text = fk.finish(proc, timeout=120)
        assert code == 1, text[-3000:]
        assert "the Docker engine became unreachable" in text and f"llem run --resume {study}" in text
        assert fk.check_study(study, orchestrator_alive=True) == {
            "e01-c1": "done", "e02-c1": "failed", "e03-c1": "failed"}
        killed, lost = fk.run_of(study, "e02-c1"), fk.run_of(study, "e03-c1")
        assert killed["failure_kind"] == "crashed" and killed["error"].startswith("killed by SIGKILL")
        assert killed["exit_code"] == 137
        assert lost["failure_kind"] == "infrastructure" and fk.manifest(study)["status"] == "paused"
        assert len(fk.containers(study)) == 1  # e03's container outlived its unreachable engine
        assert fk.checksums(study, ["e01-c1"]) == finished

        proxy.start()  # the engine is back
        code, text = fk.llem_run("run", "--resume", str(study), "--retry-failed", environ=fk.env(**via_proxy))
        assert code == 0, text[-3000:]
        assert "removed 1 orphaned container(s)" in text
        assert set(fk.check_study(study, docker=True).values()) == {"done"}
        assert fk.checksums(study, ["e01-c1"]) == finished
    finally:
        proxy.kill()
        for c in subprocess.run(["docker", "ps", "-aq", "--filter", "label=org.llenergymeasure.study"],
                                capture_output=True, text=True).stdout.split():
            labels = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .Config.Labels}}", c],
                                               capture_output=True, text=True).stdout or "{}")
            if labels.get("org.llenergymeasure.study", "").startswith("dfaults_"):
                subprocess.run(["docker", "rm", "-f", c], capture_output=True)


def test_docker_watchdog_stops_a_hung_container(tmp_path, docker_image, monkeypatch):
    """The Docker runner's watchdog, through the runner itself (no model run: the run
    hangs at start, ignoring SIGTERM, so only SIGKILL after the grace ends it)."""
    from llenergymeasure.orchestrator.execution.runners.base import RunJob
    from llenergymeasure.orchestrator.execution.runners.docker import DockerRunner
    from llenergymeasure.orchestrator.study.load import load_study

    for k, v in DOCKER_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LLEM_TEST_FAULT", "*:hang-hard")
    monkeypatch.setenv("HF_TOKEN", fk.SECRET)
    study = load_study(write(tmp_path / "hang.yaml", fk.TINY))
    runner = DockerRunner()
    runner.prepare(study, notify=lambda m: None)
    run_dir = tmp_path / "hang_x" / "runs" / "e01-c1"
    outcome = runner.execute(RunJob(study.experiments[0].config, run_dir, stall_s=2, stop_grace_s=1))
    fk.fault("container hangs silently and ignores SIGTERM (watchdog)")
    assert outcome.state == "failed" and outcome.kind == "stalled", outcome
    assert "no output or heartbeat for 2 s" in outcome.error and outcome.exit_code == 137
    assert fk.containers(run_dir.parent.parent) == []
    fk.assert_no_secret(tmp_path)
