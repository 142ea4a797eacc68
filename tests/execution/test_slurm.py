"""`--runner slurm` against a real single-node Slurm cluster (tests/support/slurm_cluster.py),
with the real tiny model: the array, the states Slurm ends runs in, detach/status/collect,
and resubmitting what is not done."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.support.helpers import llem, write

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = """\
model: llem/tiny-llama
n_prompts: 2
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0.2}
"""
TWO_BY_TWO = TINY + """\
name: slurm-2x2
sweep: {pytorch.batch_size: [1, 2]}
execution: {n_cycles: 2, order: interleaved}
slurm: {time_limit: "10:00", poll_interval_s: 0.5}
"""


def _shape(study_dir: Path) -> set[str]:
    """Every path in a study directory, minus what only Slurm adds (its own folder)."""
    return {str(p.relative_to(study_dir)) for p in study_dir.rglob("*")
            if not str(p.relative_to(study_dir)).startswith("slurm")}


def _manifest(study_dir: Path) -> dict:
    return json.loads((study_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def waited_2x2(tmp_path_factory, tiny_model, slurm_cluster):
    """The 2x2 study run through `--runner slurm`, waiting for it: (study file, result, study dir)."""
    tmp = tmp_path_factory.mktemp("slurm-2x2")
    f = write(tmp / "s.yaml", TWO_BY_TWO)
    r = llem("run", str(f), "--runner", "slurm", "-o", str(tmp / "slurm"))
    assert r.returncode == 0, r.stdout + r.stderr
    (study_dir,) = (tmp / "slurm").iterdir()
    return f, r, study_dir


def test_two_by_two_study_runs_as_one_array(tmp_path, waited_2x2):
    f, r, study_dir = waited_2x2
    m = _manifest(study_dir)
    subs = m["slurm"]["submissions"]
    assert len(subs) == 1 and r.stdout.count("submitted 4 run(s) as Slurm array") == 1
    assert [x["state"] for x in m["runs"]] == ["done"] * 4
    assert {x["slurm"]["job_id"] for x in m["runs"]} == {subs[0]["job_id"]}
    assert sorted(x["slurm"]["array_task_id"] for x in m["runs"]) == [0, 1, 2, 3]
    assert all(x["slurm"]["state"] == "COMPLETED" and x["slurm"]["node"] == "localhost" for x in m["runs"])
    # the readable batch script is saved and names every run in submission order
    script = (study_dir / subs[0]["script"]).read_text()
    assert "#SBATCH --array=0-3" in script and "e01-c1\n  e02-c1\n  e01-c2\n  e02-c2" in script
    runs = pd.read_parquet(study_dir / "runs.parquet")
    assert runs["slurm.job_id"].tolist() == [subs[0]["job_id"]] * 4
    # each result records its job, array task and node too
    env = json.loads((study_dir / "runs/e01-c1/result.json").read_text())["environment"]["env"]
    assert env["SLURM_ARRAY_JOB_ID"] == subs[0]["job_id"] and env["SLURMD_NODENAME"] == "localhost"
    assert runs["status"].tolist() == ["done"] * 4
    assert "runs executed" in r.stdout  # the summary says how runs were scheduled

    # the same study through the local runner: the same directory shape
    r = llem("run", str(f), "--runner", "local", "-o", str(tmp_path / "local"))
    assert r.returncode == 0, r.stdout + r.stderr
    (local_dir,) = (tmp_path / "local").iterdir()
    assert _shape(study_dir) == _shape(local_dir)
    assert set(runs.columns) - set(pd.read_parquet(local_dir / "runs.parquet").columns) == {
        f"slurm.{k}" for k in ("job_id", "array_task_id", "state", "node", "gpu_uuids")}


def test_detach_then_status_and_collect_give_the_same_directory(tmp_path, waited_2x2):
    f, _, waited = waited_2x2
    r = llem("run", str(f), "--runner", "slurm", "--detach", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "llem status" in r.stdout and "llem collect" in r.stdout
    (study_dir,) = (tmp_path / "out").iterdir()
    assert not (study_dir / "summary.parquet").exists()
    s = llem("status", str(study_dir))
    assert s.returncode == 0 and "slurm-2x2:" in s.stdout, s.stdout + s.stderr
    c = llem("collect", str(study_dir))
    assert c.returncode == 0, c.stdout + c.stderr
    assert [x["state"] for x in _manifest(study_dir)["runs"]] == ["done"] * 4
    for name in ("runs.parquet", "summary.parquet", "report.html", "manifest.json", "s.yaml"):
        assert (study_dir / name).exists(), name
    s = llem("status", str(study_dir))
    assert "4 done, 0 failed, 0 running, 0 pending" in s.stdout
    # the same as waiting
    assert _shape(waited) == _shape(study_dir)
    assert list(pd.read_parquet(waited / "runs.parquet").columns) == list(pd.read_parquet(study_dir / "runs.parquet").columns)


def test_failed_timed_out_and_cancelled_runs_then_resubmit(tmp_path, tiny_model, slurm_cluster):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_model / name).read_bytes())  # no weights: fails when loading
    study = write(tmp_path / "s.yaml", TINY + f"""\
name: slurm-states
experiments:
  - {{pytorch: {{batch_size: 1}}}}
  - {{model: {broken}}}
  - {{pytorch: {{batch_size: 3}}}}
  - {{pytorch: {{batch_size: 2}}}}
execution: {{n_cycles: 1, order: sequential}}
slurm: {{time_limit: "1", poll_interval_s: 0.5}}
""")
    out = tmp_path / "out"
    # runs 3 and 4 block once loaded (the harness's test hook) until Slurm ends them: the
    # time limit (1 minute) for run 3, scancel for run 4; how fast this machine is never matters
    hold = {"LLEM_TEST_FAULT": "e03-c1:sleep=3600@load,e04-c1:sleep=3600@load"}
    r = llem("run", str(study), "--runner", "slurm", "--detach", "-o", str(out), env=hold)
    assert r.returncode == 0, r.stdout + r.stderr
    (study_dir,) = out.iterdir()
    m = _manifest(study_dir)
    job = m["slurm"]["submissions"][0]["job_id"]
    # cancel the 4th run once it is running
    deadline = time.time() + 120
    while time.time() < deadline:
        s = llem("status", str(study_dir))
        if "e04-c1     running" in s.stdout:
            break
        time.sleep(1)
    else:
        raise AssertionError(s.stdout + s.stderr)
    subprocess.run(["scancel", f"{job}_3"], check=True)
    c = llem("collect", str(study_dir), timeout=300)
    assert c.returncode == 1, c.stdout + c.stderr
    runs = {x["run_id"]: x for x in _manifest(study_dir)["runs"]}
    assert runs["e01-c1"]["state"] == "done"
    assert runs["e02-c1"]["state"] == "failed" and runs["e02-c1"]["slurm"]["state"] == "FAILED"
    assert runs["e02-c1"]["error"].startswith("Slurm FAILED (exit code 1)")
    assert runs["e03-c1"]["slurm"]["state"] == "TIMEOUT"
    assert "exceeded its Slurm time limit" in runs["e03-c1"]["error"]
    assert runs["e04-c1"]["slurm"]["state"] == "CANCELLED" and "cancelled" in runs["e04-c1"]["error"]
    table = pd.read_parquet(study_dir / "runs.parquet")
    assert table["slurm.state"].tolist() == ["COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"]

    # --resume --retry-failed: only the three that are not done go out again, as a second array
    r = llem("run", "--resume", str(study_dir), "--retry-failed", "--detach", env=hold)
    assert r.returncode == 0, r.stdout + r.stderr
    m = _manifest(study_dir)
    second = m["slurm"]["submissions"][1]
    assert second["runs"] == ["e02-c1", "e03-c1", "e04-c1"]
    assert "#SBATCH --array=0-2" in (study_dir / second["script"]).read_text()
    assert m["runs"][0]["slurm"]["job_id"] == job  # the done run keeps its first job
    assert (study_dir / "slurm/attempts/before-2/e02-c1/error.json").exists()  # the first attempt, kept
    subprocess.run(["scancel", second["job_id"]], check=True)  # no need to wait for their timeouts again
    c = llem("collect", str(study_dir), timeout=120)
    states = {x["run_id"]: x["slurm"]["state"] for x in _manifest(study_dir)["runs"]}
    assert states["e01-c1"] == "COMPLETED" and states["e04-c1"] == "CANCELLED", states
    # `llem resubmit`: the shortcut, every run not done
    r = llem("resubmit", str(study_dir), "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    third = _manifest(study_dir)["slurm"]["submissions"][2]
    assert third["runs"] == ["e02-c1", "e03-c1", "e04-c1"]
    subprocess.run(["scancel", third["job_id"]], check=True)


def test_bad_slurm_settings_exit_2_naming_the_field(tmp_path, tiny_model, slurm_cluster):
    f = write(tmp_path / "s.yaml", TINY + 'slurm: {time_limit: "an hour"}\n')
    r = llem("run", str(f), "--runner", "slurm", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "slurm.time_limit" in r.stderr and "Traceback" not in r.stderr, r.stderr
    f = write(tmp_path / "t.yaml", TINY + "slurm: {partitoin: gpu}\n")
    r = llem("run", str(f), "--runner", "slurm", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "slurm.partitoin" in r.stderr and "partition" in r.stderr, r.stderr
    f = write(tmp_path / "u.yaml", TINY + "slurm: {partition: nosuch}\n")
    r = llem("run", str(f), "--runner", "slurm", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "slurm.partition: 'nosuch' is not a partition" in r.stderr and "debug" in r.stderr
    f = write(tmp_path / "v.yaml", TINY + "slurm: {extra_sbatch: ['--constraint=nosuch']}\n")
    r = llem("run", str(f), "--runner", "slurm", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "sbatch refused" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "nothing was submitted" in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # no half-made study left


def test_study_can_choose_slurm_and_dry_run_describes_the_array(tmp_path, tiny_model, slurm_cluster):
    f = write(tmp_path / "s.yaml", TWO_BY_TWO.replace("order: interleaved}", "order: interleaved, runner: slurm}")
              .replace('time_limit: "10:00"', 'time_limit: "10:00", max_concurrent: 2, partition: debug'))
    r = llem("run", str(f), "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "slurm runner: one job array on partition debug" in r.stdout and "at most 2 at once" in r.stdout


def test_an_array_slurm_forgot_without_a_trace_fails_its_runs_with_the_reason(tmp_path, tiny_model, slurm_cluster):
    """A job id slurmctld does not know (aged out, no accounting, no task record): not left pending forever."""
    from llenergymeasure.orchestrator.execution.manifest import Manifest, SlurmRecord, Submission
    from llenergymeasure.orchestrator.study.plan import order_runs
    from llenergymeasure.orchestrator.execution.slurm.follow import poll
    from llenergymeasure.orchestrator.study.load import load_study

    study = load_study(write(tmp_path / "s.yaml", TWO_BY_TWO))
    plan = order_runs(len(study.experiments), 1, "sequential", 0)
    (tmp_path / "d").mkdir()
    m = Manifest.create(tmp_path / "d", study, plan, "slurm")
    m.slurm = SlurmRecord(submissions=[Submission(job_id="987654", runs=[p.run_id for p in plan])])
    assert poll(m)
    assert {r.state for r in m.runs} == {"failed"}
    assert all("Slurm no longer knows job 987654" in r.error for r in m.runs)


def test_ctrl_c_cancels_the_array(tmp_path, tiny_model, slurm_cluster):
    import signal
    import sys

    from tests.support.helpers import REPO

    f = write(tmp_path / "s.yaml", TWO_BY_TWO)
    out = tmp_path / "out"
    # every run blocks once loaded (the harness's test hook), so the array is surely open at Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "llenergymeasure.orchestrator.cli", "run", str(f), "--runner", "slurm", "-o", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LLEM_TEST_FAULT": "*:sleep=3600@load"})
    deadline = time.time() + 120
    manifest = None
    while time.time() < deadline:
        found = list(out.glob("*/manifest.json"))
        if found and any(r["state"] == "running" for r in json.loads(found[0].read_text())["runs"]):
            manifest = found[0]
            break
        time.sleep(0.3)
    assert manifest is not None, "no run started"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    m = json.loads(manifest.read_text())
    job = m["slurm"]["submissions"][0]["job_id"]
    assert all(r["state"] == "failed" and "scancelled" in r["error"] for r in m["runs"] if r["state"] != "done")
    deadline = time.time() + 60  # scancel is asynchronous: wait until Slurm says the array is gone
    while (q := subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)).stdout.strip() \
            and time.time() < deadline:
        time.sleep(0.5)
    assert q.stdout.strip() == "", q.stdout  # nothing of the array is left queued or running


def test_runs_execute_in_the_docker_image_on_the_node(tmp_path, docker_image, slurm_cluster):
    """`slurm.execute: docker`: each array task runs its run in a fresh container of the
    backend's image, found on the node under its content tag (never built there)."""
    from tests.support.helpers import DOCKER_ENV

    f = write(tmp_path / "s.yaml", TINY + """\
name: slurm-docker
sweep: {pytorch.batch_size: [1, 2]}
execution: {n_cycles: 1}
slurm: {time_limit: "10:00", poll_interval_s: 0.5, execute: docker}
""")
    r = llem("run", str(f), "--runner", "slurm", "-o", str(tmp_path / "out"), env=DOCKER_ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    (study_dir,) = (tmp_path / "out").iterdir()
    m = _manifest(study_dir)
    assert [x["state"] for x in m["runs"]] == ["done"] * 2, m["runs"]
    assert "--execute docker" in (study_dir / m["slurm"]["submissions"][0]["script"]).read_text()
    for x in m["runs"]:
        result = json.loads((study_dir / x["run_dir"] / "result.json").read_text())
        assert result["environment"]["image"]["ref"] == docker_image  # measured inside the image
        assert x["slurm"]["state"] == "COMPLETED"


def test_a_node_without_the_image_fails_the_run_saying_so(docker_image):
    from llenergymeasure.orchestrator.errors import UserError
    from llenergymeasure.orchestrator.execution.runners.docker import DockerRunner

    # TensorRT-LLM: an image never built on this machine (the vLLM one may be, for CI's tests)
    with pytest.raises(UserError, match=r"image llem-tensorrt:\S+ is not on .*; build it there first "
                                        r"with `llem images build tensorrt`"):
        DockerRunner()._image("tensorrt")  # what a task sees on a node where the image was never built


def test_a_node_failure_is_recorded_as_node_fail(tmp_path, tiny_model, slurm_cluster):
    """The node goes DOWN under a running run (`scontrol update ... State=DOWN`, what slurmctld
    does when a node stops answering): with --no-requeue the run ends NODE_FAIL, not re-run."""
    f = write(tmp_path / "s.yaml", TINY + """\
name: slurm-node-fail
execution: {n_cycles: 1}
slurm: {time_limit: "10:00", poll_interval_s: 0.5}
""")
    r = llem("run", str(f), "--runner", "slurm", "--detach", "-o", str(tmp_path / "out"),
             env={"LLEM_TEST_FAULT": "*:sleep=300"})  # the harness's test hook: the run idles once started
    assert r.returncode == 0, r.stdout + r.stderr
    (study_dir,) = (tmp_path / "out").iterdir()
    deadline = time.time() + 120
    while "e01-c1     running" not in (s := llem("status", str(study_dir))).stdout:
        assert time.time() < deadline, s.stdout + s.stderr
        time.sleep(1)
    subprocess.run(["scontrol", "update", "NodeName=localhost", "State=DOWN", "Reason=llem-test"], check=True)
    try:
        c = llem("collect", str(study_dir), timeout=120)
    finally:  # back in service for the next test (slurmd re-registering may already have done it)
        subprocess.run(["scontrol", "update", "NodeName=localhost", "State=RESUME"], capture_output=True)
        deadline = time.time() + 60
        while subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip() != "idle":
            assert time.time() < deadline, "the node did not come back"
            time.sleep(0.5)
    assert c.returncode == 1, c.stdout + c.stderr
    (run,) = _manifest(study_dir)["runs"]
    assert run["state"] == "failed" and run["slurm"]["state"] == "NODE_FAIL", run
    assert "its node localhost failed" in run["error"]
