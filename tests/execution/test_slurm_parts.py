"""The Slurm runner's parts that need no cluster: parsing what Slurm prints (lines
captured from the real test cluster), the generated script, GPU UUIDs from Slurm's
allocation (a fake NVML inventory: no GPU here), the shared-storage check."""

from __future__ import annotations

from pathlib import Path

import pytest

from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.slurm.commands import _ids, parse_records
from llenergymeasure.orchestrator.execution.slurm.gpus import allocated_uuids
from llenergymeasure.orchestrator.execution.slurm.script import render
from llenergymeasure.orchestrator.execution.slurm.settings import SlurmSettings, resolve_settings
from llenergymeasure.orchestrator.execution.slurm.storage import local_only_problem

# `scontrol -o show job 1` on the test cluster (fields trimmed), and a pending record folding tasks
SCONTROL = """\
JobId=3 ArrayJobId=1 ArrayTaskId=1 JobName=wrap UserId=root(0) JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 RunTime=00:00:10 StartTime=2026-11-25T18:16:17 EndTime=2026-11-25T18:16:27 NodeList=localhost BatchHost=localhost
JobId=2 ArrayJobId=1 ArrayTaskId=0 JobName=wrap UserId=root(0) JobState=COMPLETED Reason=None ExitCode=0:0 StartTime=2026-11-25T18:16:17 EndTime=2026-11-25T18:16:17 NodeList=localhost BatchHost=localhost
JobId=1 ArrayJobId=1 ArrayTaskId=4-6%2 JobName=wrap UserId=root(0) JobState=PENDING Reason=JobArrayTaskLimit ExitCode=0:0 StartTime=Unknown EndTime=Unknown NodeList=(null)
"""
# the job-completion log (jobcomp/filetxt) of the same cluster
JOBCOMP = ("JobId=5 UserId=root(0) GroupId=root(0) Name=wrap JobState=TIMEOUT Partition=debug TimeLimit=1 "
           "StartTime=2026-11-25T18:16:20 EndTime=2026-11-25T18:17:40 NodeList=localhost NodeCnt=1 ProcCnt=1 "
           "ArrayJobId=1 ArrayTaskId=2 DerivedExitCode=0:0 ExitCode=0:15\n")


def test_scontrol_records():
    t = parse_records(SCONTROL)
    assert sorted(t) == [0, 1, 4, 5, 6]
    assert (t[1].state, t[1].exit_code, t[1].node, t[1].final) == ("FAILED", 1, "localhost", True)
    assert (t[0].state, t[0].exit_code, t[0].reason) == ("COMPLETED", 0, None)
    assert t[5].state == "PENDING" and not t[5].final and t[5].node is None and t[5].start_time is None


def test_jobcomp_records():
    t = parse_records(JOBCOMP)
    assert (t[2].state, t[2].exit_code, t[2].signal, t[2].node) == ("TIMEOUT", 0, 15, "localhost")


def test_array_id_ranges():
    assert _ids("3") == [3]
    assert _ids("4-9%2") == [4, 5, 6, 7, 8, 9]
    assert _ids("1,3,5-7") == [1, 3, 5, 6, 7]
    assert _ids("0-10:5") == [0, 5, 10]


def test_script_is_readable_and_complete(tmp_path):
    s = SlurmSettings(partition="gpu", account="proj", qos="high", time_limit="2:00:00", gpus_per_run=2,
                      cpus_per_run=8, mem_per_run="64G", max_concurrent=4, extra_sbatch=["--constraint=a100"],
                      python="/opt/venv/bin/python")
    text = render(s, tmp_path / "study", "sweep", ["e01-c1", "e02-c1", "e01-c2"], 1)
    for line in ("#SBATCH --array=0-2%4", "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --time=2:00:00", "#SBATCH --gres=gpu:2", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64G",
                 "#SBATCH --constraint=a100", "#SBATCH --no-requeue", "  e01-c1\n  e02-c1\n  e01-c2\n",
                 "/opt/venv/bin/python -m llenergymeasure.orchestrator.execution.slurm.task"):
        assert line in text, line
    assert "--gpus=2" in render(s.model_copy(update={"gpu_option": "gpus"}), tmp_path, "x", ["a"], 1)


@pytest.mark.parametrize("raw, field", [
    ({"time_limit": "an hour"}, "slurm.time_limit"),
    ({"mem_per_run": "lots"}, "slurm.mem_per_run"),
    ({"gpus_per_run": -1}, "slurm.gpus_per_run"),
    ({"execute": "podman"}, "slurm.execute"),
    ({"execute": "apptainer"}, "slurm.sif"),
])
def test_bad_settings_name_the_field(raw, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        resolve_settings(raw, None, Path("s.yaml"))


def test_study_settings_win_over_the_user_config():
    s = resolve_settings({"partition": "a"}, {"partition": "b", "account": "me"}, Path("s.yaml"))
    assert (s.partition, s.account) == ("a", "me")


class FakeNvml:
    """A named fake NVML inventory: (index, UUID) of a node's GPUs."""

    def __init__(self, n: int) -> None:
        self.n = n

    def gpus(self) -> list[tuple[int, str]]:
        return [(i, f"GPU-fake-{i}") for i in range(self.n)]


def test_allocated_gpus_by_uuid():
    # whole node visible to NVML: Slurm's physical indices pick the UUIDs (not CUDA's renumbered ones)
    assert allocated_uuids({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}, FakeNvml(4)) == [
        "GPU-fake-2", "GPU-fake-3"]
    # cgroup-constrained: NVML sees only the allocation
    assert allocated_uuids({"SLURM_JOB_GPUS": "5", "CUDA_VISIBLE_DEVICES": "0"}, FakeNvml(1)) == ["GPU-fake-0"]
    # already UUIDs
    assert allocated_uuids({"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, FakeNvml(4)) == ["GPU-a", "GPU-b"]
    assert allocated_uuids({}, FakeNvml(4)) == []


def test_local_storage_with_other_nodes_is_refused(tmp_path):
    assert local_only_problem(tmp_path, ["localhost"]) is None  # a single-node cluster is this machine
    problem = local_only_problem(tmp_path, ["node01", "node02"])
    assert problem and "storage the nodes share" in problem and "node01" in problem


def test_sacct_records():
    from llenergymeasure.orchestrator.execution.slurm.commands import parse_sacct

    text = ("7_0|COMPLETED|0:0|node01|2026-11-25T18:00:00|2026-11-25T18:00:09\n"
            "7_1|OUT_OF_MEMORY|0:125|node02|2026-11-25T18:00:00|2026-11-25T18:00:03\n"
            "7_2|CANCELLED by 1000|0:15|node01|2026-11-25T18:00:00|2026-11-25T18:00:05\n"
            "7_[3-9%2]|PENDING|0:0|None assigned|Unknown|Unknown\n")
    t = parse_sacct(text)
    assert sorted(t) == [0, 1, 2]
    assert t[1].state == "OUT_OF_MEMORY" and t[2].state == "CANCELLED" and t[0].node == "node01"


@pytest.mark.parametrize("state, words", [
    ("TIMEOUT", "exceeded its Slurm time limit (slurm.time_limit 1:00:00)"),
    ("OUT_OF_MEMORY", "ran out of memory (slurm.mem_per_run 8G)"),
    ("CANCELLED", "cancelled"),
    ("NODE_FAIL", "its node node07 failed"),
    ("PREEMPTED", "preempted"),
    ("BOOT_FAIL", "failed to boot"),
    ("SPECIAL_EXIT", "ended in Slurm state SPECIAL_EXIT"),
])
def test_every_final_state_has_a_reason(state, words):
    from llenergymeasure.orchestrator.execution.slurm.commands import TaskState
    from llenergymeasure.orchestrator.execution.slurm.follow import _final_reason

    why = _final_reason(TaskState(0, state, exit_code=0, node="node07"), None,
                        {"time_limit": "1:00:00", "mem_per_run": "8G"})
    assert why.startswith(f"Slurm {state}: ") and words in why


def test_failed_state_carries_the_exit_code_and_the_runs_own_error():
    from llenergymeasure.orchestrator.execution.slurm.commands import TaskState
    from llenergymeasure.orchestrator.execution.slurm.follow import _final_reason

    why = _final_reason(TaskState(0, "FAILED", exit_code=1), "OSError: no weights", {})
    assert why == "Slurm FAILED (exit code 1): OSError: no weights"


def test_readme_slurm_settings_are_valid():
    """The `slurm:` block in the README's Slurm section is accepted as written."""
    import re

    import yaml

    from tests.support.helpers import REPO

    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Slurm: a study as one job array.*?```yaml\n(.*?)```", readme, re.S).group(1)
    s = resolve_settings(yaml.safe_load(block)["slurm"], None, Path("README.md"))
    assert s.partition == "gpu" and s.gpus_per_run == 1 and s.max_concurrent == 4 and s.execute == "local"


def test_apptainer_command_binds_the_run_rw_and_llem_dirs_ro(tmp_path, llem_dirs):
    from llenergymeasure.backends.paths import cache_dir
    from llenergymeasure.orchestrator.execution.slurm.apptainer import ApptainerRunner

    cache_dir().mkdir(parents=True, exist_ok=True)
    cmd = ApptainerRunner("/images/llem-pytorch.sif").command(["-m", "llenergymeasure.backends"], tmp_path / "run")
    assert cmd[1:3] == ["exec", "--nv"] and cmd[5:] == ["/images/llem-pytorch.sif", "python", "-m", "llenergymeasure.backends"]
    binds = cmd[cmd.index("--bind") + 1].split(",")
    assert f"{(tmp_path / 'run').resolve()}:{(tmp_path / 'run').resolve()}:rw" in binds
    assert f"{cache_dir().resolve()}:{cache_dir().resolve()}:ro" in binds
