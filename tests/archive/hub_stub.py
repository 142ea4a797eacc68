"""A local HTTP stub of the Hugging Face Hub endpoints llem's archive commands use, so
that push and remote reads run against something real (huggingface_hub's own HTTP client,
pointed here by HF_ENDPOINT) without the network.

It holds one dataset repository in memory. Writing (what `HfApi.create_repo` and
`create_commit` call): create the repo, ask each file's upload mode (always "regular", so
each file arrives base64 inside the commit's ndjson; the real Hub sends large files through
LFS/Xet, which this stub does not speak), commit. Reading (what `HfFileSystem` calls): repo
info at a revision, tree listings, paths-info, and file downloads from `resolve/<rev>/<path>`
with HTTP Range. What a commit uploaded is what reads return, so a test pushes and reads back.

A private repo answers 401 to any request without an Authorization header, as the Hub does
for private repos seen anonymously; `refuse_token` makes every request a 401."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO_ID = "llem-test/energy-archive"
REVISION = "main"
COMMIT_SHA = "a" * 40
COMMIT_DATE = "2026-05-01T12:00:00.000Z"


@dataclass
class HubState:
    """What the stub saw and holds; tests read it."""

    repo_id: str = REPO_ID
    private: bool = False
    refuse_token: bool = False
    exists: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    commits: list[list[dict]] = field(default_factory=list)
    authorised: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (file, Range header) of each download
    url: str = ""

    def dirs(self) -> set[str]:
        """Every folder some committed file lies under ("" is the root)."""
        out = {""}
        for path in self.files:
            parts = path.split("/")[:-1]
            out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return out

    def entry(self, path: str, expand: bool = False) -> dict | None:
        """A tree / paths-info entry as the Hub writes it, or None when nothing is there;
        `expand` adds the last commit (HfFileSystem.modified, which DuckDB asks, needs it)."""
        if path in self.files:
            data = self.files[path]
            out = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        elif path in self.dirs() and path:
            out = {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest()}
        else:
            return None
        if expand:
            out["lastCommit"] = {"id": COMMIT_SHA, "title": "llem archive", "date": COMMIT_DATE}
        return out

    def listing(self, folder: str, recursive: bool, expand: bool) -> list[dict]:
        prefix = folder + "/" if folder else ""
        paths = {p for p in self.files.keys() | self.dirs() if p and p.startswith(prefix)}
        if not recursive:
            paths = {p for p in paths if "/" not in p[len(prefix):]}
        return [e for p in sorted(paths) if (e := self.entry(p, expand)) is not None]


def _true(values: list[str] | None) -> bool:
    """A boolean query or form parameter as huggingface_hub sends it ("True"/"true")."""
    return bool(values) and values[0].lower() == "true"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    @property
    def state(self) -> HubState:
        return self.server.state

    # -- replies -------------------------------------------------------------------------

    def _reply(self, code: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _not_found(self, what: str, code: str = "EntryNotFound") -> None:
        self._reply(404, {"error": f"{what} not found"}, {"X-Error-Code": code})

    def _refused(self) -> bool:
        """401 for a refused token, or for a private repo asked anonymously (as the Hub)."""
        auth = self.headers.get("Authorization", "")
        self.state.authorised.append(auth)
        if self.state.refuse_token:
            self._reply(401, {"error": "Invalid credentials in Authorization header"})
            return True
        if self.state.private and not auth:
            self._reply(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return True
        return False

    # -- writing -------------------------------------------------------------------------

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = unquote(urlsplit(self.path).path)
        self.state.calls.append(("POST", path))
        api = f"/api/datasets/{self.state.repo_id}"
        if self._refused():
            return
        if path == "/api/repos/create":
            req = json.loads(body)
            assert req["type"] == "dataset", req
            self.state.exists = True
            self._reply(200, {"url": f"{self.state.url}/datasets/{req['organization']}/{req['name']}"})
        elif path == f"{api}/preupload/{REVISION}":
            files = json.loads(body)["files"]
            self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                        for f in files]})
        elif path == f"{api}/commit/{REVISION}":
            ops = [json.loads(line) for line in body.splitlines() if line.strip()]
            self.state.commits.append(ops)
            for op in ops:
                if op["key"] == "file":
                    self.state.files[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
            self._reply(200, {"commitUrl": f"{self.state.url}/datasets/{self.state.repo_id}/commit/abc123",
                              "commitOid": COMMIT_SHA})
        elif path == f"{api}/paths-info/{REVISION}" and self.state.exists:
            form = parse_qs(body.decode())
            expand = _true(form.get("expand"))
            entries = [e for p in form.get("paths", []) if (e := self.state.entry(p.strip("/"), expand)) is not None]
            self._reply(200, entries)
        else:
            self._not_found(path, "RepoNotFound" if path.startswith(api) or "/paths-info/" in path else "EntryNotFound")

    # -- reading -------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        self.state.calls.append((self.command, self.path))
        if self._refused():
            return
        repo = self.state.repo_id
        if not self.state.exists or not path.startswith((f"/api/datasets/{repo}", f"/datasets/{repo}/")):
            self._not_found(path, "RepoNotFound")
        elif path in (f"/api/datasets/{repo}", f"/api/datasets/{repo}/revision/{REVISION}"):
            self._reply(200, {"id": repo, "sha": COMMIT_SHA, "private": self.state.private,
                              "siblings": [{"rfilename": p} for p in sorted(self.state.files)]})
        elif m := re.fullmatch(rf"/api/datasets/{re.escape(repo)}/tree/{REVISION}(?:/(?P<p>.*))?", path):
            folder = (m.group("p") or "").strip("/")
            if folder and folder not in self.state.dirs():
                self._not_found(folder)
            else:
                self._reply(200, self.state.listing(folder, _true(query.get("recursive")), _true(query.get("expand"))))
        elif m := re.fullmatch(rf"/datasets/{re.escape(repo)}/resolve/{REVISION}/(?P<p>.+)", path):
            self._file(m.group("p"))
        else:
            self._not_found(path)

    def _file(self, rel: str) -> None:
        """A committed file, whole or the byte range asked for (206), as the Hub's resolve URLs."""
        data = self.state.files.get(rel)
        if data is None:
            self._not_found(rel)
            return
        code, start, end = 200, 0, len(data)
        self.state.ranges.append((rel, self.headers.get("Range", "")))
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, len(data)) if m.group(2) else len(data)
            if start >= len(data):
                self._reply(416, {"error": "range not satisfiable"}, {"Content-Range": f"bytes */{len(data)}"})
                return
            code = 206
        chunk = data[start:end]
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT_SHA)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(chunk)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState


@contextmanager
def running_hub(state: HubState | None = None) -> Iterator[HubState]:
    """The stub on a free local port for the duration of the block; its state (with `.url`)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = state or HubState()
    server.state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def hub_env(endpoint: str, tmp_path: Path, token: str | None) -> dict[str, str]:
    """An `llem` environment talking to the stub, with a private HOME and HF cache so that
    nothing can come from (or go to) a saved login; HF_TOKEN empty when `token` is None."""
    return {"HF_ENDPOINT": endpoint, "HF_TOKEN": token or "", "HOME": str(tmp_path / "home"),
            "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
