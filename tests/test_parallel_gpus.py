"""`execution.parallel_gpus`: real tiny-model runs through the real local runner, several
at once, each pinned to its own GPU of a fake host inventory (this machine has no GPU:
the runs execute on the CPU, and the UUIDs they were given are what the test checks)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from orchestrator.manifest import Manifest
from orchestrator.parallel import ParallelRunner, parallel_runner
from orchestrator.plan import order_runs
from orchestrator.runners.local import LocalRunner
from orchestrator.study import load_study
from tests.conftest import write
from tests.test_gpu_slots import FakeHostGpus

STUDY = """\
name: parallel
model: llem/tiny-llama
device: cpu
n_prompts: 2
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0.2}
sweep: {pytorch.batch_size: [1, 2]}
execution: {n_cycles: 2, parallel_gpus: 2}
"""


@pytest.mark.slow
def test_runs_overlap_on_disjoint_gpus(tmp_path, tiny_model):
    study = load_study(write(tmp_path / "p.yaml", STUDY))
    runner = ParallelRunner(LocalRunner(), 2, FakeHostGpus(2), study, gpus_per_run=1)
    plan = order_runs(len(study.experiments), 2, "interleaved", 0)
    (tmp_path / "s").mkdir()
    manifest = Manifest.create(tmp_path / "s", study, plan, runner.name, "p.yaml")
    loop = runner.run_whole(manifest, [p.run_id for p in plan], print)
    assert loop.failed == []
    assert [r["state"] for r in manifest.data["runs"]] == ["done"] * 4
    spans = []
    for r in manifest.data["runs"]:
        result = json.loads((tmp_path / "s" / r["run_dir"] / "result.json").read_text())
        gpus = result["environment"]["env"]["CUDA_VISIBLE_DEVICES"]
        assert [gpus] == r["gpu_uuids"]
        spans.append((datetime.fromisoformat(result["started_at"]), datetime.fromisoformat(result["finished_at"]), gpus))
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, "no two runs ran at the same time"
    assert all(a[2] != b[2] for a, b in overlapping), "two runs at once on one GPU"


def test_no_gpus_or_one_slot_keeps_the_plain_runner(tmp_path):
    study = load_study(write(tmp_path / "p.yaml", STUDY))
    notes: list[str] = []
    local = LocalRunner()
    assert parallel_runner(local, study, notes.append, host=FakeHostGpus(0)) is local
    assert "no GPU: runs stay sequential" in notes[0]
    assert isinstance(parallel_runner(local, study, notes.append, host=FakeHostGpus(2)), ParallelRunner)
    study.execution.parallel_gpus = 1
    assert parallel_runner(local, study, notes.append, host=FakeHostGpus(2)) is local
