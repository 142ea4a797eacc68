"""The end of a study that went wrong (issue 17): the report of a study whose runs all
failed renders and says why each failed, and the study's files that could not be
written are named, so that `llem run` can end unsuccessfully (exit 1)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llenergymeasure.backends.contract import ERROR_FILE
from llenergymeasure.orchestrator.analysis.finish import finish_study
from llenergymeasure.orchestrator.analysis.report import render_report
from llenergymeasure.orchestrator.analysis.results import open_study
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.plan import order_runs
from tests.support.helpers import llem, write

STUDY = """\
name: all-failed
model: llem/tiny-llama
n_prompts: 2
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0, warmup_batches: 0}
sweep: {pytorch.batch_size: [1, 2]}
execution: {n_cycles: 1, order: sequential}
"""

ERRORS = {"e01-c1": "exit code 3; log: crashed at start (recorded)",
          "e02-c1": "OutOfMemoryError: CPU out of memory (recorded)"}


def failed_study(root: Path) -> Path:
    """A study directory as `llem run` leaves it when every run failed (no model run)."""
    study_file = write(root / "all-failed.yaml", STUDY)
    study = load_study(study_file)
    plan = order_runs(len(study.experiments), 1, "sequential", 0)
    study_dir = root / "all-failed_20260101T000000Z"
    study_dir.mkdir()
    (study_dir / study_file.name).write_text(STUDY)
    manifest = Manifest.create(study_dir, study, plan, "local")
    for run in plan:
        run_dir = study_dir / "runs" / run.run_id
        run_dir.mkdir(parents=True)
        (run_dir / ERROR_FILE).write_text(json.dumps({"error_type": "Crashed", "message": ERRORS[run.run_id]}))
        manifest.update(run.run_id, "failed", exit_code=3, error=ERRORS[run.run_id], failure_kind="crashed")
    manifest.set_status("finished", "2 run(s) failed")
    return study_dir


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_report_of_a_study_whose_runs_all_failed_says_what_failed_and_why(tmp_path):
    """Item 2: it raised UndefinedError ('dict object' has no attribute 'chart')."""
    study_dir = failed_study(tmp_path)
    text = _text(render_report(open_study(study_dir)))
    assert "No run of this study finished (2 failed), so there are no figures" in text
    for run_id, error in ERRORS.items():
        assert re.search(rf"{run_id} \S+ {re.escape(error)}", text), (run_id, text[-2000:])
    assert "Undefined" not in text

    r = llem("report", str(study_dir))  # the command the warning told the user to run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and (study_dir / "report.html").is_file()


@pytest.mark.slow
def test_a_study_whose_runs_all_fail_still_gets_its_report(tmp_path, tiny_model):
    """Item 2 through `llem run`: every run dies at start (the harness's test hook)."""
    f = write(tmp_path / "all-failed.yaml", STUDY)
    out = tmp_path / "out"
    r = llem("run", str(f), "--runner", "local", "-o", str(out), env={"LLEM_TEST_FAULT": "*:exit=3"})
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "could not be written" not in r.stdout + r.stderr
    (study_dir,) = out.iterdir()
    text = _text((study_dir / "report.html").read_text())
    assert "No run of this study finished (2 failed)" in text
    assert text.count("exit code 3") == 2


def test_files_that_could_not_be_written_are_named_with_what_writes_them_again(tmp_path):
    """Item 8f: a full disk that kept runs.parquet, summary.parquet and report.html out was
    only notified; now the caller gets them in `unwritten` (and `llem run` exits 1)."""
    study_dir = failed_study(tmp_path)
    for name in ("runs.parquet", "summary.parquet", "report.html"):
        (study_dir / name).mkdir()  # writing there fails, as on a full disk
    said: list[str] = []
    finished = finish_study(Manifest.load(study_dir), said.append)
    assert finished.unwritten == ["runs.parquet", "summary.parquet", "report.html"]
    assert finished.report is None and len(said) == 3
    hint = finished.redo_hint()
    for command in (f"llem run --resume {study_dir}", f"llem report {study_dir}", f"llem results {study_dir}"):
        assert command in hint

    for name in ("runs.parquet", "summary.parquet", "report.html"):
        (study_dir / name).rmdir()
    assert finish_study(Manifest.load(study_dir), said.append).unwritten == []
