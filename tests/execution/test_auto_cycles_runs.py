"""`execution.n_cycles: auto` on the real tiny model through the real `llem run`: cycles added
on the fly and summarised, resume of an auto study stopped between and inside its added
cycles, and a publication study's lock recording the rule and the cycles run.

A real run's noise is not under a test's control, so the first test asserts invariants that
hold whatever the machine does: every configuration ran 3 or 4 cycles, exactly those whose
first three cycles' interval (recomputed here from runs.parquet) was wider than the target
got a fourth, and exactly those still wider after it are flagged. The others force the
mechanism with a target no real measurement meets (0.01 %)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.plan import plan_for
from llenergymeasure.orchestrator.study.precision import ENERGY, THROUGHPUT, judge
from tests.publication.test_publication import clean_tree  # noqa: F401  (a fixture: a committed copy of this tree)
from tests.support import faultkit as fk
from tests.support.helpers import llem, write

pytestmark = pytest.mark.slow

AUTO = fk.TINY + """
sweep: {pytorch.batch_size: [1, 2]}
execution: {n_cycles: auto, max_cycles: 4, target_ci_pct: TARGET}
"""


@pytest.fixture(autouse=True)
def _reap_llem_processes():
    yield
    fk.reap()


def _study_file(tmp_path: Path, target: float, name: str = "auto") -> Path:
    return write(tmp_path / f"{name}.yaml", AUTO.replace("TARGET", str(target)))


def _judged(runs: pd.DataFrame) -> dict[str, list]:
    """A configuration's judged metrics as runs.parquet has them (energy only where measured)."""
    out = {THROUGHPUT: runs[THROUGHPUT].tolist()}
    if ENERGY in runs and runs[ENERGY].notna().any():
        out[ENERGY] = runs[ENERGY].tolist()
    return out


def test_an_auto_study_adds_cycles_only_where_the_interval_is_too_wide(tmp_path, tiny_model):
    target = 3.0
    out = tmp_path / "out"
    r = llem("run", str(_study_file(tmp_path, target)), "--runner", "local", "-o", str(out), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "x auto (3–4 cycles, target ±3 %) = 6 run(s) first, at most 8" in r.stdout
    (study,) = out.iterdir()
    runs = pd.read_parquet(study / "runs.parquet")
    summary = pd.read_parquet(study / "summary.parquet").set_index("experiment_index")
    manifest = json.loads((study / "manifest.json").read_text())
    assert (runs["status"] == "done").all() and manifest["status"] == "finished"
    assert [r["run_id"] for r in manifest["runs"][:6]] == ["e01-c1", "e02-c1", "e01-c2", "e02-c2", "e01-c3", "e02-c3"]
    for run in manifest["runs"][6:]:  # the added cycle: after the first three, cycle 4 only
        assert run["cycle"] == 4 and run["run_id"].endswith("-c4")
    added = 0
    for idx, row in summary.iterrows():
        mine = runs[runs["experiment_index"] == idx].sort_values("cycle")
        cycles = int(row["cycles_run"])
        assert cycles == len(mine) == row["runs_planned"] and list(mine["cycle"]) == list(range(1, cycles + 1))
        after_three = judge(_judged(mine.iloc[:3]), 3, target, 4)
        assert cycles == (4 if after_three.more else 3), (idx, after_three)
        final = judge(_judged(mine), cycles, target, 4)
        flagged = "ci_target_not_met" in row["flags"]
        assert flagged == (final.decision == "max_cycles"), (idx, final, row["flags"])
        if flagged:
            assert final.flag in row["flags"]
        added += cycles - 3
    assert ("one more cycle of" in r.stdout) == bool(added)
    assert "n_cycles auto: no more cycles" in r.stdout


def test_an_auto_study_resumes_between_and_inside_its_added_cycles(tmp_path, tiny_model):
    """Stopped during the last run of the first cycles (nothing decided yet), then during the
    cycle the resumed session added; the last resume finishes with what an uninterrupted
    study decides: no configuration meets 0.01 %, so both run max_cycles and are flagged."""
    f = _study_file(tmp_path, 0.01)
    out = tmp_path / "out"
    proc = fk.start("run", str(f), "--runner", "local", "-o", str(out), environ=fk.env(LLEM_TEST_FAULT="e02-c3:sleep=300"))
    study = fk.the_study(out)
    fk.wait_hooked(study, "e02-c3")
    proc.send_signal(signal.SIGINT)
    fk.fault("orchestrator Ctrl-C in the last run before n_cycles auto decides")
    code, text = fk.finish(proc, timeout=90)
    assert code == 130, text[-3000:]
    assert fk.check_study(study) == {"e01-c1": "done", "e02-c1": "done", "e01-c2": "done", "e02-c2": "done",
                                     "e01-c3": "done", "e02-c3": "failed"}
    finished = fk.checksums(study)

    # the resumed session runs e02-c3 again, then decides cycle 4 from the runs on disk
    proc = fk.start("run", "--resume", str(study), environ=fk.env(LLEM_TEST_FAULT="e02-c4:sleep=300"))
    fk.wait_hooked(study, "e02-c4")
    proc.send_signal(signal.SIGTERM)
    fk.fault("orchestrator SIGTERM inside a cycle n_cycles auto added")
    code, text = fk.finish(proc, timeout=90)
    assert code == 143, text[-3000:]
    assert "n_cycles auto: after cycle 3, 2 of 2 configuration(s) above ±0.01%; one more cycle of" in text
    states = fk.check_study(study)
    assert list(states) == ["e01-c1", "e02-c1", "e01-c2", "e02-c2", "e01-c3", "e02-c3", "e01-c4", "e02-c4"]
    assert (states["e01-c4"], states["e02-c4"]) == ("done", "failed")
    assert fk.run_of(study, "e02-c4")["failure_kind"] == "interrupted"
    assert fk.checksums(study, list({k.split("/")[1] for k in finished})) == finished

    code, text = fk.llem_run("run", "--resume", str(study))
    assert code == 0, text[-3000:]
    assert set(fk.check_study(study).values()) == {"done"} and len(fk.manifest(study)["runs"]) == 8  # max_cycles 4
    assert "one more cycle of" not in text and "still above ±0.01% after max_cycles 4" in text
    assert "= 8 run(s) so far, at most 8" in text  # the plan as resumed: with the cycle it added
    summary = pd.read_parquet(study / "summary.parquet").set_index("experiment_index")
    assert summary["cycles_run"].to_dict() == {1: 4, 2: 4}
    for flags in summary["flags"]:
        assert "ci_target_not_met: throughput CI ±" in flags and "> 0.01% after 4 cycles" in flags
    assert fk.checksums(study, list({k.split("/")[1] for k in finished})) == finished
    assert [s["command"] for s in fk.manifest(study)["sessions"]] == ["run", "resume", "resume"]


def test_a_publication_auto_study_locks_the_rule_and_records_the_cycles_run(clean_tree, tiny_model):  # noqa: F811
    tree = clean_tree
    text = fk.TINY + ("name: pub-auto\nexecution:\n  n_cycles: auto\n  max_cycles: 4\n  target_ci_pct: 0.01\n"
                      "  publication: {energy_required: false}\n")
    f = write(tree / "studies-under-test" / "pub-auto.yaml", text)
    out = tree / "results"
    r = llem("run", str(f), "--runner", "local", "-o", str(out), cwd=tree, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (study,) = out.iterdir()
    lock_text = (study / "study.lock.yaml").read_text()
    assert lock_text.startswith("# llem study lock for pub-auto")
    data = yaml.safe_load(lock_text)
    assert {k: data["execution"][k] for k in ("n_cycles", "target_ci_pct", "max_cycles")} == \
        {"n_cycles": "auto", "target_ci_pct": 0.01, "max_cycles": 4}
    assert data["lock"]["run_order"] == ["e01-c1", "e01-c2", "e01-c3"]  # the first cycles, as planned
    assert data["lock"]["cycles_run"] == {1: 4} and data["lock"]["runs_added"] == ["e01-c4"]
    assert "auto (3–4 cycles, target ±0.01 %)" in (study / "REPRODUCE.md").read_text()
    # the lock is still a study file, and it starts with the plan it locked
    again = load_study(study / "study.lock.yaml")
    assert again.execution.auto and again.execution.max_cycles == 4
    assert [p.run_id for p in plan_for(len(again.experiments), again.execution)] == data["lock"]["run_order"]
