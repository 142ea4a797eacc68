"""`llem archive add`: validation before anything is written, de-duplication by study
and run id (checked by checksum), partial studies, and atomicity under a real kill of a
real `llem archive add` at each step of its commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.orchestrator.archive.add import ENV_FAULT, add_studies
from llenergymeasure.orchestrator.archive.layout import ArchiveLayout, load_index
from llenergymeasure.orchestrator.archive.query import query
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest
from tests.archive.archive_support import checksums
from tests.support.helpers import REPO, llem


def _mark_unfinished(study_dir: Path, n: int) -> list[str]:
    """Make the last `n` finished runs pending again, as a study stopped early leaves them."""
    m = Manifest.load(study_dir)
    runs = [r for r in m.in_order() if r.state == "done"][-n:]
    for r in runs:
        m.update(r.run_id, "pending", exit_code=None)
    m.set_status("stopped", "--fail-fast")
    return [r.run_id for r in runs]


def test_adding_twice_changes_nothing_byte_for_byte(recorded_study: Path, tmp_path: Path):
    archive = tmp_path / "archive"
    r = llem("archive", "add", str(recorded_study), "--archive", str(archive))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("added ") and f"archive: {archive}" in r.stdout
    before = checksums(archive)
    index = load_index(ArchiveLayout(archive))
    (entry,) = index.studies.values()
    assert sorted(entry.files) == ["environment", "runs", "studies", "summary"]
    for table, f in entry.files.items():  # the index's checksums are the files'
        assert before[f"{entry.dir}/{table}.parquet"] == f.sha256
    assert entry.runs_done == 17 and len(entry.run_ids) == 18

    r = llem("archive", "add", str(recorded_study), str(recorded_study), "--archive", str(archive))
    assert r.returncode == 0, r.stderr
    assert "unchanged" in r.stdout and "already in the archive" in r.stdout and "added" not in r.stdout
    assert checksums(archive) == before


def test_a_renamed_copy_is_the_same_study(recorded_study: Path, tmp_path: Path):
    """The study id comes from the manifest, not the directory's name or place."""
    import shutil

    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    before = checksums(archive)
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(recorded_study, copy)
    out = add_studies([copy], archive)
    assert out.added == [] and out.unchanged[0][1] == "already in the archive"
    assert checksums(archive) == before


def test_every_row_is_there_with_its_keys(recorded_study: Path, tmp_path: Path):
    archive = tmp_path / "archive"
    (sid,) = add_studies([recorded_study], archive).added
    counts = query(archive, "select (select count(*) from runs) r, (select count(distinct run_id) from runs) u, "
                            "(select count(*) from studies) s, (select count(distinct experiment_index) from summary) e, "
                            "(select count(*) from environment) v").iloc[0]
    assert (counts.r, counts.u, counts.s, counts.e) == (18, 18, 1, 6)
    assert counts.v >= 1
    runs = query(archive, "select status, count(*) n from runs group by 1 order by 1")
    assert runs.to_dict(orient="records") == [{"status": "done", "n": 17}, {"status": "failed", "n": 1}]
    orphans = query(archive, "select count(*) n from runs r where status = 'done' and not exists "
                             "(select 1 from environment e where e.environment_id = r.environment_id)")
    assert orphans.n[0] == 0
    assert query(archive, "select count(*) n from runs where batch_size is null").n[0] == 0  # each backend's own key
    assert sid.split("-")[0].endswith("Z")


def test_bad_input_exits_2_and_writes_nothing(recorded_study: Path, tmp_path: Path):
    archive = tmp_path / "archive"
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for bad, says in ((tmp_path / "empty", "not a study directory"), (tmp_path / "file.txt", "is a file"),
                      (tmp_path / "missing", "no such directory")):
        with pytest.raises(UserError, match=says):
            add_studies([bad], archive)
        assert not archive.exists()
    # one bad directory among good ones: nothing is added
    r = llem("archive", "add", str(recorded_study), str(tmp_path / "empty"), "--archive", str(archive))
    assert r.returncode == 2 and "not a study directory" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not archive.exists()
    # an archive path that is something else
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.md").write_text("mine")
    with pytest.raises(UserError, match="not an llem archive"):
        add_studies([recorded_study], other)
    assert sorted(p.name for p in other.iterdir()) == ["todo.md"]
    with pytest.raises(UserError, match="is a study directory"):
        add_studies([recorded_study], recorded_study)
    with pytest.raises(UserError, match="remote archive can be queried and listed but not added to"):
        add_studies([recorded_study], "hf://datasets/owner/name")


def test_unfinished_studies_need_partial_and_a_finished_copy_replaces_them(study_copy: Path, tmp_path: Path):
    archive = tmp_path / "archive"
    complete = tmp_path / "complete"
    import shutil

    shutil.copytree(study_copy, complete)
    pending = _mark_unfinished(study_copy, 3)
    with pytest.raises(UserError, match=r"3 of 18 run\(s\) have not finished.*--partial"):
        add_studies([study_copy], archive)
    assert not archive.exists()

    (sid,) = add_studies([study_copy], archive, partial=True).added
    study = query(archive, "select partial, status, n_runs_done from studies").iloc[0]
    assert bool(study.partial) and study.status == "stopped" and study.n_runs_done == 14
    states = query(archive, "select run_id, status from runs where status = 'pending' order by run_id")
    assert sorted(states.run_id) == sorted(pending)
    first_dir = load_index(ArchiveLayout(archive)).studies[sid].dir

    out = add_studies([complete], archive)
    assert out.replaced == [sid]
    study = query(archive, "select partial, n_runs_done from studies").iloc[0]
    assert not bool(study.partial) and study.n_runs_done == 17
    assert query(archive, "select count(*) n from runs").n[0] == 18  # runs matched by run id, not appended
    index = load_index(ArchiveLayout(archive))
    assert not index.studies[sid].partial and index.studies[sid].dir != first_dir  # written anew, then swapped
    assert sorted(p.name for p in (archive / "studies").iterdir()) == [Path(index.studies[sid].dir).name]

    before = checksums(archive)
    out = add_studies([study_copy], archive, partial=True)  # the older, partial copy again
    assert out.unchanged and "more complete copy" in out.unchanged[0][1]
    assert checksums(archive) == before


def test_a_study_with_no_finished_run_is_refused(study_copy: Path, tmp_path: Path):
    _mark_unfinished(study_copy, 17)
    with pytest.raises(UserError, match="no run finished"):
        add_studies([study_copy], tmp_path / "archive", partial=True)


def test_default_archive_is_under_the_user_data_dir(recorded_study: Path, tmp_path: Path, monkeypatch):
    from llenergymeasure.orchestrator.archive.query import list_studies

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("LLEM_ARCHIVE", raising=False)
    add_studies([recorded_study])
    assert (tmp_path / "data" / "llenergymeasure" / "archive" / "archive.json").is_file()
    assert list_studies(None).study_name.tolist() == ["recorded-multi-backend"]
    monkeypatch.setenv("LLEM_ARCHIVE", str(tmp_path / "mine"))
    add_studies([recorded_study])
    assert (tmp_path / "mine" / "archive.json").is_file()


def test_parquet_files_have_the_schemas_columns_and_types(recorded_study: Path, tmp_path: Path):
    from llenergymeasure.orchestrator.archive.schema import TABLES, arrow_schema

    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    (entry,) = load_index(ArchiveLayout(archive)).studies.values()
    for table, model in TABLES.items():
        schema = pq.read_schema(archive / entry.dir / f"{table}.parquet")
        assert schema.remove_metadata() == arrow_schema(model), table


# -- atomicity: a real `llem archive add`, killed at each step -------------------------

def _start_add(study: Path, archive: Path, fault: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llenergymeasure.orchestrator.cli", "archive", "add", str(study),
                             "--archive", str(archive)], cwd=REPO, env={**os.environ, ENV_FAULT: fault},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until the hook says it reached its point (the file appears), or the process ends."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"llem ended ({proc.returncode}) before {path.name}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path.name} never appeared")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("point, how", [("first-file", "exit"), ("first-file", "kill"), ("staged", "kill"),
                                        ("committed", "kill")])
def test_a_kill_mid_add_leaves_the_archive_as_it_was(recorded_study: Path, study_copy: Path, tmp_path: Path,
                                                     point: str, how: str):
    """An archive holding one study; adding a second is killed at `point`. Before the
    commit (first-file, staged) the archive reads exactly as before; after it (committed)
    it holds both. Either way the next add cleans up and completes."""
    archive = tmp_path / "archive"
    m = Manifest.load(study_copy)
    m.created_at = "2026-02-02T00:00:00.000+00:00"  # another study: its id covers the creation time
    m.save()
    add_studies([recorded_study], archive)
    committed = checksums(archive)
    answer = query(archive, "select count(*) n from runs").n[0]

    flags = tmp_path / "flags"
    flags.mkdir()
    proc = _start_add(study_copy, archive, f"exit@{point}" if how == "exit" else f"pause={flags}@{point}")
    if how == "exit":
        proc.wait(120)
        assert proc.returncode == 70, proc.stderr.read()
    else:
        _wait_for(flags / f"reached-{point}", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    after = checksums(archive)
    if point == "committed":
        assert query(archive, "select count(*) n from runs").n[0] == answer + 18
        assert len(load_index(ArchiveLayout(archive)).studies) == 2
    else:
        listed = {k: v for k, v in after.items() if not k.startswith((".staging", "studies/"))
                  or any(k.startswith(e.dir + "/") for e in load_index(ArchiveLayout(archive)).studies.values())}
        assert listed == committed  # the index and every file it lists: byte for byte as before
        left = (archive / ".staging") if point == "first-file" else (archive / "studies")
        assert len(list(left.iterdir())) == (1 if point == "first-file" else 2)  # what the kill left, unlisted
        assert query(archive, "select count(*) n from runs").n[0] == answer
        assert len(load_index(ArchiveLayout(archive)).studies) == 1
    # the next add completes and leaves nothing behind
    r = llem("archive", "add", str(study_copy), "--archive", str(archive))
    assert r.returncode == 0, r.stderr
    index = load_index(ArchiveLayout(archive))
    assert len(index.studies) == 2 and not (archive / ".staging").exists()
    assert sorted(f"studies/{p.name}" for p in (archive / "studies").iterdir()) == sorted(e.dir for e in index.studies.values())
