"""A container's log is saved into run.log before the container is removed (issue 17,
item 8b): a Docker run that finished after the orchestrator was SIGKILLed kept its
result on resume, but its run.log stopped where the dead orchestrator stopped copying.

The units use a stand-in container (no engine needed); the last test does it for real
(skips without Docker, like the rest of the Docker suite)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from llenergymeasure.backends import contract
from llenergymeasure.orchestrator.build.images import LABEL
from llenergymeasure.orchestrator.execution.runners.container import RUN_DIR_IN_CONTAINER, reap_orphans, save_logs
from tests.support import faultkit as fk
from tests.support.helpers import DOCKER_ENV, write


class StandInContainer:
    """What reap_orphans and save_logs use of a docker SDK container, nothing more."""

    def __init__(self, run_dir: Path, log: bytes, owner_pid: int = 999_999_999) -> None:
        self.name = f"llem-test-{run_dir.name}"
        self.labels = {f"{LABEL}.owner_pid": str(owner_pid), f"{LABEL}.owner_started": "1.00"}
        self.attrs = {"Mounts": [{"Source": str(run_dir), "Destination": RUN_DIR_IN_CONTAINER}]}
        self.log, self.removed = log, False

    def logs(self, stdout: bool = True, stderr: bool = True) -> bytes:
        assert stdout and stderr
        return self.log

    def remove(self, force: bool = False) -> None:
        self.removed = True


class StandInClient:
    def __init__(self, containers: list[StandInContainer]) -> None:
        self.containers = self
        self._all = containers

    def list(self, all: bool = False, filters: dict | None = None) -> list[StandInContainer]:  # noqa: A002
        return self._all


def test_the_reaper_saves_a_dead_orchestrators_container_log_before_removing_it(tmp_path):
    finished = tmp_path / "study" / "runs" / "e01-c1"
    finished.mkdir(parents=True)
    (finished / contract.LOG_FILE).write_text("loading\n")  # the copy cut short when llem was killed
    (finished / contract.RESULT_FILE).write_text("{}")
    gone = tmp_path / "removed-study" / "runs" / "e01-c1"  # its study was deleted meanwhile
    whole = b"loading\nmeasuring\nllem: done: 8 tokens in 0.50 s (16.0 tok/s)\n"
    containers = [StandInContainer(finished, whole), StandInContainer(gone, whole)]

    removed = reap_orphans(StandInClient(containers))

    assert removed == [c.name for c in containers] and all(c.removed for c in containers)
    assert (finished / contract.LOG_FILE).read_bytes() == whole
    assert not gone.parent.parent.exists()  # a removed run directory is never recreated


def test_save_logs_never_shortens_a_log(tmp_path):
    (tmp_path / contract.LOG_FILE).write_bytes(b"a longer copy streamed while the run went\n")
    save_logs(StandInContainer(tmp_path, b"short\n"), tmp_path)
    assert (tmp_path / contract.LOG_FILE).read_bytes() == b"a longer copy streamed while the run went\n"


@pytest.mark.slow
def test_a_run_finishing_after_the_orchestrator_was_killed_keeps_its_whole_log(tmp_path, docker_image):
    f = write(tmp_path / "dlogs.yaml", fk.TINY + "execution: {n_cycles: 1}\n")
    out = tmp_path / "out"
    proc = fk.start("run", str(f), "--runner", "docker", "-o", str(out),
                    environ=fk.env(**DOCKER_ENV, LLEM_TEST_FAULT="e01-c1:sleep=20"))
    try:
        study = fk.the_study(out)
        fk.wait_hooked(study, "e01-c1")
        (cid,) = fk.containers(study)
        proc.kill()  # SIGKILL: no cleanup; the container runs on and finishes by itself
        proc.communicate()
        fk.fault("orchestrator SIGKILLed while its container runs")

        def exited() -> bool:
            r = subprocess.run(["docker", "inspect", "-f", "{{json .State}}", cid], capture_output=True, text=True)
            return json.loads(r.stdout or "{}").get("Status") == "exited"

        fk.wait_for("the container to finish on its own", exited, timeout=300, poll=0.5)
        log = study / "runs" / "e01-c1" / contract.LOG_FILE
        assert "TEST HOOK" in log.read_text() and "llem: done" not in log.read_text()  # cut short at the kill

        code, text = fk.llem_run("run", "--resume", str(study), environ=fk.env(**DOCKER_ENV))
        assert code == 0, text[-3000:]
        assert "removed 1 orphaned container(s)" in text
        assert "e01-c1: finished just before the study stopped; its result is valid and kept" in text
        assert fk.check_study(study, docker=True) == {"e01-c1": "done"}
        whole = log.read_text()
        assert "TEST HOOK" in whole and "llem: done:" in whole, whole[-2000:]
    finally:
        for c in subprocess.run(["docker", "ps", "-aq", "--filter", "label=org.llenergymeasure.study"],
                                capture_output=True, text=True).stdout.split():
            labels = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .Config.Labels}}", c],
                                               capture_output=True, text=True).stdout or "{}")
            if labels.get("org.llenergymeasure.study", "").startswith("dlogs_"):
                subprocess.run(["docker", "rm", "-f", c], capture_output=True)
