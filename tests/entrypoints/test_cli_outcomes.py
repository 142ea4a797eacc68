"""What `llem run` says and how it ends when things are not simply fine (issue 17): the
progress counter on resume, Ctrl-C before a study directory exists, --detach with a
runner that cannot detach, and study files a full disk kept out."""

from __future__ import annotations

import io
import os
import signal

import pytest
from rich.console import Console

from llenergymeasure.orchestrator.execution.locks import DeviceLocks
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.terminal import Progress
from tests.support import faultkit as fk
from tests.support.helpers import llem, write

TINY = """\
name: outcomes
model: llem/tiny-llama
n_prompts: 2
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0, warmup_batches: 0}
execution: {n_cycles: 1}
"""


@pytest.fixture(autouse=True)
def _reap_llem_processes():
    yield
    fk.reap()


def test_progress_counts_this_sessions_runs_never_past_its_total():
    """Item 8c: a resume running 2 of 4 runs printed `[3/2]` and `[4/2]` (plan position
    over the number of runs to do)."""
    buf = io.StringIO()
    progress = Progress(Console(file=buf, width=200, no_color=True))
    todo = [PlannedRun("e01-c2", 1, 2, 3), PlannedRun("e02-c2", 2, 2, 4)]
    progress.begin(todo, 4)
    for run in todo:
        progress.start(run, "batch")
        progress.end(RunOutcome("failed", 1, error="boom"), 1.0)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[1/2] e01-c2 (plan 3/4) batch ... started")
    assert lines[-1].startswith("[2/2] e02-c2 (plan 4/4) batch ... FAILED")

    buf = io.StringIO()  # a whole plan: the plan position is the count, said once
    progress = Progress(Console(file=buf, width=200, no_color=True))
    progress.begin([PlannedRun("e01-c1", 1, 1, 1)], 1)
    progress.start(PlannedRun("e01-c1", 1, 1, 1), "batch")
    assert buf.getvalue().startswith("[1/1] e01-c1 batch ... started")


def test_progress_estimates_the_time_left_from_finished_runs():
    """Issue 16: each run line says how long the rest of the study will take and when it
    ends: runs at the mean of their own experiment's finished runs, else of every run."""
    from llenergymeasure.orchestrator.terminal import estimate_left

    todo = [PlannedRun(f"e0{e}-c{c}", e, c, 2 * (c - 1) + e) for c in (1, 2) for e in (1, 2)]
    assert estimate_left(todo, {}) is None
    assert estimate_left(todo[2:], {1: [10.0], 2: [30.0]}) == 40.0
    assert estimate_left(todo[1:], {1: [10.0, 20.0]}) == 15.0 * 3  # experiment 2 at the overall mean
    buf = io.StringIO()
    progress = Progress(Console(file=buf, width=200, no_color=True))
    progress.begin(todo, 4)
    progress.start(todo[0], "a")
    progress.end(RunOutcome("failed", 1, error="boom"), 100.0)
    progress.start(todo[1], "b")  # three runs left, each estimated at 100 s
    lines = buf.getvalue().splitlines()
    assert "left" not in lines[0] and "~5:00 left, ends ~" in lines[-1], lines


def test_ctrl_c_before_the_study_directory_exists_says_nothing_was_run(tmp_path, tiny_model):
    """Item 8d: Ctrl-C while queued for the device (--wait) said "finished runs are kept"
    when no run had started and no study directory existed."""
    f = write(tmp_path / "outcomes.yaml", TINY)
    out = tmp_path / "out"
    holder = DeviceLocks(["cpu"], "a test holding the CPU")
    holder.acquire()
    try:
        proc = fk.start("run", str(f), "--runner", "local", "--wait", "-o", str(out),
                        environ=fk.env(PYTHONUNBUFFERED="1"))
        assert proc.stdout is not None
        for line in proc.stdout:  # until it says it queues (observable, not a sleep)
            if line.startswith("waiting for device cpu"):
                break
        proc.send_signal(signal.SIGINT)
        code, text = fk.finish(proc, timeout=60)
    finally:
        holder.release()
    assert code == 130, text[-3000:]
    assert "interrupted (Ctrl-C): nothing was run and no study directory was created" in text
    assert "finished runs are kept" not in text
    assert not out.exists()


def test_detach_with_a_runner_that_runs_the_study_here_is_refused(tmp_path):
    """Item 8e: `--detach` with the local runner was silently ignored (the study ran
    attached)."""
    f = write(tmp_path / "outcomes.yaml", TINY)
    out = tmp_path / "out"
    r = llem("run", str(f), "--runner", "local", "--detach", "-o", str(out))
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --detach: the local runner runs the study in this process")
    assert "--runner slurm" in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_study_files_that_could_not_be_written_make_llem_run_exit_1(tmp_path, tiny_model):
    """Item 8f: runs.parquet, summary.parquet and report.html not written (a full disk)
    ended with exit 0. Here writing them fails because each path is a directory; the
    resume of the finished study writes them again, and that is what fails."""
    f = write(tmp_path / "outcomes.yaml", TINY)
    out = tmp_path / "out"
    r = llem("run", str(f), "--runner", "local", "-o", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (study,) = out.iterdir()
    for name in ("runs.parquet", "summary.parquet", "report.html"):
        os.replace(study / name, tmp_path / name)
        (study / name).mkdir()

    r = llem("run", "--resume", str(study))
    text = r.stdout + r.stderr
    assert r.returncode == 1, text[-3000:]
    assert "Traceback" not in text
    assert (f"error: could not write runs.parquet, summary.parquet, report.html in {study}; "
            "the runs' results are intact") in text
    assert f"`llem report {study}`" in text and f"`llem run --resume {study}`" in text

    for name in ("runs.parquet", "summary.parquet", "report.html"):
        (study / name).rmdir()
    r = llem("run", "--resume", str(study))  # what the message says to do, once fixed
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert all((study / name).is_file() for name in ("runs.parquet", "summary.parquet", "report.html"))
