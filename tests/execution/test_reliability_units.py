"""Units of the reliability machinery (no model runs): the watchdog, failure kinds,
error.json, locks, size limits, the fault hook's grammar, secret redaction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from llenergymeasure.backends import contract
from llenergymeasure.orchestrator.execution import failures
from llenergymeasure.orchestrator.execution.outcome import read_outcome
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.watchdog import RunGuard
from tests.support.helpers import REPO
from tests.support.faultkit import fault


class Clock:
    """A settable monotonic clock (time is not hardware: this is a test double of time.monotonic)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_watchdog_resets_on_output_and_heartbeat_and_fires_on_silence(tmp_path):
    clock = Clock()
    guard = RunGuard(tmp_path, timeout_s=100, stall_s=10, clock=clock)
    log, beat = tmp_path / contract.LOG_FILE, tmp_path / contract.HEARTBEAT_FILE
    clock.t = 9
    assert guard.check() is None
    log.write_text("loading\n")  # output is progress
    clock.t = 18
    assert guard.check() is None
    beat.write_text("123.0 load\n")  # so is a heartbeat
    clock.t = 27
    assert guard.check() is None
    clock.t = 38
    stop = guard.check()
    assert stop.kind == failures.STALLED and "no output or heartbeat for 10 s" in stop.reason
    assert "last progress in phase 'load'" in stop.reason
    clock.t = 101
    assert guard.check().kind == failures.TIMEOUT  # the wall-clock limit wins once passed
    assert RunGuard(tmp_path, None, None, clock=clock).check() is None  # both disabled


def test_exit_statuses_are_described():
    assert failures.describe_exit(-9).startswith("killed by SIGKILL; the kernel's OOM killer")
    assert failures.describe_exit(137).startswith("killed by SIGKILL")  # Docker: 128 + 9
    assert failures.describe_exit(-15) == "killed by SIGTERM"
    assert failures.describe_exit(3) == "exit code 3" and failures.describe_exit(None) == "no exit code"


def test_outcomes_are_classified(tmp_path):
    assert read_outcome(tmp_path, 0).kind == failures.INVALID_RESULT  # exit 0 without a result
    assert read_outcome(tmp_path, -9).kind == failures.CRASHED
    assert read_outcome(tmp_path, None, "timed out", failures.TIMEOUT).kind == failures.TIMEOUT
    (tmp_path / contract.ERROR_FILE).write_text(json.dumps({"error_type": "OutOfMemoryError", "message": "CUDA"}))
    assert read_outcome(tmp_path, 1).kind == failures.OUT_OF_MEMORY
    (tmp_path / contract.ERROR_FILE).write_text(json.dumps({"error_type": "ValueError", "message": "bad"}))
    o = read_outcome(tmp_path, 1)
    assert o.kind == failures.ERROR and o.error == "ValueError: bad"


def test_an_engine_failure_that_points_at_its_log_names_the_root_cause(tmp_path):
    """vLLM raises only 'See root cause above' in the run's process; the worker's exception
    line (seen here with tensor_parallel_size 2 on a one-NUMA-node CPU) is in run.log."""
    (tmp_path / contract.LOG_FILE).write_text(
        "(EngineCore pid=7) ERROR 12-03 20:07:46 [core.py:1433] AssertionError: Not enough allowed NUMA nodes to "
        "bind threads of 2 local CPUWorkers.\n"
        "AssertionError: Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers.\n"
        "    raise RuntimeError(\n"
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n")
    (tmp_path / contract.ERROR_FILE).write_text(json.dumps({
        "error_type": "RuntimeError", "message": "Engine core initialization failed. See root cause above."}))
    assert read_outcome(tmp_path, 1).error == (
        "RuntimeError: Engine core initialization failed. See root cause above. [root cause in run.log: "
        "AssertionError: Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers.]")


def test_error_json_keeps_the_harness_error_and_adds_the_log_tail(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretTokenValue123")
    (tmp_path / contract.LOG_FILE).write_text("".join(f"line {i}\n" for i in range(30)) + "hf_secretTokenValue123\n")
    (tmp_path / contract.ERROR_FILE).write_text(json.dumps({
        "experiment_id": "x", "error_type": "Terminated", "message": "terminated by signal SIGTERM",
        "traceback": "Traceback ...", "started_at": "t0", "finished_at": "t1"}))
    failures.write_error_file(tmp_path, failures.ErrorReport(failures.TIMEOUT, "timed out after 4 s", -15, "x", "t0", "t2"))
    err = json.loads((tmp_path / contract.ERROR_FILE).read_text())
    assert err["error_type"] == "Timeout" and err["message"] == "timed out after 4 s"
    assert err["cause"] == "Terminated: terminated by signal SIGTERM" and err["traceback"] == "Traceback ..."
    assert err["log_tail"].splitlines()[0] == "line 11" and "<redacted>" in err["log_tail"]
    assert "hf_secretTokenValue123" not in (tmp_path / contract.ERROR_FILE).read_text()
    assert failures.RETRY_BY_DEFAULT == {failures.INTERRUPTED, failures.INFRASTRUCTURE, failures.RESULT_DAMAGED}


def test_run_count_needs_confirmation_above_the_threshold():
    from llenergymeasure.orchestrator.study.size import CONFIRM_ABOVE_RUNS, confirm_run_count

    confirm_run_count(CONFIRM_ABOVE_RUNS, 1, CONFIRM_ABOVE_RUNS, yes=False, confirm=None)
    with pytest.raises(UserError, match="expands to 501 runs .* pass --yes"):
        confirm_run_count(501, 167, 3, yes=False, confirm=None)
    confirm_run_count(501, 167, 3, yes=True, confirm=None)
    asked = []
    confirm_run_count(501, 167, 3, yes=False, confirm=lambda q: asked.append(q) or True)
    assert "run them all?" in asked[0]
    with pytest.raises(UserError):
        confirm_run_count(501, 167, 3, yes=False, confirm=lambda q: False)


def test_fault_hook_grammar(monkeypatch, tmp_path):
    from llenergymeasure.backends.harness import faults

    monkeypatch.setenv("LLEM_RUN_DIR", "/llem/run")  # as in a container: the id comes from LLEM_RUN_ID
    monkeypatch.setenv("LLEM_RUN_ID", "e02-c1")
    monkeypatch.setenv(faults.ENV, "e01-c1:kill,e02-c1:sleep=0@load,*:crash@load,e02-c1:busy=0")
    assert faults._mine("load") == [("sleep", "0"), ("crash", None)]
    assert faults._mine("start") == [("busy", "0")]
    with pytest.raises(faults.InjectedFault):
        faults.inject("load")
    monkeypatch.delenv(faults.ENV)
    faults.inject("load")  # without the variable: nothing


def test_device_locks_between_two_processes_with_a_fake_gpu_inventory():
    """The lock API directly, GPUs named by a fake inventory (no GPU here): a second
    process is refused the GPU another holds, not another GPU, and gets it once the
    holder dies (SIGKILL: the kernel releases flock, no stale lock)."""
    from llenergymeasure.orchestrator.execution.locks import Busy, DeviceLocks, device_keys
    from tests.support.fakes import FakeGpu

    gpus = [FakeGpu(uuid=f"GPU-fake-{i}", index=i) for i in range(3)]
    keys = [device_keys([g.uuid], f"cuda:{g.index}")[0] for g in gpus]
    assert keys == ["gpu-GPU-fake-0", "gpu-GPU-fake-1", "gpu-GPU-fake-2"]
    assert device_keys([], "cuda:1") == ["gpu-cuda1"] and device_keys([], "cpu") == ["cpu"]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from llenergymeasure.orchestrator.execution.locks import DeviceLocks; "
        f"DeviceLocks([{keys[1]!r}], 'study-A').acquire(); print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=rf"device gpu-GPU-fake-1 is in use by study-A \(pid {holder.pid} "):
            DeviceLocks([keys[0], keys[1]], "study-B").acquire()  # takes fake-0 first, then refused
        with DeviceLocks([keys[0]], "study-C"), DeviceLocks([keys[2]], "study-C2"):
            pass  # fake-0 was given back (all or none); other GPUs run beside the holder
        with pytest.raises(Busy):
            DeviceLocks([keys[1]], "study-D").acquire(wait=True, timeout_s=1)  # queued, then gave up
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        fault("lock holder SIGKILLed")
        locks = DeviceLocks(keys, "study-E")
        locks.acquire(wait=True, timeout_s=10)
        locks.release()
    finally:
        holder.kill()
        holder.wait()


def test_study_devices_come_from_the_runner_gpu_inventory(tmp_path):
    """Which locks a study takes, with the Docker runner's pinning over a fake inventory."""
    from llenergymeasure.orchestrator.execution.runners.container import assign_device
    from llenergymeasure.orchestrator.execution.runners.local import LocalRunner
    from llenergymeasure.orchestrator.study.preflight import Placement
    from llenergymeasure.orchestrator.study.load import load_study
    from tests.support.helpers import write
    from tests.support.fakes import FakeGpu

    inventory = [(g.index, g.uuid, g.name) for g in (FakeGpu(uuid=f"GPU-fake-{i}", index=i) for i in range(2))]

    class PinningRunner(LocalRunner):  # the Docker runner's own pinning logic over the fake inventory
        def gpu_uuids(self, config):
            return assign_device(config.device, inventory).host_uuids

    study = load_study(write(tmp_path / "s.yaml", "model: llem/tiny-llama\nsweep: {device: [cuda:0, cuda:1]}\n"))
    resolved = {1: Placement("cuda:0"), 2: Placement("cuda:0")}
    assert PinningRunner().lock_keys(study, resolved) == ["gpu-GPU-fake-0", "gpu-GPU-fake-1"]


def test_secrets_are_redacted(monkeypatch):
    from llenergymeasure.backends.secrets import redact

    monkeypatch.setenv("HF_TOKEN", "hf_abcdef123456")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert redact("url?token=hf_abcdef123456&x") == "url?token=<redacted>&x"
    monkeypatch.setenv("HF_TOKEN", "abc")  # too short to be a token: words are left alone
    assert redact("abc def") == "abc def"
