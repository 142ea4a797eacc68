"""The local runner's pre-imported launcher (backends/launcher/): real launcher processes,
real forked runs of the tiny model on the CPU, real signals.

What makes a fork as good as a new interpreter, checked rather than assumed: the
launcher is single-threaded with CUDA untouched before every fork (each result records
the checks), imports only what a run imports and runs no operator; a run that changes a
process-wide setting, leaks memory or dies leaves the next run as it would have been;
a launcher that goes away costs no run; the launcher ends with its orchestrator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.process_start import ForkChecks
from llenergymeasure.backends.launcher.messages import (
    LaunchRequest,
    Refused,
    pass_socket,
    receive,
    send,
)
from llenergymeasure.orchestrator.execution.runners.base import RunJob
from llenergymeasure.orchestrator.execution.runners.local import LocalRunner

from tests.support import faultkit as fk
from tests.support.helpers import REPO, write

pytestmark = pytest.mark.slow

TINY = ExperimentConfig(model="llem/tiny-llama", device="cpu", n_prompts=2, max_input_tokens=8, max_output_tokens=2,
                        measurement={"min_window_s": 0, "warmup_batches": 0})


@pytest.fixture(autouse=True)
def _reap_llem_processes():
    yield
    fk.reap()


def environment(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())["environment"]


def fresh_interpreter_threads() -> int:
    """torch's intra-op thread count in a new interpreter with this environment: the machine's default."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_each_run_is_a_checked_fork_and_inherits_nothing_from_the_one_before(tmp_path, tiny_model, monkeypatch):
    """Three runs forked from one launcher: the first sets torch to one thread and leaks
    200 MiB, the second is SIGKILLed mid-run; the third starts as the first did, with the
    machine's default thread count and without the leak, and the launcher never grew."""
    monkeypatch.setenv("LLEM_TEST_FAULT", "e01-c1:threads=1,e01-c1:leak=200,e01-c2:kill@load")
    with LocalRunner() as runner:
        first = runner.execute(RunJob(TINY, tmp_path / "e01-c1"))
        start = environment(tmp_path / "e01-c1")["process_start"]
        launcher = psutil.Process(start["launcher_pid"])
        launcher_rss = launcher.memory_info().rss
        killed = runner.execute(RunJob(TINY, tmp_path / "e01-c2"))
        third = runner.execute(RunJob(TINY, tmp_path / "e01-c3"))
        assert launcher.memory_info().rss < launcher_rss + 20 * 2**20
    assert first.state == "done" and third.state == "done", (first.error, third.error)
    assert killed.state == "failed" and killed.exit_code == -signal.SIGKILL and killed.kind == "crashed"
    assert killed.error.startswith("killed by SIGKILL")
    envs = [environment(tmp_path / f"e01-c{n}") for n in (1, 3)]
    for env in envs:
        assert env["process_start"] == {"kind": "fork", "launcher_pid": launcher.pid, "checks": {
            "threads": 1, "cuda_initialized": False, "cuda_driver_loaded": False}}
    assert envs[0]["torch_num_threads"] == 1  # the fault took effect in its own run...
    assert envs[1]["torch_num_threads"] == fresh_interpreter_threads()  # ...and only there
    peaks = [first.result.metrics.peak_memory_mb, third.result.metrics.peak_memory_mb]
    assert peaks[0] - peaks[1] > 150, peaks  # the leak was real, and the third run does not carry it
    assert not launcher.is_running() or launcher.status() == psutil.STATUS_ZOMBIE  # closed with the runner


def test_the_launcher_is_started_before_the_first_run_and_the_run_forks_from_it(tmp_path, tiny_model):
    """Issue 16: the study loop asks the runner to get ready before a run's clock starts;
    the local runner then starts its launcher (imports: the study's time, once), and the
    run forks from that launcher without starting another."""
    with LocalRunner() as runner:
        runner.ready_for(TINY)
        (launcher,) = [p for p in psutil.Process().children() if "llenergymeasure.backends.launcher" in p.cmdline()]
        runner.ready_for(TINY)  # already running: nothing more starts
        assert [p for p in psutil.Process().children() if p.pid != launcher.pid] == []
        outcome = runner.execute(RunJob(TINY, tmp_path / "e01-c1"))
    assert outcome.state == "done", outcome.error
    assert environment(tmp_path / "e01-c1")["process_start"]["launcher_pid"] == launcher.pid


def test_llem_launcher_0_starts_every_run_as_a_new_interpreter(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("LLEM_LAUNCHER", "0")
    with LocalRunner() as runner:
        outcome = runner.execute(RunJob(TINY, tmp_path / "e01-c1"))
    assert outcome.state == "done", outcome.error
    env = environment(tmp_path / "e01-c1")
    assert env["process_start"] == {"kind": "interpreter", "launcher_pid": None, "checks": None}
    assert env["torch_num_threads"] == fresh_interpreter_threads()


def test_a_launcher_that_is_gone_costs_no_run_and_is_reported_once(tmp_path, tiny_model, capfd):
    with LocalRunner() as runner:
        assert runner.execute(RunJob(TINY, tmp_path / "e01-c1")).state == "done"
        launcher = psutil.Process(environment(tmp_path / "e01-c1")["process_start"]["launcher_pid"])
        launcher.kill()  # as the OOM killer would
        fk.wait_for("the launcher to die", lambda: not launcher.is_running()
                    or launcher.status() == psutil.STATUS_ZOMBIE)
        for n in (2, 3):
            assert runner.execute(RunJob(TINY, tmp_path / f"e01-c{n}")).state == "done"
            assert environment(tmp_path / f"e01-c{n}")["process_start"]["kind"] == "interpreter"
    said = capfd.readouterr().err
    assert said.count("the launcher is gone") == 1 and "start a new interpreter (as with LLEM_LAUNCHER=0)" in said


def test_a_launcher_with_a_second_thread_refuses_to_fork(tmp_path):
    """The precondition is checked before every fork, not assumed: a launcher loop in a
    process that started one more thread answers Refused, saying why, and forks nothing."""
    ours, theirs = socket.socketpair()
    server = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, threading\n"
        "from llenergymeasure.backends.launcher import preload\n"
        "from llenergymeasure.backends.launcher.server import Launcher\n"
        "import torch; preload.stop_idle_blas_pools()  # as the launcher does: one thread, then one more\n"
        "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
        "Launcher(socket.socket(fileno=int(sys.argv[1])), None).serve()\n"), str(theirs.fileno())],
        pass_fds=[theirs.fileno()], cwd=REPO)
    theirs.close()
    try:
        run_ours, run_theirs = socket.socketpair()
        pass_socket(ours, run_theirs)
        run_theirs.close()
        send(run_ours, LaunchRequest(env=dict(os.environ), cwd=str(tmp_path), log_path=str(tmp_path / "run.log")))
        run_ours.settimeout(60)
        reply = receive(run_ours)
        assert isinstance(reply, Refused), reply
        assert reply.checks == ForkChecks(threads=2, cuda_initialized=False, cuda_driver_loaded=False)
        assert reply.reason == "not safe to fork: 2 threads (a fork keeps only the calling one)"
        assert psutil.Process(server.pid).children() == []
    finally:
        ours.close()  # the launcher ends on its control socket's end of file
        assert server.wait(timeout=60) == 0


def test_the_launcher_imports_only_what_a_run_imports_and_runs_no_operator(tmp_path, tiny_model):
    """The modules the launcher holds are a subset of those a real run has loaded by its end
    (but for the launcher's own), and importing them, stopping OpenBLAS's idle pools and
    checking runs no torch operator at all (a dispatch mode sees every one)."""
    launcher = subprocess.run([sys.executable, "-c", (
        "import json, sys, torch\n"
        "from torch.utils._python_dispatch import TorchDispatchMode\n"
        "class Count(TorchDispatchMode):\n"
        "    ops = []\n"
        "    def __torch_dispatch__(self, func, types, args=(), kwargs=None):\n"
        "        self.ops.append(str(func))\n"
        "        return func(*args, **(kwargs or {}))\n"
        "with Count() as count:\n"
        "    from llenergymeasure.backends.launcher import preload, server\n"
        "    preload.pre_import()\n"
        "    preload.stop_idle_blas_pools()\n"
        "    checks = preload.fork_checks()\n"
        "print(json.dumps({'ops': count.ops, 'modules': sorted(sys.modules), 'threads': checks.threads}))\n")],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert launcher.returncode == 0, launcher.stderr[-3000:]
    held = json.loads(launcher.stdout.splitlines()[-1])
    assert held["ops"] == [] and held["threads"] == 1  # pyarrow's jemalloc loaded without its thread
    assert {"pyarrow.parquet", "pandas"} <= set(held["modules"])  # what a run imports to write its files
    env = {**os.environ, "LLEM_EXPERIMENT_JSON": TINY.canonical_json(), "LLEM_RUN_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", (  # a whole run process, reporting its modules at its exit
        "import json, os, sys\n"
        "from llenergymeasure.backends.harness import entrypoint, run_process\n"
        "def report(code):\n"
        "    print(json.dumps({'code': code, 'modules': sorted(sys.modules)}), flush=True)\n"
        "    os._exit(code)\n"
        "entrypoint.exit_now = report\n"
        "run_process.run_this_process()\n")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    extra = set(held["modules"]) - set(json.loads(run.stdout.splitlines()[-1])["modules"])
    launchers_own = {m for m in extra if m.startswith("llenergymeasure.backends.launcher")}
    assert extra - launchers_own - {"torch.utils._python_dispatch", "__mp_main__"} == set()


def test_the_launcher_and_its_run_end_with_a_killed_orchestrator(tmp_path, tiny_model):
    """`llem run` SIGKILLed while a run forked from its launcher sleeps: the launcher sees
    its control socket close and ends, and the run (which watches the launcher) stops."""
    study_file = write(tmp_path / "s.yaml", fk.TINY + "execution: {n_cycles: 2}\n")
    proc = fk.start("run", str(study_file), "--runner", "local", "-o", str(tmp_path / "out"),
                    environ=fk.env(LLEM_TEST_FAULT="e01-c2:sleep=300"))
    study = fk.the_study(tmp_path / "out")
    fk.wait_hooked(study, "e01-c2")
    (run,) = fk.run_processes(study)
    launcher = run.parent()
    assert launcher is not None and fk.launchers(study) == [launcher]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    fk.wait_for("the launcher to end", lambda: not fk.launchers(study), timeout=30)
    fk.wait_for("its run to stop itself", lambda: not fk.run_processes(study), timeout=30)
    assert environment(study / "runs/e01-c1")["process_start"]["launcher_pid"] == launcher.pid
