"""Identity stripped by default: every archived file, scanned for this machine's host
name, user name and home path and for the host, user and GPU UUID planted in the study
(tests/archive/archive_support.py); `--keep-identity` keeps them."""

from __future__ import annotations

import getpass
import re
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.orchestrator.archive.add import add_studies
from llenergymeasure.orchestrator.archive.identity import LONG_ENOUGH, Scrubber
from llenergymeasure.orchestrator.archive.query import query
from tests.archive.archive_support import PLANTED_HOST, PLANTED_UUID, PLANTED_USER

SECRET = "hf_llemPlantedSecretToken1234567890"


def _names() -> list[str]:
    return [socket.gethostname(), getpass.getuser(), str(Path.home()), PLANTED_HOST, PLANTED_USER, PLANTED_UUID,
            f"/home/{PLANTED_USER}", SECRET]


def _found(text: str, name: str) -> bool:
    """Long names anywhere; short ones (a host called `vm`) as whole words, as the scrubber replaces them."""
    if len(name) >= LONG_ENOUGH:
        return name in text
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text) is not None


def _cells(path: Path) -> str:
    table = pq.read_table(path)
    return "\n".join(str(v) for col in table.columns for v in col.to_pylist() if v is not None)


def test_no_archived_file_names_the_host_the_user_or_their_home(recorded_study: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    files = [p for p in archive.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for path in files:
        raw = path.read_bytes()
        text = _cells(path) if path.suffix == ".parquet" else raw.decode()
        for name in _names():
            if len(name) >= 4:  # a short name's bytes can occur by chance in binary data
                assert name.encode() not in raw, (path.name, name)
            assert not _found(text, name), (path.name, name)
    # the planted names were there and were replaced, not just absent
    err = query(archive, "select error from runs where status = 'failed'").error[0]
    assert err.count("<host>") >= 2 and "<user>" in err and "~/.cache/llem/x.log" in err and "GPU-<redacted>" in err
    env = query(archive, "select hostname, env_json, gpu_uuids from environment")
    assert env.hostname.isna().all() and env.env_json.isna().all() and env.gpu_uuids.isna().all()
    assert query(archive, "select identity_stripped from studies").identity_stripped[0]


def test_keep_identity_keeps_them(recorded_study: Path, tmp_path: Path):
    archive = tmp_path / "archive"
    add_studies([recorded_study], archive, keep_identity=True)
    env = query(archive, "select hostname, env_json, gpu_uuids from environment order by hostname")
    assert PLANTED_HOST in env.hostname.tolist() and PLANTED_UUID in env.gpu_uuids[0]
    assert "SLURMD_NODENAME" in env.env_json[0]
    err = query(archive, "select error from runs where status = 'failed'").error[0]
    assert PLANTED_HOST in err and str(Path.home()) in err
    assert not query(archive, "select identity_stripped from studies").identity_stripped[0]


@pytest.mark.parametrize("text, expected", [
    ("/root/.cache/x and /home/ann/m", "~/.cache/x and ~/m"),
    ("llvm on vm, not vm2", "llvm on <host>, not vm2"),
    ("run on node-17.cluster by ann", "run on <host>.cluster by <user>"),
    ("GPU-12345678-1234-1234-1234-123456789abc and MIG-12345678-1234-1234-1234-123456789abc",
     "GPU-<redacted> and MIG-<redacted>"),
    ("/tmp/pytest-of-ann/x", "/tmp/pytest-of-<user>/x"),
    ("/opt/root/x", "/opt/root/x"),  # not a home directory
])
def test_the_scrubber(text: str, expected: str):
    s = Scrubber(hosts=["vm", "node-17"], users=[], homes=["/root"])
    s.learn(texts=["/home/ann/models"])
    assert s.text(text) == expected
    assert Scrubber(hosts=["vm"], keep=True).text(text) == text


def test_secrets_go_even_with_keep_identity(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert Scrubber(keep=True).text(f"token {SECRET} on vm") == "token <redacted> on vm"
