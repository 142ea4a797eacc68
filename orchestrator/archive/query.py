"""Reading an archive with DuckDB (embedded: no server): `llem archive query`,
`llem archive list` and the library's `archive.open(PATH)`.

The views `studies`, `runs`, `summary` and `environment` read exactly the files the
index (archive.json) lists, so a half-finished add is never seen.

A remote archive is read where it lies, nothing copied first:
- `hf://datasets/OWNER/NAME` (what `llem archive push` writes) through huggingface_hub's
  fsspec filesystem (`HfFileSystem`), registered on the DuckDB connection, so DuckDB's
  `read_parquet` fetches byte ranges over HTTP through it. huggingface_hub is already a
  dependency and this needs no DuckDB extension; `HF_ENDPOINT` picks the Hub (the tests'
  local stub) and a private dataset needs `$HF_TOKEN` (read from the environment only:
  never a saved login, never written).
- `s3://`, `gs://`, `https://`, ... through DuckDB's own httpfs extension, which DuckDB
  downloads on first use (network needed; s3fs, fsspec's S3 filesystem, is not a
  dependency). See the README.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from llenergymeasure.backends.secrets import redact

from llenergymeasure.orchestrator.archive.layout import (
    INDEX_FILE, checked_format, existing_archive, is_remote, load_index, schema_version_of, validated_index,
    version_problem,
)
from llenergymeasure.orchestrator.archive.schema import TABLES, ArchiveIndex, arrow_schema
from llenergymeasure.orchestrator.errors import Failure, UserError

LIST_SQL = """
select s.study_id, s.study_name, s.created_at,
       case when s.partial then 'partial' else s.status end as status,
       s.publication, string_agg(distinct e.hardware, '; ') as hardware,
       (select string_agg(distinct r.model, ', ') from runs r where r.study_id = s.study_id) as models,
       s.n_experiments, s.n_runs_done, s.n_runs_planned
from studies s left join environment e using (study_id)
group by all
order by s.created_at, s.study_id
"""


def _quote(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def _files(root: str, index: ArchiveIndex) -> dict[str, tuple[list[str], bool]]:
    """table -> (its files, whether they differ in columns: a metric added since some were written)."""
    out: dict[str, tuple[list[str], set[str]]] = {t: ([], set()) for t in TABLES}
    for entry in sorted(index.studies.values(), key=lambda e: e.dir):
        for table, f in entry.files.items():
            out[table][0].append(f"{root.rstrip('/')}/{entry.dir}/{table}.parquet")
            out[table][1].add(f.columns_sha256)
    return {t: (paths, len(kinds) > 1) for t, (paths, kinds) in out.items()}


def _create_views(con: duckdb.DuckDBPyConnection, files: dict[str, tuple[list[str], bool]]) -> None:
    for table, (paths, mixed) in files.items():
        if paths:  # union by name only where needed: it reads every file's schema first
            listed = ", ".join(_quote(p) for p in paths)
            con.execute(f"create or replace view {table} as select * from "
                        f"read_parquet([{listed}], union_by_name = {'true' if mixed else 'false'})")
        else:  # an empty archive: the same columns, no rows
            empty = pa.Table.from_pylist([], schema=arrow_schema(TABLES[table]))
            con.register(f"_{table}_empty", empty)
            con.execute(f"create or replace view {table} as select * from _{table}_empty")


TOKEN_ENV = "HF_TOKEN"
_NO_HTTPFS = ("DuckDB reads s3:// and https:// archives with its httpfs extension, which it downloads on "
              "first use: give it network access once (or `INSTALL httpfs` from a machine that has it); "
              "reading them through fsspec instead would need s3fs, which llem does not depend on")


def _reason(e: BaseException) -> str:
    """An exception as one line, any secret in it redacted (libraries echo URLs and headers)."""
    lines = redact(str(e)).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _hf_filesystem() -> Any:
    """huggingface_hub's fsspec filesystem for hf:// paths: the token from $HF_TOKEN only
    (False, not None, when unset: None would fall back to a saved login), a fresh instance
    (fsspec caches instances, and a cached listing would hide a push made since)."""
    from huggingface_hub import HfFileSystem

    token = os.environ.get(TOKEN_ENV, "").strip()
    return HfFileSystem(token=token or False, skip_instance_cache=True)


def _hf_failure(root: str, e: Exception) -> Exception:
    """A one-line reason for a failed read of an hf:// archive: UserError (exit 2) where the
    path or the token is wrong, Failure (exit 1) where the Hub or the network is."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    cause = e.__cause__ if isinstance(e, FileNotFoundError) else e
    status = getattr(getattr(cause, "response", None), "status_code", None)
    has_token = bool(os.environ.get(TOKEN_ENV, "").strip())
    if isinstance(cause, RepositoryNotFoundError) or (status == 401 and not has_token):
        why = ("the token in $HF_TOKEN cannot read it" if has_token else
               f"it is private and ${TOKEN_ENV} is unset (export a token with read access)")
        return UserError(f"--archive {root}: no such Hugging Face dataset, or {why}")
    if status in (401, 403):
        return UserError(f"--archive {root}: the Hub refused the token in ${TOKEN_ENV} (HTTP {status}); "
                         "give a token with read access to the dataset")
    if isinstance(e, FileNotFoundError):
        return UserError(f"--archive {root}: not an llem archive (no {INDEX_FILE} there); "
                         "`llem archive push` writes one")
    http = f"HTTP {status}, " if isinstance(e, HfHubHTTPError) and status else ""
    return Failure(f"--archive {root}: cannot read it from the Hub ({http}{_reason(e)})")


def _checked_index(root: str, text: str | bytes) -> ArchiveIndex:
    """The index of a remote archive, refused (exit 2) unless it is one of this llem's schema
    version (the same checks as a local one: layout.py)."""
    where = f"--archive {root}"
    try:
        raw = json.loads(text)
    except ValueError:
        raw = None
    raw = checked_format(raw, f"{where}: its {INDEX_FILE}")
    problem = version_problem(schema_version_of(raw, where), where,
                              "`llem archive migrate` a local copy and push it again")
    if problem:
        raise UserError(problem)
    return validated_index(raw, where)


def _hf_index(con: duckdb.DuckDBPyConnection, root: str) -> ArchiveIndex:
    """archive.json of an hf:// archive, read through HfFileSystem, which is then registered
    on `con` so that the views' hf:// Parquet paths are read through it too."""
    fs = _hf_filesystem()
    try:
        text = fs.cat_file(f"{root}/{INDEX_FILE}")
    except Exception as e:  # noqa: BLE001 - the Hub, the network or the path: sorted by _hf_failure
        raise _hf_failure(root, e) from None
    index = _checked_index(root, text)
    con.register_filesystem(fs)
    return index


def _httpfs_index(con: duckdb.DuckDBPyConnection, root: str) -> ArchiveIndex:
    """archive.json of an s3://, https://, ... archive, read by DuckDB's httpfs extension."""
    try:
        text = con.execute("select content from read_text(?)", [f"{root}/{INDEX_FILE}"]).fetchone()[0]
    except duckdb.Error as e:
        hint = f"; {_NO_HTTPFS}" if "httpfs" in str(e) else ""
        raise Failure(f"--archive {root}: cannot read its {INDEX_FILE} through DuckDB ({_reason(e)}){hint}") from None
    return _checked_index(root, text)


def open_archive(path: str | Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the archive's four views."""
    con = duckdb.connect()
    con.execute("set parquet_metadata_cache = true")  # many small files: read each footer once per connection
    if path is not None and is_remote(path):
        root = str(path).rstrip("/")
        index = _hf_index(con, root) if root.startswith("hf://") else _httpfs_index(con, root)
        try:  # the views read each file's footer now: the network can fail here too
            _create_views(con, _files(root, index))
        except duckdb.Error as e:
            raise Failure(f"--archive {root}: cannot read the files its {INDEX_FILE} lists "
                          f"({_reason(e)})") from None
        return con
    layout = existing_archive(path)
    _create_views(con, _files(str(layout.root), load_index(layout)))
    return con


def query(path: str | Path | None, sql: str) -> pd.DataFrame:
    """The result of `sql` over the archive; UserError (exit 2) with DuckDB's message on a bad query."""
    con = open_archive(path)
    try:
        return con.execute(sql).df()
    except duckdb.Error as e:
        raise UserError(f"query: {e}") from None
    finally:
        con.close()


def list_studies(path: str | Path | None) -> pd.DataFrame:
    return query(path, LIST_SQL)


def cell(v: Any) -> str:
    """A value as a table cell: numbers to 4 significant digits, missing as empty."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
