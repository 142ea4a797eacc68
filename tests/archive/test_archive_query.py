"""`llem archive query` / `list` and the library's `archive.open`: DuckDB over the files
the index lists; bad SQL and archives of another schema version exit 2 with the reason."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

import llenergymeasure.orchestrator.archive as archive_lib
from llenergymeasure.orchestrator.archive.add import add_studies
from llenergymeasure.orchestrator.archive.query import query
from llenergymeasure.orchestrator.errors import UserError
from tests.support.helpers import llem

ENERGY = "select label, mean, ci95_low, ci95_high, ratio from summary where metric = 'energy_per_output_token_j' order by experiment_index"


@pytest.fixture(scope="module")
def archive(recorded_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive") / "archive"
    add_studies([recorded_study], root)
    return root


def test_query_in_every_format(archive: Path):
    r = llem("archive", "query", ENERGY, "--archive", str(archive), "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 6 and rows[0]["label"] == "backend=pytorch, pytorch.batch_size=1" and float(rows[0]["ratio"]) == 1.0
    assert all(float(x["ci95_low"]) <= float(x["mean"]) <= float(x["ci95_high"]) for x in rows if x["ci95_low"])
    r = llem("archive", "query", ENERGY, "--archive", str(archive), "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)[5]["ratio"] < 0.3
    r = llem("archive", "query", "select count(*) as n_runs from runs", "--archive", str(archive))
    assert r.returncode == 0 and "n_runs" in r.stdout and "18" in r.stdout


def test_a_query_error_exits_2_with_duckdbs_message(archive: Path):
    r = llem("archive", "query", "select nope from runs", "--archive", str(archive))
    assert r.returncode == 2 and 'Referenced column "nope" not found' in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(UserError, match="syntax error"):
        query(archive, "selec 1")


def test_list_names_every_study_with_its_hardware(archive: Path):
    r = llem("archive", "list", "--archive", str(archive), "--format", "json")
    assert r.returncode == 0, r.stderr
    (study,) = json.loads(r.stdout)
    assert study["study_name"] == "recorded-multi-backend" and study["hardware"] == "NVIDIA H100 80GB HBM3"
    assert study["n_runs_done"] == 17 and study["status"] == "finished" and study["models"] == "llem/tiny-llama"


def test_the_library_returns_a_duckdb_connection(archive: Path):
    con = archive_lib.open(archive)
    df = con.sql(ENERGY).df()
    assert list(df.columns) == ["label", "mean", "ci95_low", "ci95_high", "ratio"] and len(df) == 6
    joined = con.sql("select e.gpu_model, count(*) n from runs r join environment e using (study_id, environment_id) "
                     "group by 1").fetchall()
    assert joined == [("NVIDIA H100 80GB HBM3", 17)]


def test_the_top_level_facade_reads_the_same_archive(archive: Path):
    """`import llenergymeasure as llem; llem.archive.open(PATH)`, as the README writes it."""
    import llenergymeasure as llem

    assert llem.archive is archive_lib and "archive" in dir(llem)
    assert llem.archive.open(str(archive)).sql(ENERGY).fetchall() == archive_lib.open(archive).sql(ENERGY).fetchall()


def test_not_an_archive_and_newer_archives_exit_2(archive: Path, recorded_study: Path, tmp_path: Path):
    r = llem("archive", "list", "--archive", str(tmp_path / "none"))
    assert r.returncode == 2 and "no archive there" in r.stderr
    newer = tmp_path / "newer"
    newer.mkdir()
    index = json.loads((archive / "archive.json").read_text())
    (newer / "archive.json").write_text(json.dumps({**index, "schema_version": 99}))
    r = llem("archive", "query", "select 1", "--archive", str(newer))
    assert r.returncode == 2 and "schema_version 99 is newer than this llem's (1)" in r.stderr
    for call in (lambda: query(newer, "select 1"), lambda: add_studies([recorded_study], newer)):
        with pytest.raises(UserError, match="newer than this llem"):
            call()


def test_files_written_before_a_column_existed_still_read(recorded_study: Path, tmp_path: Path):
    """A metric added to the run contract is a new column: older files lack it, and the
    views union files by name where the index says their columns differ."""
    import hashlib

    import pyarrow.parquet as pq

    from llenergymeasure.orchestrator.archive.add import write_index
    from llenergymeasure.orchestrator.archive.layout import ArchiveLayout, load_index
    from llenergymeasure.orchestrator.archive.schema import schema_fingerprint
    from llenergymeasure.orchestrator.execution.manifest import Manifest
    import shutil

    root = tmp_path / "archive"
    other = tmp_path / "other"
    shutil.copytree(recorded_study, other)
    m = Manifest.load(other)
    m.created_at = "2026-05-05T00:00:00.000+00:00"
    m.save()
    add_studies([recorded_study, other], root)
    layout = ArchiveLayout(root)
    index = load_index(layout)
    old = sorted(index.studies.values(), key=lambda e: e.dir)[0]
    path = root / old.dir / "runs.parquet"
    table = pq.read_table(path).drop_columns(["warnings"])  # as written before `warnings` existed
    pq.write_table(table, path)
    data = path.read_bytes()
    old.files["runs"] = old.files["runs"].model_copy(update={
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "columns_sha256": schema_fingerprint(table.schema)})
    write_index(layout, index)
    counts = query(root, "select count(*) n, count(warnings) w, count(distinct study_id) s from runs").iloc[0]
    assert (counts.n, counts.s) == (36, 2) and 0 < counts.w < 36
