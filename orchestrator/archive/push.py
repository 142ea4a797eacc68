"""`llem archive push --to hf://datasets/OWNER/NAME`: the archive's files uploaded to
a Hugging Face dataset (opt-in: nothing leaves the machine otherwise), in one commit.

The token comes from $HF_TOKEN only (never a saved login, never written anywhere); without
it the push exits 2 before anything is read. What is uploaded is exactly what the index
lists: archive.json and each study's four Parquet files, at the same paths, so the
dataset is itself an archive (`llem archive query --archive hf://datasets/OWNER/NAME`,
read back through huggingface_hub's fsspec filesystem: archive/query.py). Files already there with the same content are skipped by the Hub.
`HF_ENDPOINT` points huggingface_hub at another Hub (the tests' local stub).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llenergymeasure.backends.secrets import redact
from llenergymeasure.orchestrator.archive.layout import INDEX_FILE, existing_archive, load_index, locked
from llenergymeasure.orchestrator.errors import Failure, UserError

TOKEN_ENV = "HF_TOKEN"
_TARGET = re.compile(r"^hf://datasets/(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)/?$")


def dataset_repo(to: str) -> str:
    """OWNER/NAME of `hf://datasets/OWNER/NAME`; UserError naming the form otherwise."""
    m = _TARGET.match(to)
    if not m:
        raise UserError(f"--to {to}: give a Hugging Face dataset as hf://datasets/OWNER/NAME")
    return m.group("repo")


def push(archive: Path | None, to: str, private: bool = False) -> str:
    """Upload the archive to `to`; the commit's URL."""
    repo = dataset_repo(to)
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UserError(f"push needs a Hugging Face token with write access in ${TOKEN_ENV} "
                        "(it is read from the environment only, never saved)")
    layout = existing_archive(archive)
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with locked(layout):  # no add may change the files while they are read
        index = load_index(layout)
        if not index.studies:
            raise UserError(f"{layout.root}: the archive holds no study yet; nothing to push")
        ops = [CommitOperationAdd(path_in_repo=INDEX_FILE, path_or_fileobj=layout.index.read_bytes())]
        for entry in index.studies.values():
            for table in entry.files:
                rel = f"{entry.dir}/{table}.parquet"
                ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=(layout.root / rel).read_bytes()))
        api = HfApi(token=token)
        try:
            api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            info = api.create_commit(repo, ops, repo_type="dataset",
                                     commit_message=f"llem archive: {len(index.studies)} study(ies)")
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", None)
            if status in (401, 403):
                raise UserError(f"push to {to}: the Hub refused the token in ${TOKEN_ENV} (HTTP {status}); "
                                "give a token with write access to the dataset") from None
            raise Failure(f"push to {to} failed: {redact(str(e))}") from None
        except Exception as e:  # noqa: BLE001 - the network or the Hub: not the user's input
            raise Failure(f"push to {to} failed ({type(e).__name__}: {redact(str(e))})") from None
    return str(info.commit_url)
