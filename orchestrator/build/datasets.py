"""`llem datasets fetch NAME`: install a built-in prompt set at its pinned revision.

Downloads the dataset's files from the Hugging Face Hub at the commit pinned in
`datasets/<name>.json` (or reads a local copy with `--from`), checks the prompts
against the pinned SHA-256, and writes JSONL with a provenance record into the
data directory. Nothing is written unless the content matches the pin.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.backends.prompts import BUILTIN_DATASETS, builtin_spec, installed_path, prompts_sha256
from llenergymeasure.orchestrator.errors import Failure, UserError

DATA_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
TIMEOUT_S = 60


class FetchError(Failure):
    """The download failed (network, hub); exit 1 with the message."""


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _get(url: str) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "llenergymeasure"})
    token = os.environ.get("HF_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise FetchError(f"cannot download {url}: {e}") from None


def _rows(name: str, data: bytes) -> list[dict[str, Any]]:
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode("utf-8")
    if name.endswith(".csv"):
        return list(csv.DictReader(io.StringIO(text)))
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    obj = json.loads(text)
    return obj if isinstance(obj, list) else [obj]


def _prompts_from_rows(rows: list[dict[str, Any]], text_field: str, where: str) -> list[str]:
    prompts = []
    for i, row in enumerate(rows, start=1):
        if row and all(str(k).startswith("_") for k in row):
            continue  # provenance record
        value = row.get(text_field, row.get("prompt"))
        if not isinstance(value, str):
            raise UserError(f"{where}: row {i} has no '{text_field}' or 'prompt' text field")
        prompts.append(value)
    return prompts


def _download(spec: dict[str, Any], notify: Notify) -> list[str]:
    src = spec["source"]
    base = f"{_endpoint()}/api/datasets/{src['repo_id']}/revision/{src['revision']}"
    info = json.loads(_get(base))
    files = sorted(
        s["rfilename"] for s in info.get("siblings", []) if s["rfilename"].endswith(DATA_SUFFIXES)
    )
    if not files:
        raise FetchError(f"{src['repo_id']}@{src['revision'][:8]} lists no data files")
    rows: list[dict[str, Any]] = []
    for f in files:
        url = f"{_endpoint()}/datasets/{src['repo_id']}/resolve/{src['revision']}/{f}"
        notify(f"downloading {f} from {src['repo_id']}@{src['revision'][:8]}")
        rows.extend(_rows(f, _get(url)))
    return _prompts_from_rows(rows, src["text_field"], src["repo_id"])


def fetch_dataset(
    name: str, source_file: Path | None = None, notify: Notify = print
) -> Path:
    if name not in BUILTIN_DATASETS or name == "synthetic":
        fetchable = [d for d in BUILTIN_DATASETS if d != "synthetic"]
        raise UserError(f"datasets fetch: '{name}' is not a fetchable dataset; choose one of: {', '.join(fetchable)}")
    spec = builtin_spec(name)
    if source_file is not None:
        if not source_file.is_file():
            raise UserError(f"--from: {source_file} is not a file")
        try:
            rows = _rows(source_file.name, source_file.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"--from: {source_file} cannot be parsed ({e})") from None
        prompts = _prompts_from_rows(rows, spec["source"]["text_field"], str(source_file))
    else:
        prompts = _download(spec, notify)

    digest = prompts_sha256(prompts)
    if len(prompts) != spec["n_prompts"] or digest != spec["prompts_sha256"]:
        raise FetchError(
            f"{name}: the prompts ({len(prompts)}, sha256 {digest[:12]}) do not match the pinned "
            f"revision ({spec['n_prompts']}, sha256 {spec['prompts_sha256'][:12]}); nothing was installed"
        )
    src = spec["source"]
    provenance = {
        "_provenance": src["repo_id"],
        "_commit": src["revision"],
        "_license": spec["license"],
        "_description": spec["description"],
        "_prompts_sha256": digest,
    }
    lines = [json.dumps(provenance, ensure_ascii=False)]
    lines += [json.dumps({"prompt": p}, ensure_ascii=False) for p in prompts]
    dest = installed_path(name)
    write_bytes_atomic(dest, ("\n".join(lines) + "\n").encode("utf-8"))
    return dest
