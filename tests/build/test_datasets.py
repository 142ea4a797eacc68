"""Prompt sets: synthetic, JSONL files, and fetching the pinned AIEnergyScore set."""

from __future__ import annotations

import csv
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llenergymeasure.backends.prompts import DatasetError, builtin_spec, installed_path, load_prompts, read_jsonl_prompts
from llenergymeasure.orchestrator.build.datasets import FetchError, fetch_dataset
from tests.support.helpers import llem, write


def test_synthetic_is_deterministic_and_seeded():
    a = load_prompts("synthetic", 5, 20, seed=1)
    assert a == load_prompts("synthetic", 5, 20, seed=1)
    assert a != load_prompts("synthetic", 5, 20, seed=2)
    assert len(a) == 5 and all(len(p.split()) >= 20 for p in a)


def test_jsonl_reports_bad_line_numbers(tmp_path):
    f = write(tmp_path / "p.jsonl", '{"_source": "x"}\n{"prompt": "a"}\n\n{"prompt": 3}\n')
    with pytest.raises(DatasetError, match=r"p.jsonl:4: needs a non-empty string field 'prompt'"):
        read_jsonl_prompts(f)
    write(f, '{"prompt": "a"}\nnot json\n')
    with pytest.raises(DatasetError, match=r"p.jsonl:2: not valid JSON"):
        read_jsonl_prompts(f)
    f.write_bytes(b'{"prompt": "a"}\n{"prompt": "b"}\n\xff\xfe{"prompt": "c"}\n')
    with pytest.raises(DatasetError, match=r"p.jsonl:3: not UTF-8 text"):
        read_jsonl_prompts(f)
    with pytest.raises(DatasetError, match=r"cannot be read"):
        read_jsonl_prompts(tmp_path)  # a directory


def test_jsonl_skips_metadata_and_limits_count(tmp_path):
    f = write(tmp_path / "p.jsonl", '{"_provenance": "me"}\n{"prompt": "a"}\n{"prompt": "b"}\n')
    assert load_prompts(str(f), 2, 8, seed=0) == ["a", "b"]
    with pytest.raises(DatasetError, match="n_prompts: 3 requested but .* has only 2"):
        load_prompts(str(f), 3, 8, seed=0)


def test_missing_builtin_names_the_fetch_command():
    assert not installed_path("aienergyscore").exists()
    with pytest.raises(DatasetError, match="llem datasets fetch aienergyscore"):
        load_prompts("aienergyscore", 2, 8, seed=0)


def test_fetch_from_local_copy_verifies_the_pin(shared_aienergyscore, tmp_path, monkeypatch):
    monkeypatch.setenv("LLEM_DATA_DIR", str(tmp_path / "data"))
    dest = fetch_dataset("aienergyscore", shared_aienergyscore, notify=lambda m: None)
    lines = dest.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["_commit"] == builtin_spec("aienergyscore")["source"]["revision"]
    assert len(lines) == 1001
    assert load_prompts("aienergyscore", 3, 8, seed=0) == [json.loads(x)["prompt"] for x in lines[1:4]]

    # a copy whose prompts differ from the pinned revision installs nothing
    tampered = tmp_path / "tampered.jsonl"
    text = shared_aienergyscore.read_text().splitlines()
    text[5] = json.dumps({"prompt": "changed"})
    write(tampered, "\n".join(text) + "\n")
    dest.unlink()
    with pytest.raises(FetchError, match="do not match the pinned revision"):
        fetch_dataset("aienergyscore", tampered, notify=lambda m: None)
    assert not dest.exists()


class _Hub(BaseHTTPRequestHandler):
    """A local HTTP server answering the two Hub endpoints the fetcher uses."""

    files: dict[str, bytes] = {}
    revision = ""

    def do_GET(self) -> None:  # noqa: N802
        rev = self.revision
        if self.path == f"/api/datasets/AIEnergyScore/text_generation/revision/{rev}":
            body = json.dumps({"siblings": [{"rfilename": n} for n in [*self.files, "README.md"]]}).encode()
        elif self.path.startswith(f"/datasets/AIEnergyScore/text_generation/resolve/{rev}/"):
            body = self.files.get(self.path.rsplit("/", 1)[1], b"")
            if not body:
                self.send_error(404)
                return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_fetch_downloads_pinned_revision_over_http(shared_aienergyscore, tmp_path):
    prompts = read_jsonl_prompts(shared_aienergyscore)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["text"])
    w.writeheader()
    w.writerows({"text": p} for p in prompts)
    _Hub.files = {"text_generation.csv": buf.getvalue().encode()}
    _Hub.revision = builtin_spec("aienergyscore")["source"]["revision"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "LLEM_DATA_DIR": str(tmp_path)}
        r = llem("datasets", "fetch", "aienergyscore", env=env)
        assert r.returncode == 0, r.stderr
        assert "downloading text_generation.csv" in r.stderr
        installed = tmp_path / "aienergyscore-text-generation.jsonl"
        assert read_jsonl_prompts(installed) == prompts

        _Hub.files = {"text_generation.csv": b"text\nonly one prompt\n"}
        installed.unlink()
        r = llem("datasets", "fetch", "aienergyscore", env=env)
        assert r.returncode == 1 and "do not match the pinned revision" in r.stderr
        assert not installed.exists()
    finally:
        server.shutdown()


def test_fetch_without_network_fails_cleanly(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "LLEM_DATA_DIR": str(tmp_path)}
    r = llem("datasets", "fetch", "aienergyscore", env=env)
    assert r.returncode == 1 and "cannot download" in r.stderr and "Traceback" not in r.stderr
    r = llem("datasets", "fetch", "nope", env=env)
    assert r.returncode == 2 and "not a fetchable dataset" in r.stderr
