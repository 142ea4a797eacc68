"""`n_cycles: auto` in the execution layer, without running a model: the next cycle decided
from result.json files on disk (hand-written results of known throughput, as
tests/support/recorded_study.py writes them), the manifest growing, resume's plan check,
and the Slurm runner's refusal. The real studies are in test_auto_cycles_runs.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llenergymeasure.backends.contract import RESULT_FILE
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution import auto_cycles
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.resume import check_plan
from llenergymeasure.orchestrator.execution.slurm.runner import refuse_auto_cycles
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.plan import plan_for
from llenergymeasure.orchestrator.study.spec import Study
from llenergymeasure.orchestrator.terminal import Progress, console
from tests.support.helpers import llem, write
from tests.support.recorded_study import template_result

STUDY = """\
name: auto-units
model: llem/tiny-llama
n_prompts: 2
max_input_tokens: 8
max_output_tokens: 2
sweep: {pytorch.batch_size: [1, 2, 4]}
execution: {n_cycles: auto, max_cycles: 4, target_ci_pct: 5}
"""


def _study(tmp_path: Path, text: str = STUDY, name: str = "auto-units") -> Study:
    return load_study(write(tmp_path / f"{name}.yaml", text))


def _manifest(tmp_path: Path, study: Study) -> Manifest:
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    return Manifest.create(study_dir, study, plan_for(len(study.experiments), study.execution), "local")


def _finish(manifest: Manifest, run_id: str, tokens_per_s: float | None, energy: float | None = None) -> None:
    """The run done, with a result.json of this throughput (None: the run failed)."""
    run = manifest.run(run_id)
    if tokens_per_s is None:
        manifest.update(run_id, "failed", error="crashed (test)", failure_kind="crashed")
        return
    t = template_result()
    result = t.model_copy(update={
        "experiment_id": manifest.experiment(run.experiment_index).id,
        "metrics": t.metrics.model_copy(update={"output_tokens_per_s": tokens_per_s,
                                                "energy_per_output_token_j": energy})})
    run_dir = manifest.run_dir(run_id)
    run_dir.mkdir(parents=True)
    (run_dir / RESULT_FILE).write_text(result.model_dump_json())
    manifest.update(run_id, "done", exit_code=0)


# throughput per experiment and cycle: 1 is quiet, 2 noisy, 3 quiet in throughput but not in energy
THROUGHPUT = {1: [100.0, 100.4, 99.7, 100.2], 2: [100.0, 160.0, 70.0, 120.0], 3: [50.0, 50.1, 49.9, 50.0]}
ENERGY = {1: [None] * 4, 2: [None] * 4, 3: [1.0, 1.6, 0.7, 1.3]}


def test_the_next_cycle_is_decided_from_the_runs_on_disk(tmp_path):
    study = _study(tmp_path)
    manifest = _manifest(tmp_path, study)
    said: list[str] = []
    for run in manifest.in_order()[:-1]:
        _finish(manifest, run.run_id, THROUGHPUT[run.experiment_index][run.cycle - 1],
                ENERGY[run.experiment_index][run.cycle - 1])
    assert auto_cycles.next_round(manifest, study.execution, said.append) == []  # e03-c03 has not run
    assert not said and len(manifest.runs) == 9
    last = manifest.in_order()[-1]
    _finish(manifest, last.run_id, THROUGHPUT[3][2], ENERGY[3][2])
    manifest.set_status("finished")

    added = auto_cycles.next_round(manifest, study.execution, said.append)
    # 2 is noisy in throughput, 3 in energy per token; 1 met the target in three cycles
    assert [(r.run_id, r.position, r.cycle) for r in added] == [("e02-c4", 10, 4), ("e03-c4", 11, 4)]
    on_disk = json.loads((manifest.study_dir / "manifest.json").read_text())  # saved before any of them runs
    assert on_disk["status"] == "running"
    assert [(r["run_id"], r["state"], r["run_dir"]) for r in on_disk["runs"][9:]] == \
        [("e02-c4", "pending", "runs/e02-c4"), ("e03-c4", "pending", "runs/e03-c4")]
    assert any("after cycle 3, 2 of 3 configuration(s) above ±5%" in s and "experiment 2 (pytorch.batch_size=2): "
               "throughput ±" in s and "experiment 3 (pytorch.batch_size=4): throughput ±" in s for s in said)
    assert any("energy per token was not measured" in s for s in said)  # experiments 1 and 2 have none

    for r in added:
        _finish(manifest, r.run_id, THROUGHPUT[r.experiment_index][3], ENERGY[r.experiment_index][3])
    said.clear()
    assert auto_cycles.next_round(manifest, study.execution, said.append) == []  # max_cycles 4 reached
    assert [s for s in said if "still above ±5% after max_cycles 4" in s and "flagged ci_target_not_met" in s] \
        and any("no more cycles; 1 of 3 configuration(s) within ±5% in 3 cycles" in s for s in said)
    verdicts = auto_cycles.verdicts(manifest, study.execution)
    assert {i: (v.decision, v.cycles) for i, v in verdicts.items()} == \
        {1: ("met", 3), 2: ("max_cycles", 4), 3: ("max_cycles", 4)}
    assert verdicts[3].flag.startswith("ci_target_not_met: energy per token CI ±") and "throughput" not in verdicts[3].flag

    # a study that publishes no energy judges throughput alone: 3 would have stopped at 3 cycles
    assert auto_cycles.verdicts(manifest, study.execution, energy=False)[3].ci_pct.keys() == {"output_tokens_per_s"}


def test_a_failing_configuration_gets_no_more_cycles(tmp_path):
    study = _study(tmp_path)
    manifest = _manifest(tmp_path, study)
    for run in manifest.in_order():
        crashed = run.run_id == "e02-c2"
        _finish(manifest, run.run_id, None if crashed else THROUGHPUT[run.experiment_index][run.cycle - 1])
    said: list[str] = []
    assert [r.run_id for r in auto_cycles.next_round(manifest, study.execution, said.append)] == []
    assert any("experiment 2 (pytorch.batch_size=2) has failed run(s), so no cycle is added" in s for s in said)


def test_resume_keeps_the_added_cycles_and_refuses_another_rule(tmp_path):
    study = _study(tmp_path)
    manifest = _manifest(tmp_path, study)
    first = plan_for(len(study.experiments), study.execution)
    for run in manifest.in_order():
        _finish(manifest, run.run_id, THROUGHPUT[run.experiment_index][run.cycle - 1])
    auto_cycles.next_round(manifest, study.execution, lambda _: None)
    assert len(manifest.runs) == 10  # e02-c4 added
    check_plan(Manifest.load(manifest.study_dir), study, first)  # the same file: accepted, added runs and all

    changed = _study(tmp_path, STUDY.replace("target_ci_pct: 5", "target_ci_pct: 2"), "changed")
    with pytest.raises(UserError, match=r"execution.target_ci_pct: 5.0 in the study, 2.0 now"):
        check_plan(manifest, changed, first)
    fixed = _study(tmp_path, STUDY.replace("n_cycles: auto, max_cycles: 4, target_ci_pct: 5", "n_cycles: 4"), "fixed")
    with pytest.raises(UserError, match=r"execution.n_cycles: 'auto' in the study, 4 now"):
        check_plan(manifest, fixed, plan_for(3, fixed.execution))


def test_the_slurm_runner_refuses_auto_with_exit_2(tmp_path):
    study = _study(tmp_path)
    with pytest.raises(UserError) as e:
        refuse_auto_cycles(study)
    assert "execution.n_cycles: auto is not supported with the slurm runner" in str(e.value)
    assert "submitted as one job array" in str(e.value) and "n_cycles: 4" in str(e.value)
    refuse_auto_cycles(_study(tmp_path, STUDY.replace("n_cycles: auto, max_cycles: 4, target_ci_pct: 5", "n_cycles: 3"),
                              "fixed"))

    out = tmp_path / "results"
    r = llem("run", str(study.path), "--runner", "slurm", "--dry-run", "-o", str(out), timeout=120)
    if "--runner slurm:" in r.stderr and "not found; run llem on a Slurm login node" in r.stderr:
        pytest.skip("no Slurm client tools here: the runner itself is refused first")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert "execution.n_cycles: auto is not supported with the slurm runner" in r.stderr and not out.exists()


def test_progress_counts_on_when_a_cycle_is_added(tmp_path):
    study = _study(tmp_path)
    plan = plan_for(3, study.execution)
    progress = Progress(console())
    progress.begin(plan, len(plan))
    progress.begin(plan[:2], len(plan) + 2)  # (stand-ins for an added cycle's runs)
    assert (progress.total, progress.planned, len(progress.todo)) == (11, 11, 11)
