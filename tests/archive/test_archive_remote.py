"""Reading an archive on a Hugging Face dataset (`--archive hf://datasets/OWNER/NAME`): real
`llem` processes push an archive to the local Hub stub (tests/archive/hub_stub.py, which
keeps what the commit uploaded) and read it back through huggingface_hub's fsspec
filesystem, which DuckDB reads the Parquet files through (HTTP Range requests on the
stub's resolve URLs). The rows must be those of the same query on the local archive.
s3:// and https:// archives go through DuckDB's httpfs extension, which needs the
network to install: not tested here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llenergymeasure.orchestrator.archive.add import add_studies
from tests.archive.hub_stub import REPO_ID, HubState, hub_env
from tests.support.helpers import llem

TOKEN = "hf_llemStubReadToken0123456789abcdef"
REMOTE = f"hf://datasets/{REPO_ID}"
QUERIES = (  # every view: summary, and runs joined to environment
    "select label, metric, mean, ci95_low, ci95_high, ratio from summary order by all",
    ("select r.run_id, r.status, r.energy_j, e.gpu_model from runs r join environment e "
     "using (study_id, environment_id) order by all"),
)

pytestmark = pytest.mark.slow  # real llem processes


@pytest.fixture(scope="module")
def archive(recorded_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remote") / "archive"
    add_studies([recorded_study], root)
    return root


def _seed(hub: HubState, archive: Path) -> None:
    """The stub holding `archive` as a push leaves it (for the error cases, without a push's process)."""
    hub.exists = True
    hub.files = {str(p.relative_to(archive)): p.read_bytes() for p in archive.rglob("*")
                 if p.is_file() and p.name != ".lock"}


def _json(*args: str, env: dict[str, str]) -> list[dict]:
    r = llem(*args, "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_pushed_archive_reads_back_the_same_rows(archive: Path, tmp_path: Path, hub: HubState):
    env = hub_env(hub.url, tmp_path, TOKEN)
    r = llem("archive", "push", "--to", REMOTE, "--archive", str(archive), env=env)
    assert r.returncode == 0, r.stderr
    pushed = len(hub.calls)
    for sql in QUERIES:
        remote = _json("archive", "query", sql, "--archive", REMOTE, env=env)
        assert remote == _json("archive", "query", sql, "--archive", str(archive), env=env) and remote, sql
    listed = _json("archive", "list", "--archive", REMOTE, env=env)
    assert listed == _json("archive", "list", "--archive", str(archive), env=env)
    assert [s["study_name"] for s in listed] == ["recorded-multi-backend"]
    # every byte came from the stub: the index, and each of the study's Parquet files in byte ranges
    downloaded = {f.rsplit("/", 1)[-1] for f, rng in hub.ranges if f == "archive.json" or rng.startswith("bytes=")}
    assert downloaded == {"archive.json", "studies.parquet", "runs.parquet", "summary.parquet", "environment.parquet"}
    assert not [c for c in hub.calls[pushed:] if c[0] == "POST" and "/paths-info/" not in c[1]]  # reads write nothing
    assert set(hub.authorised) == {f"Bearer {TOKEN}"}
    for root in (archive, tmp_path / "home", tmp_path / "hf-home"):  # the token went into headers only
        for p in root.rglob("*") if root.exists() else []:
            if p.is_file():
                assert TOKEN.encode() not in p.read_bytes(), p


def test_a_private_dataset_without_a_token_exits_2(archive: Path, tmp_path: Path, hub: HubState):
    _seed(hub, archive)
    hub.private = True
    r = llem("archive", "query", "select count(*) from runs", "--archive", REMOTE, env=hub_env(hub.url, tmp_path, None))
    assert r.returncode == 2, r.stderr
    assert f"--archive {REMOTE}: no such Hugging Face dataset, or it is private and $HF_TOKEN is unset" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = llem("archive", "query", "select count(*) as n from runs", "--archive", REMOTE, "--format", "json",
             env=hub_env(hub.url, tmp_path, TOKEN))
    assert r.returncode == 0 and json.loads(r.stdout) == [{"n": 18}], r.stderr


def test_a_refused_token_is_named_and_never_printed(archive: Path, tmp_path: Path, hub: HubState):
    _seed(hub, archive)
    hub.refuse_token = True
    r = llem("archive", "list", "--archive", REMOTE, env=hub_env(hub.url, tmp_path, TOKEN))
    assert r.returncode == 2 and "the Hub refused the token in $HF_TOKEN (HTTP 401)" in r.stderr, r.stderr
    assert TOKEN not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_a_missing_dataset_a_non_archive_or_a_lost_file_is_one_line(archive: Path, tmp_path: Path, hub: HubState):
    env = hub_env(hub.url, tmp_path, TOKEN)
    r = llem("archive", "list", "--archive", REMOTE, env=env)  # nothing pushed yet
    assert r.returncode == 2 and "no such Hugging Face dataset, or the token in $HF_TOKEN cannot read it" in r.stderr
    hub.exists, hub.files = True, {"README.md": b"# not an archive\n"}
    r = llem("archive", "list", "--archive", REMOTE, env=env)
    assert r.returncode == 2 and f"--archive {REMOTE}: not an llem archive (no archive.json there)" in r.stderr
    _seed(hub, archive)
    lost = next(p for p in hub.files if p.endswith("/runs.parquet"))
    del hub.files[lost]  # the index lists a file the dataset lacks: the Hub's fault, not the input's (exit 1)
    r = llem("archive", "list", "--archive", REMOTE, env=env)
    assert r.returncode == 1 and f"--archive {REMOTE}: cannot read the files its archive.json lists" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    hub.files = {"archive.json": json.dumps({"format": "llenergymeasure-archive", "schema_version": 99}).encode()}
    r = llem("archive", "list", "--archive", REMOTE, env=env)
    assert r.returncode == 2 and "archive schema_version 99 is newer than this llem's (1)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
