"""`llem archive push`: a real `llem` process uploading with huggingface_hub to a local
HTTP stub of the Hub endpoints it uses (tests/archive/hub_stub.py; HF_ENDPOINT points at
it, like the dataset fetch tests): create the dataset repo, ask the upload mode of each file (preupload), commit.
The stub answers "regular" for every file, so each arrives inside the commit itself
(base64 in the ndjson payload) and is compared byte for byte with the archive's; on the
real Hub large files go through LFS/Xet instead, which this stub does not speak.
The token is sent as the Authorization header and written nowhere."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from llenergymeasure.orchestrator.archive.add import add_studies
from llenergymeasure.orchestrator.archive.push import dataset_repo
from llenergymeasure.orchestrator.errors import UserError
from tests.archive.hub_stub import REPO_ID, HubState, hub_env
from tests.support.helpers import llem

TOKEN = "hf_llemStubPushToken0123456789abcdef"


def _env(endpoint: str, tmp_path: Path, token: str | None = TOKEN) -> dict[str, str]:
    return hub_env(endpoint, tmp_path, token)


def test_push_uploads_every_archived_file_in_one_commit(recorded_study: Path, tmp_path: Path, hub: HubState):
    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    r = llem("archive", "push", "--to", f"hf://datasets/{REPO_ID}", "--archive", str(archive), env=_env(hub.url, tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"pushed: {hub.url}/datasets/{REPO_ID}/commit/abc123" in r.stdout
    assert [c for c in hub.calls if c[0] == "POST"] == [
        ("POST", "/api/repos/create"), ("POST", f"/api/datasets/{REPO_ID}/preupload/main"),
        ("POST", f"/api/datasets/{REPO_ID}/commit/main")]
    assert set(hub.authorised) == {f"Bearer {TOKEN}"}
    (commit,) = hub.commits
    assert commit[0]["key"] == "header" and "llem archive: 1 study" in commit[0]["value"]["summary"]
    sent = {op["value"]["path"]: base64.b64decode(op["value"]["content"]) for op in commit if op["key"] == "file"}
    local = {str(p.relative_to(archive)): p.read_bytes() for p in archive.rglob("*")
             if p.is_file() and p.name != ".lock"}
    assert sent == local  # archive.json and every study file, byte for byte, at the same paths
    # the token went only into the request headers: nowhere on disk
    for root in (archive, tmp_path / "home", tmp_path / "hf-home"):
        for p in root.rglob("*") if root.exists() else []:
            if p.is_file():
                assert TOKEN.encode() not in p.read_bytes(), p
    assert TOKEN not in r.stdout + r.stderr


def test_push_without_a_token_exits_2_before_any_request(recorded_study: Path, tmp_path: Path, hub: HubState):
    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    before = hashlib.sha256((archive / "archive.json").read_bytes()).hexdigest()
    r = llem("archive", "push", "--to", f"hf://datasets/{REPO_ID}", "--archive", str(archive),
             env=_env(hub.url, tmp_path, token=None))
    assert r.returncode == 2 and "$HF_TOKEN" in r.stderr and "Traceback" not in r.stderr
    assert hub.calls == []
    assert hashlib.sha256((archive / "archive.json").read_bytes()).hexdigest() == before


def test_a_refused_token_exits_2(recorded_study: Path, tmp_path: Path, hub: HubState):
    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    hub.refuse_token = True
    r = llem("archive", "push", "--to", f"hf://datasets/{REPO_ID}", "--archive", str(archive), env=_env(hub.url, tmp_path))
    assert r.returncode == 2 and "refused the token" in r.stderr and TOKEN not in r.stderr


def test_the_target_must_be_a_hub_dataset():
    assert dataset_repo("hf://datasets/owner/name") == "owner/name"
    for bad in ("owner/name", "hf://owner/name", "hf://datasets/owner", "s3://bucket/x", "hf://models/o/n"):
        with pytest.raises(UserError, match="hf://datasets/OWNER/NAME"):
            dataset_repo(bad)
