"""Helpers of the fault-injection suite (tests/execution/test_faults*.py): start and watch
real `llem` processes, and check what every fault test must leave behind:

- finished runs intact and unchanged (checksums of their files),
- the manifest consistent with the run directories,
- no orphan run processes or containers,
- no secret in any file the tool wrote (or in what it printed).

Faults are injected for real (signals, a full tmpfs, a dead Docker socket) or through
the harness's LLEM_TEST_FAULT test hook (backends/harness/faults.py). Every test
counts what it injected and checked in TALLY; conftest prints the totals.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil

from llenergymeasure.backends.harness.result import RunError
from llenergymeasure.backends.processes import LAUNCHER_MODULE, run_dir_of
from llenergymeasure.orchestrator.execution.outcome import load_result
from llenergymeasure.orchestrator.execution.manifest import STATES
from tests.support.helpers import REPO

TALLY: Counter = Counter()  # "faults": injected faults, "runs": run checks, "studies": studies checked
SECRET = "hf_llemFault" + secrets.token_hex(12)  # HF_TOKEN for every fault test; must appear nowhere

TINY = """
model: llem/tiny-llama
n_prompts: 2
max_input_tokens: 8
max_output_tokens: 2
measurement: {min_window_s: 0, warmup_batches: 0}   # one pass: these tests are about orchestration
"""


def fault(what: str, n: int = 1) -> None:
    TALLY["faults"] += n
    TALLY[f"fault: {what}"] += n


def env(**extra: str) -> dict[str, str]:
    """The environment of a fault test's `llem`: the secret marker, and any fault hook."""
    out = {k: v for k, v in os.environ.items() if k != "LLEM_TEST_FAULT"}
    out["HF_TOKEN"] = SECRET
    out.update(extra)
    return out


STARTED: list[subprocess.Popen] = []


def start(*args: str, environ: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "llenergymeasure.orchestrator.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environ or env())
    STARTED.append(proc)
    return proc


def reap() -> None:
    """After each fault test: no `llem` it started may outlive it, even when it failed."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    text = out + err
    assert "Traceback" not in text, text[-4000:]
    assert SECRET not in text
    return proc.returncode, text


def llem_run(*args: str, environ: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    return finish(start(*args, environ=environ), timeout)


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 120, poll: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def manifest(study_dir: Path) -> dict:
    return json.loads((study_dir / "manifest.json").read_text())


def states(study_dir: Path) -> dict[str, str]:
    return {r["run_id"]: r["state"] for r in manifest(study_dir)["runs"]}


def run_of(study_dir: Path, run_id: str) -> dict:
    return next(r for r in manifest(study_dir)["runs"] if r["run_id"] == run_id)


def the_study(out: Path) -> Path:
    return wait_for(f"a study directory under {out}",
                    lambda: next((p.parent for p in out.glob("*/manifest.json")), None))


def wait_hooked(study_dir: Path, run_id: str, timeout: float = 120) -> None:
    """Until `run_id` is running and its fault hook has fired (it said so in run.log)."""
    log = study_dir / "runs" / run_id / "run.log"

    def ready() -> bool:
        try:
            return states(study_dir)[run_id] == "running" and "TEST HOOK" in log.read_text()
        except (OSError, ValueError, KeyError):
            return False

    wait_for(f"{run_id} running with its fault hook", ready, timeout)


def run_processes(study_dir: Path) -> list[psutil.Process]:
    """Live processes of this study's runs, new interpreters or forked from the local runner's
    launcher (found by their run directory: backends/processes.py)."""
    root = str(study_dir.resolve()) + os.sep
    found = []
    for p in psutil.process_iter():
        try:
            if (run_dir_of(p) or "").startswith(root) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def launchers(study_dir: Path) -> list[psutil.Process]:
    """Live pre-imported launchers (backends/launcher/) started by any session of this study
    (they watch the orchestrator whose pid the manifest's sessions record)."""
    pids = {str(s["pid"]) for s in manifest(study_dir).get("sessions", [])}
    found = []
    for p in psutil.process_iter():
        try:
            if (LAUNCHER_MODULE in p.cmdline() and p.environ().get("LLEM_PARENT_PID") in pids
                    and p.cwd() == os.sep and p.status() != psutil.STATUS_ZOMBIE):
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def containers(study_dir: Path) -> list[str]:
    r = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label=org.llenergymeasure.study={study_dir.name}"],
                       capture_output=True, text=True)
    return r.stdout.split()


def kill_run_process(study_dir: Path, run_id: str) -> None:
    """SIGKILL the run's process from outside, as the OOM killer or an admin would."""
    run_dir = str((study_dir / "runs" / run_id).resolve())
    procs = wait_for(f"{run_id}'s process", lambda: [p for p in run_processes(study_dir) if run_dir_of(p) == run_dir])
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)


def checksums(study_dir: Path, run_ids: list[str] | None = None) -> dict[str, str]:
    """sha256 of every file of the given (default: done) runs."""
    ids = run_ids if run_ids is not None else [r for r, s in states(study_dir).items() if s == "done"]
    out = {}
    for run_id in ids:
        for f in sorted((study_dir / "runs" / run_id).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(study_dir))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def check_study(study_dir: Path, *, orchestrator_alive: bool = False, docker: bool = False) -> dict[str, str]:
    """The invariants every fault test asserts; returns the run states."""
    m = manifest(study_dir)  # valid JSON: every write is atomic
    runs = m["runs"]
    assert [r["position"] for r in runs] == list(range(1, len(runs) + 1))
    planned = {r["run_id"] for r in runs}
    on_disk = {p.name for p in (study_dir / "runs").iterdir()} if (study_dir / "runs").exists() else set()
    assert on_disk <= planned, on_disk - planned
    for r in runs:
        run_dir = study_dir / r["run_dir"]
        assert r["state"] in STATES, r
        exp = m["experiments"][r["experiment_index"] - 1]
        if r["state"] == "done":
            result = load_result(run_dir)
            assert result is not None and result.experiment_id == exp["id"], r["run_id"]
            assert not (run_dir / "error.json").exists()
        elif r["state"] == "failed":
            assert r["error"] and r["failure_kind"], r
            if (run_dir / "error.json").exists():  # absent only when the disk was full
                err = RunError.model_validate_json((run_dir / "error.json").read_text())
                assert err.kind == r["failure_kind"] and err.message
        elif r["state"] == "skipped":
            assert r["error"].startswith("not run:"), r
        elif r["state"] == "pending":
            assert not run_dir.exists() or not any(run_dir.iterdir()), r["run_id"]
        for attempt in r.get("attempts", []):
            assert attempt["state"] != "done", r  # a valid finished run is never run again
            if attempt.get("files"):
                assert (study_dir / attempt["files"]).is_dir()
        TALLY["runs"] += 1
    if not orchestrator_alive:
        assert all(r["state"] != "running" for r in runs) or m["status"] == "running", "stale running run"
        wait_for("no orphan run processes", lambda: not run_processes(study_dir), timeout=30)
        wait_for("no launcher outliving its orchestrator", lambda: not launchers(study_dir), timeout=30)
        if docker:
            wait_for("no orphan containers", lambda: not containers(study_dir), timeout=30)
    assert_no_secret(study_dir)
    TALLY["studies"] += 1
    return {r["run_id"]: r["state"] for r in runs}


def assert_no_secret(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
