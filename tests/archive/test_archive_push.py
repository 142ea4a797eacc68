"""`llem archive push`: a real `llem` process uploading with huggingface_hub to a local
HTTP stub of the Hub endpoints it uses (HF_ENDPOINT points at it, like the dataset fetch
tests): create the dataset repo, ask the upload mode of each file (preupload), commit.
The stub answers "regular" for every file, so each arrives inside the commit itself
(base64 in the ndjson payload) and is compared byte for byte with the archive's; on the
real Hub large files go through LFS/Xet instead, which this stub does not speak.
The token is sent as the Authorization header and written nowhere."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llenergymeasure.orchestrator.archive.add import add_studies
from llenergymeasure.orchestrator.archive.push import dataset_repo
from llenergymeasure.orchestrator.errors import UserError
from tests.support.helpers import llem

TOKEN = "hf_llemStubPushToken0123456789abcdef"
REPO_ID = "llem-test/energy-archive"


class _Hub(BaseHTTPRequestHandler):
    """The three Hub endpoints `HfApi.create_repo` + `create_commit` call."""

    calls: list[tuple[str, str]] = []
    commits: list[list[dict]] = []
    authorised: list[str] = []
    refuse_token = False

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        type(self).calls.append(("POST", path))
        type(self).authorised.append(self.headers.get("Authorization", ""))
        if self.refuse_token:
            self._reply(401, {"error": "Invalid credentials in Authorization header"})
        elif path == "/api/repos/create":
            req = json.loads(body)
            assert req["type"] == "dataset", req
            self._reply(200, {"url": f"http://{self.headers['Host']}/datasets/{req['organization']}/{req['name']}"})
        elif path == f"/api/datasets/{REPO_ID}/preupload/main":
            files = json.loads(body)["files"]
            self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                        for f in files]})
        elif path == f"/api/datasets/{REPO_ID}/commit/main":
            type(self).commits.append([json.loads(line) for line in body.splitlines() if line.strip()])
            self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/datasets/{REPO_ID}/commit/abc123",
                              "commitOid": "a" * 40})
        else:
            self._reply(404, {"error": f"not stubbed: {path}"})

    def do_GET(self) -> None:  # noqa: N802
        type(self).calls.append(("GET", self.path))
        self._reply(404, {"error": f"not stubbed: {self.path}"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub():
    _Hub.calls, _Hub.commits, _Hub.authorised, _Hub.refuse_token = [], [], [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _env(endpoint: str, tmp_path: Path, token: str | None = TOKEN) -> dict[str, str]:
    """A private HOME and HF cache, so that nothing can come from (or go to) a saved login."""
    return {"HF_ENDPOINT": endpoint, "HF_TOKEN": token or "", "HOME": str(tmp_path / "home"),
            "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_push_uploads_every_archived_file_in_one_commit(recorded_study: Path, tmp_path: Path, hub: str):
    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    r = llem("archive", "push", "--to", f"hf://datasets/{REPO_ID}", "--archive", str(archive), env=_env(hub, tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"pushed: {hub}/datasets/{REPO_ID}/commit/abc123" in r.stdout
    assert [c for c in _Hub.calls if c[0] == "POST"] == [
        ("POST", "/api/repos/create"), ("POST", f"/api/datasets/{REPO_ID}/preupload/main"),
        ("POST", f"/api/datasets/{REPO_ID}/commit/main")]
    assert set(_Hub.authorised) == {f"Bearer {TOKEN}"}
    (commit,) = _Hub.commits
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


def test_push_without_a_token_exits_2_before_any_request(recorded_study: Path, tmp_path: Path, hub: str):
    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    before = hashlib.sha256((archive / "archive.json").read_bytes()).hexdigest()
    r = llem("archive", "push", "--to", f"hf://datasets/{REPO_ID}", "--archive", str(archive),
             env=_env(hub, tmp_path, token=None))
    assert r.returncode == 2 and "$HF_TOKEN" in r.stderr and "Traceback" not in r.stderr
    assert _Hub.calls == []
    assert hashlib.sha256((archive / "archive.json").read_bytes()).hexdigest() == before


def test_a_refused_token_exits_2(recorded_study: Path, tmp_path: Path, hub: str):
    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    _Hub.refuse_token = True
    r = llem("archive", "push", "--to", f"hf://datasets/{REPO_ID}", "--archive", str(archive), env=_env(hub, tmp_path))
    assert r.returncode == 2 and "refused the token" in r.stderr and TOKEN not in r.stderr


def test_the_target_must_be_a_hub_dataset():
    assert dataset_repo("hf://datasets/owner/name") == "owner/name"
    for bad in ("owner/name", "hf://owner/name", "hf://datasets/owner", "s3://bucket/x", "hf://models/o/n"):
        with pytest.raises(UserError, match="hf://datasets/OWNER/NAME"):
            dataset_repo(bad)
