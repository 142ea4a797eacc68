"""The host run registry (orchestrator/execution/host_runs.py): which llem runs were
active on this host during a run's window, so that RAPL's host-wide CPU energy is
flagged `cpu_energy_shared` when another run was there. Registrations are real files
with real flock(2) locks in a private lock directory; the real-run test of the
parallel runner is in test_parallel_gpus.py."""

from __future__ import annotations

import json
import os
import platform
import time

import pytest

from llenergymeasure.backends import contract
from llenergymeasure.orchestrator.execution import host_runs
from llenergymeasure.orchestrator.execution.host_runs import HostRun, Registration, mark_cpu_energy_shared
from llenergymeasure.orchestrator.execution.outcome import RunOutcome, load_result
from tests.support.recorded_study import template_result


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLEM_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


def run_dir(tmp_path, run_id: str):
    d = tmp_path / "study" / "runs" / run_id
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_overlapping_runs_see_each_other_and_a_lone_run_sees_none(tmp_path):
    with Registration(run_dir(tmp_path, "e01-c1")) as a:
        t0 = time.time()
        assert a.others(t0 - 1, t0 + 1) == []  # alone on the host
        with Registration(run_dir(tmp_path, "e02-c1")) as b:
            assert [e.label() for e in a.others(t0, time.time())] == ["study/e02-c1"]
            assert [e.label() for e in b.others(t0, time.time())] == ["study/e01-c1"]
        # b ended during a's window: still seen by a (its entry is kept while a runs)...
        assert [e.label() for e in a.others(t0, time.time())] == ["study/e02-c1"]
        # ...but not by a window of a's that opened after b ended
        later = time.time() + 1e-3
        assert a.others(later, later + 1) == []
    # nobody left who could have overlapped them: both entries are gone
    assert list(host_runs.registry_dir().glob("*.json")) == []


def test_a_run_that_ended_before_another_started_is_not_seen(tmp_path):
    with Registration(run_dir(tmp_path, "e01-c1")):
        pass
    with Registration(run_dir(tmp_path, "e02-c1")) as b:
        assert b.others(0.0, time.time()) == []


def test_a_dead_holder_is_closed_at_the_time_it_is_found(tmp_path):
    d = host_runs.registry_dir()
    dead = HostRun(run_dir=str(run_dir(tmp_path, "e09-c1")), pid=999_999, host=platform.node(),
                   started_unix=time.time() - 60)
    (d / "dead.json").write_text(dead.model_dump_json())  # no lock held: its process is gone
    with Registration(run_dir(tmp_path, "e01-c1")) as a:
        t0 = time.time()
        (found,) = a.others(t0 - 1, t0)  # it may have run until a started
        assert found.label() == "study/e09-c1" and found.ended_unix is not None
        assert a.others(time.time() + 1, time.time() + 2) == []  # never after it was found dead
        assert json.loads((d / "dead.json").read_text())["ended_unix"] is not None


def test_another_hosts_runs_are_not_this_hosts_rapl(tmp_path):
    d = host_runs.registry_dir()
    elsewhere = HostRun(run_dir=str(run_dir(tmp_path, "e05-c1")), pid=os.getpid(), host="other-node",
                        started_unix=time.time() - 5)
    (d / "other.json").write_text(elsewhere.model_dump_json())
    with Registration(run_dir(tmp_path, "e01-c1")) as a:
        assert a.others(0.0, time.time()) == []


def test_an_unusable_registry_lets_the_run_go_on_untracked(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("LLEM_LOCK_DIR", str(tmp_path / "file" / "locks"))  # below a file: unusable
    with Registration(run_dir(tmp_path, "e01-c1")) as a:
        assert a.path is None and a.others(0.0, time.time()) == []


def _done(tmp_path, run_id: str, cpu_energy_j: float | None) -> RunOutcome:
    d = run_dir(tmp_path, run_id)
    result = template_result()
    result = result.model_copy(update={"metrics": result.metrics.model_copy(update={"cpu_energy_j": cpu_energy_j})})
    (d / contract.RESULT_FILE).write_text(result.model_dump_json())
    return RunOutcome("done", 0, result=result)


def test_the_warning_goes_into_result_json_only_where_cpu_energy_was_measured(tmp_path):
    other = [HostRun(run_dir="/r/s2/runs/e03-c2", pid=1, host=platform.node(), started_unix=0.0)]
    measured = _done(tmp_path, "e01-c1", 812.5)
    mark_cpu_energy_shared(run_dir(tmp_path, "e01-c1"), measured, other)
    on_disk = load_result(run_dir(tmp_path, "e01-c1"))
    assert on_disk.warnings == measured.result.warnings
    assert on_disk.warnings[-1].startswith("cpu_energy_shared: 1 other llem run(s) active on this host during "
                                           "the window (s2/e03-c2)")
    unmeasured = _done(tmp_path, "e02-c1", None)  # no RAPL: no CPU figure to qualify
    mark_cpu_energy_shared(run_dir(tmp_path, "e02-c1"), unmeasured, other)
    assert load_result(run_dir(tmp_path, "e02-c1")).warnings == []
    alone = _done(tmp_path, "e03-c1", 812.5)
    mark_cpu_energy_shared(run_dir(tmp_path, "e03-c1"), alone, [])
    assert load_result(run_dir(tmp_path, "e03-c1")).warnings == []


def test_the_window_edges_come_from_the_result_else_the_runs_life():
    result = template_result()
    assert host_runs.window_unix(result, (1.0, 2.0)) == (1.0, 2.0)  # an older result: no edges recorded
    edged = result.model_copy(update={"window_started_at": "2026-01-01T00:00:01.000+00:00",
                                      "window_finished_at": "2026-01-01T00:00:09.500+00:00"})
    t0, t1 = host_runs.window_unix(edged, (1.0, 2.0))
    assert t1 - t0 == pytest.approx(8.5)
