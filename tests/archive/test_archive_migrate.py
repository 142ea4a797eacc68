"""Migrations, one per earlier schema version: version 0 (a folder per study holding the
study directory's own runs.parquet and summary.parquet, as people shared results before
the archive) becomes version 1 with the same figures; an archive of a newer version is
refused; an interrupted migration leaves version 0 readable and is re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from llenergymeasure.orchestrator.analysis.results import open_study
from llenergymeasure.orchestrator.archive.add import add_studies
from llenergymeasure.orchestrator.archive.layout import ArchiveLayout, stored_version
from llenergymeasure.orchestrator.archive.migrate import MIGRATIONS, migrate
from llenergymeasure.orchestrator.archive.query import query
from llenergymeasure.orchestrator.archive.schema import SCHEMA_VERSION
from llenergymeasure.orchestrator.errors import UserError
from tests.support.helpers import llem


def _v0_archive(study_dir: Path, root: Path) -> Path:
    """What a version-0 archive was: the study's own tables, copied as llem wrote them."""
    results = open_study(study_dir)
    folder = root / "studies" / study_dir.name
    folder.mkdir(parents=True)
    results.runs.to_parquet(folder / "runs.parquet", index=False)
    results.summary.to_parquet(folder / "summary.parquet", index=False)
    return root


def test_every_earlier_version_has_a_migration():
    assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))


def test_version_0_migrates_to_version_1_with_the_same_figures(recorded_study: Path, tmp_path: Path):
    root = _v0_archive(recorded_study, tmp_path / "v0")
    assert stored_version(ArchiveLayout(root)) == 0
    r = llem("archive", "query", "select 1", "--archive", str(root))
    assert r.returncode == 2 and "schema_version 0 is older" in r.stderr and "llem archive migrate" in r.stderr

    r = llem("archive", "migrate", "--archive", str(root))
    assert r.returncode == 0, r.stderr
    assert "migrated from schema_version 0 to 1" in r.stdout
    assert stored_version(ArchiveLayout(root)) == 1
    assert (root / "v0-backup" / recorded_study.name / "runs.parquet").is_file()

    # the same figures as the study itself, and as adding the study directory gives
    original = open_study(recorded_study).summary.set_index("experiment_index")
    migrated = query(root, "select experiment_index, mean, ci95_low, ratio_ci95_high, flags, hardware, batch_size "
                           "from summary where metric = 'energy_per_output_token_j' order by 1").set_index("experiment_index")
    assert migrated["mean"].tolist() == pytest.approx(original["energy_per_output_token_j_mean"].tolist())
    assert migrated["ratio_ci95_high"].tolist() == pytest.approx(original["energy_per_output_token_j_ratio_ci95_high"].tolist())
    assert migrated["flags"].tolist() == original["flags"].tolist()
    assert set(migrated["hardware"]) == {"NVIDIA H100 80GB HBM3"} and sorted(set(migrated["batch_size"])) == [1, 8]
    direct = tmp_path / "direct"
    add_studies([recorded_study], direct)
    cols = "run_id, status, batch_size, output_tokens_per_s, energy_j, swept_json"
    a = query(root, f"select {cols} from runs order by run_id")
    b = query(direct, f"select {cols} from runs order by run_id")
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    study = query(root, "select runner, partial, n_runs_done, identity_stripped from studies").iloc[0]
    assert study.runner == "unknown" and not study.partial and study.n_runs_done == 17 and study.identity_stripped

    r = llem("archive", "migrate", "--archive", str(root))
    assert r.returncode == 0 and "already at schema_version 1" in r.stdout


def test_an_interrupted_migration_is_re_run(recorded_study: Path, tmp_path: Path, monkeypatch):
    root = _v0_archive(recorded_study, tmp_path / "v0")
    import llenergymeasure.orchestrator.archive.migrate as m

    def fail_at_commit(*_a, **_k):
        raise OSError("disk full (test)")

    monkeypatch.setattr(m, "write_index", fail_at_commit)
    with pytest.raises(OSError):
        migrate(root)
    assert stored_version(ArchiveLayout(root)) == 0  # still version 0, with a v1 folder left beside it
    monkeypatch.undo()
    migrate(root)
    assert query(root, "select count(*) n from runs").n[0] == 18
    assert len(list((root / "studies").iterdir())) == 1


def test_newer_versions_and_non_archives_are_refused(tmp_path: Path):
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "archive.json").write_text(json.dumps({"format": "llenergymeasure-archive", "schema_version": 2,
                                                    "studies": {}}))
    r = llem("archive", "migrate", "--archive", str(newer))
    assert r.returncode == 2 and "newer than this llem's" in r.stderr
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not an llem archive"):
        migrate(tmp_path / "plain")
