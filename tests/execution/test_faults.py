"""Fault injection with the local runner: real `llem` processes, real signals, a real
full filesystem, the real tiny model. Every test checks (tests/support/faultkit.py) that
finished runs are intact and unchanged, the manifest is consistent, no run process
is left behind, no secret was written, and that `--resume` completes the study."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import faultkit as fk
from tests.support.helpers import REPO, write

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _reap_llem_processes():
    yield
    fk.reap()


def study_file(tmp_path: Path, body: str, name: str = "faults") -> Path:
    return write(tmp_path / f"{name}.yaml", fk.TINY + body)


def test_run_failures_are_isolated_then_resume_completes(tmp_path, tiny_model):
    """A harness crash mid-run and a run process SIGKILLed from outside: each is recorded
    with its error.json, the study goes on, and --retry-failed completes it."""
    f = study_file(tmp_path, """
sweep: {pytorch.batch_size: [1, 2, 3]}
execution: {n_cycles: 1, order: sequential}
""")
    out = tmp_path / "out"
    proc = fk.start("run", str(f), "--runner", "local", "-o", str(out),
                    environ=fk.env(LLEM_TEST_FAULT="e02-c1:crash@load,e03-c1:sleep=300"))
    study = fk.the_study(out)
    fk.wait_hooked(study, "e03-c1")
    fk.kill_run_process(study, "e03-c1")
    fk.fault("harness crash mid-run (after model load)")
    fk.fault("run process SIGKILLed")
    code, text = fk.finish(proc)
    assert code == 1, text[-3000:]
    assert fk.check_study(study) == {"e01-c1": "done", "e02-c1": "failed", "e03-c1": "failed"}
    crash, killed = fk.run_of(study, "e02-c1"), fk.run_of(study, "e03-c1")
    assert crash["failure_kind"] == "error" and crash["error"].startswith("InjectedFault: injected fault at load")
    err = json.loads((study / "runs/e02-c1/error.json").read_text())
    assert err["error_type"] == "InjectedFault" and "InjectedFault" in err["traceback"]
    assert "TEST HOOK" in err["log_tail"] and err["exit_code"] == 1
    assert killed["failure_kind"] == "crashed" and killed["error"].startswith("killed by SIGKILL")
    assert json.loads((study / "runs/e03-c1/error.json").read_text())["error_type"] == "Crashed"
    finished = fk.checksums(study)

    # failures of the runs themselves are kept unless asked: nothing to run, still not ok
    code, text = fk.llem_run("run", "--resume", str(study))
    assert code == 1 and "2 failed run(s) kept as they are" in text and "0 to run" in text
    assert fk.checksums(study, list({k.split("/")[1] for k in finished})) == finished

    code, text = fk.llem_run("run", "--resume", str(study), "--retry-failed")
    assert code == 0, text[-3000:]
    assert set(fk.check_study(study).values()) == {"done"}
    assert fk.checksums(study, ["e01-c1"]) == finished  # the finished run was never touched
    for run_id in ("e02-c1", "e03-c1"):  # each earlier try kept, files and record
        (attempt,) = fk.run_of(study, run_id)["attempts"]
        assert attempt["state"] == "failed" and (study / attempt["files"] / "error.json").exists()

    # a finished result damaged afterwards (truncated, as by a non-atomic copy) is found and run again
    result = study / "runs/e02-c1/result.json"
    damaged = result.read_bytes()[: result.stat().st_size // 2]
    result.write_bytes(damaged)
    fk.fault("result.json truncated after the run finished")
    intact = fk.checksums(study, ["e01-c1", "e03-c1"])
    code, text = fk.llem_run("run", "--resume", str(study))
    assert code == 0, text[-3000:]
    assert "e02-c1: result.json no longer validates" in text and "1 to run" in text
    assert set(fk.check_study(study).values()) == {"done"}
    assert fk.checksums(study, ["e01-c1", "e03-c1"]) == intact
    assert [a["failure_kind"] for a in fk.run_of(study, "e02-c1")["attempts"]] == ["error", "result_damaged"]
    assert (study / fk.run_of(study, "e02-c1")["attempts"][-1]["files"] / "result.json").read_bytes() == damaged

    before = fk.checksums(study)  # a finished study: resume has nothing to do and changes nothing
    code, text = fk.llem_run("run", "--resume", str(study))
    assert code == 0 and "0 to run" in text and fk.checksums(study) == before


def test_timeout_watchdog_pause_and_fail_fast_then_resume_completes(tmp_path, tiny_model):
    """A run that keeps printing but never finishes hits run_timeout_s; one that goes
    silent and ignores SIGTERM is stopped by the watchdog and SIGKILLed; two failures
    in a row pause the study; --fail-fast stops a resume at its first failure; a
    resume with relaxed limits completes the study."""
    f = study_file(tmp_path, """
sweep: {pytorch.batch_size: [1, 2, 3]}
execution: {n_cycles: 1, order: sequential, run_timeout_s: 4, stall_timeout_s: 2, stop_grace_s: 1,
            max_consecutive_failures: 2}
""")
    out = tmp_path / "out"
    t0 = time.monotonic()
    code, text = fk.llem_run("run", str(f), "--runner", "local", "-o", str(out),
                             environ=fk.env(LLEM_TEST_FAULT="e01-c1:busy=300,e02-c1:hang-hard"))
    fk.fault("run exceeds run_timeout_s (still printing)")
    fk.fault("run hangs silently and ignores SIGTERM (watchdog, SIGKILL)")
    assert code == 1, text[-3000:]
    assert time.monotonic() - t0 < 60  # neither run was waited out
    (study,) = out.iterdir()
    assert fk.check_study(study) == {"e01-c1": "failed", "e02-c1": "failed", "e03-c1": "skipped"}
    timed_out, hung = fk.run_of(study, "e01-c1"), fk.run_of(study, "e02-c1")
    assert timed_out["failure_kind"] == "timeout" and timed_out["error"].startswith("timed out after 4 s")
    assert hung["failure_kind"] == "stalled" and "no output or heartbeat for 2 s" in hung["error"]
    assert hung["exit_code"] == -signal.SIGKILL  # SIGTERM was ignored: escalated
    assert json.loads((study / "runs/e02-c1/error.json").read_text())["error_type"] == "Stalled"
    assert "study paused: 2 runs failed in a row" in text and f"continue: llem run --resume {study}" in text
    assert fk.run_of(study, "e03-c1")["error"].startswith("not run: the study paused")
    assert fk.manifest(study)["status"] == "paused"

    # settings that don't change the plan may change on resume: real runs need more time
    relaxed = write(tmp_path / "relaxed.yaml", f.read_text().replace(
        "run_timeout_s: 4, stall_timeout_s: 2", "run_timeout_s: 300, stall_timeout_s: 120"))
    code, text = fk.llem_run("run", str(relaxed), "--resume", str(study), "--retry-failed", "--fail-fast",
                             environ=fk.env(LLEM_TEST_FAULT="e01-c1:exit=3"))
    fk.fault("run exits 3 without error.json, under --fail-fast")
    assert code == 1, text[-3000:]
    assert fk.check_study(study) == {"e01-c1": "failed", "e02-c1": "skipped", "e03-c1": "skipped"}
    assert fk.run_of(study, "e01-c1")["error"].startswith("exit code 3")
    assert fk.run_of(study, "e02-c1")["error"] == "not run: the study stopped (--fail-fast: run e01-c1 failed)"

    code, text = fk.llem_run("run", str(relaxed), "--resume", str(study), "--retry-failed")
    assert code == 0, text[-3000:]
    assert set(fk.check_study(study).values()) == {"done"}
    kinds = [a["failure_kind"] for a in fk.run_of(study, "e01-c1")["attempts"]]
    assert kinds == ["timeout", "crashed"]


def test_orchestrator_sigint_sigterm_sigkill_then_resume(tmp_path, tiny_model):
    """Ctrl-C, SIGTERM and SIGKILL of the orchestrator mid-run, each followed by
    --resume; the finished run is never touched, the run killed with its orchestrator
    stops itself, and the last resume completes the study."""
    f = study_file(tmp_path, """
sweep: {pytorch.batch_size: [1, 2]}
execution: {n_cycles: 1, order: sequential}
""")
    out = tmp_path / "out"
    hooked = fk.env(LLEM_TEST_FAULT="e02-c1:sleep=300")
    proc = fk.start("run", str(f), "--runner", "local", "-o", str(out), environ=hooked)
    study = fk.the_study(out)
    fk.wait_hooked(study, "e02-c1")
    finished = fk.checksums(study)
    assert list({k.split("/")[1] for k in finished}) == ["e01-c1"]

    expected = {signal.SIGINT: (130, "interrupted (Ctrl-C)"), signal.SIGTERM: (143, "interrupted (SIGTERM)")}
    for n, sig in enumerate((signal.SIGINT, signal.SIGTERM, signal.SIGKILL)):
        if n:  # resume, and wait until the same run is going again
            proc = fk.start("run", "--resume", str(study), environ=hooked)
            fk.wait_for("e02-c1 to run again", lambda: len(fk.run_of(study, "e02-c1")["attempts"]) == n)
            fk.wait_hooked(study, "e02-c1")
        proc.send_signal(sig)
        fk.fault(f"orchestrator {sig.name} mid-run")
        if sig == signal.SIGKILL:
            proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGKILL
            assert fk.run_of(study, "e02-c1")["state"] == "running"  # nobody could record it
            # the run notices its orchestrator is gone and stops itself (backends/harness/parent_watch.py)
            fk.wait_for("the orphaned run to stop itself", lambda: not fk.run_processes(study), timeout=30)
            fk.check_study(study, orchestrator_alive=True)  # killed: its run stays `running`
        else:
            code, text = fk.finish(proc, timeout=90)
            assert code == expected[sig][0], text[-3000:]
            assert f"to continue this study: llem run --resume {study}" in text
            assert fk.check_study(study) == {"e01-c1": "done", "e02-c1": "failed"}
            run = fk.run_of(study, "e02-c1")
            assert run["failure_kind"] == "interrupted" and run["error"] == expected[sig][1]
            assert fk.manifest(study)["status"] == "interrupted"
        assert fk.checksums(study, ["e01-c1"]) == finished

    code, text = fk.llem_run("run", "--resume", str(study))  # no hook: the run completes
    assert code == 0, text[-3000:]
    assert "e02-c1: interrupted: the orchestrator stopped while this run was going" in text
    assert fk.check_study(study) == {"e01-c1": "done", "e02-c1": "done"}
    assert fk.checksums(study, ["e01-c1"]) == finished
    assert [a["failure_kind"] for a in fk.run_of(study, "e02-c1")["attempts"]] == ["interrupted"] * 3
    assert [s["command"] for s in fk.manifest(study)["sessions"]] == ["run", "resume", "resume", "resume"]


def test_bad_resume_requests_exit_2_and_change_nothing(tmp_path, tiny_model):
    """Every way of pointing --resume at the wrong thing: exit 2, one message, no
    traceback, nothing on disk changed. (In-process through click, for speed; the
    runs of this study fail at once through the test hook, so none of it costs a run.)"""
    from click.testing import CliRunner

    from llenergymeasure.orchestrator.cli import main

    f = study_file(tmp_path, "sweep: {pytorch.batch_size: [1, 2]}\nexecution: {n_cycles: 1}\n", name="done")
    code, text = fk.llem_run("run", str(f), "--runner", "local", "-o", str(tmp_path / "out"),
                             environ=fk.env(LLEM_TEST_FAULT="*:exit=3"))
    assert code == 1, text[-2000:]
    (study,) = (tmp_path / "out").iterdir()

    def tree() -> dict[str, bytes]:  # (the study lock file says who holds it: not a result)
        return {str(p): p.read_bytes() for p in study.rglob("*") if p.is_file() and p.name != ".llem.lock"}

    before = tree()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"runs": [')
    edited = write(tmp_path / "edited.yaml", f.read_text().replace("[1, 2]", "[1, 4]"))
    cases = [
        (["--resume", str(tmp_path / "nowhere")], "no such directory"),
        (["--resume", str(study / "done.yaml")], "is a file, not a study directory"),
        (["--resume", str(study / "runs")], "not a study directory (no manifest.json)"),
        (["--resume", str(broken)], "manifest.json: cannot be read"),
        ([str(edited), "--resume", str(study)], "experiment 2 (pytorch.batch_size=2"),
        (["--resume", str(study), "--cycles", "5"], "--cycles: cannot change"),
        (["--resume", str(study), "--runner", "docker"], "ran with the local runner"),
        (["--retry-failed", str(f)], "--retry-failed: only means something with --resume"),
        ([str(study)], "is a study directory, not a study file; to continue it: llem run --resume"),
        ([], "give a study FILE, or --resume DIR"),
    ]
    cli = CliRunner()
    for args, expected in cases:
        r = cli.invoke(main, ["run", *args])
        assert r.exit_code == 2 and expected in r.output, (args, r.output[-2000:])
        assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    # a study another llem is working on (the study lock, held by a real second process)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from llenergymeasure.orchestrator.execution.locks import lock_study_dir; "
        f"lock_study_dir(Path({str(study)!r})); print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = cli.invoke(main, ["run", "--resume", str(study)])
        assert r.exit_code == 2 and "another llem is working on this study" in r.output
        assert f"(pid {holder.pid} " in r.output and "experiment(s) x" not in r.output  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    assert tree() == before
    fk.check_study(study)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {r.stderr.strip()}")


def _fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left to fail at close
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                continue
    return filler


def test_disk_full_stops_the_study_cleanly_then_resume_completes(tmp_path, tiny_model):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "8m")
    try:
        f = study_file(tmp_path, """
sweep: {pytorch.batch_size: [1, 2]}
execution: {n_cycles: 1, order: sequential}
""")
        proc = fk.start("run", str(f), "--runner", "local", "-o", str(disk),
                        environ=fk.env(LLEM_TEST_FAULT="e02-c1:sleep=2"))
        study = fk.the_study(disk)
        fk.wait_hooked(study, "e02-c1")
        finished = fk.checksums(study)
        filler = _fill(disk)  # while e02-c1 runs: its files, then the manifest, can't be written
        fk.fault("disk full while a run writes its results")
        code, text = fk.finish(proc)
        assert code == 1, text[-3000:]
        assert "no space left on the device" in text and f"llem run --resume {study}" in text
        assert fk.run_of(study, "e01-c1")["state"] == "done"  # the manifest is whole (atomic writes)
        assert fk.checksums(study, ["e01-c1"]) == finished

        filler.unlink()
        code, text = fk.llem_run("run", "--resume", str(study))
        assert code == 0, text[-3000:]
        assert fk.check_study(study) == {"e01-c1": "done", "e02-c1": "done"}
        assert fk.checksums(study, ["e01-c1"]) == finished
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_two_studies_racing_for_the_same_device(tmp_path, tiny_model):
    """Studies started while another measures on the same device (the CPU here): one
    without --wait is refused, naming the holder, and creates nothing; one with --wait
    queues and measures only after the first has finished."""
    f = study_file(tmp_path, "execution: {n_cycles: 1}\n", name="race")
    first = fk.start("run", str(f), "--runner", "local", "-o", str(tmp_path / "first"))
    s1 = fk.the_study(tmp_path / "first")  # it exists: the first holds the device
    refused = fk.start("run", str(f), "--runner", "local", "-o", str(tmp_path / "refused"))
    queued = fk.start("run", str(f), "--runner", "local", "-o", str(tmp_path / "queued"), "--wait")
    fk.fault("second study racing for the same device")
    fk.fault("third study queued with --wait")
    code, text = fk.finish(refused)
    assert code == 2, text[-2000:]
    assert "device cpu is in use by study 'race'" in text and f"(pid {first.pid} " in text and "--wait" in text
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())  # nothing on disk
    (c1, _), (c3, t3) = fk.finish(first), fk.finish(queued)
    assert c1 == 0 and c3 == 0, t3[-2000:]
    assert "waiting for device cpu: in use by study 'race'" in t3
    s3 = next((tmp_path / "queued").iterdir())
    r1 = json.loads((s1 / "runs/e01-c1/result.json").read_text())
    r3 = json.loads((s3 / "runs/e01-c1/result.json").read_text())
    assert r1["finished_at"] <= r3["started_at"]  # never measured at the same time
    fk.check_study(s1), fk.check_study(s3)
