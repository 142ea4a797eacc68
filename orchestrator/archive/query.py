"""Reading an archive with DuckDB (embedded: no server): `llem archive query`,
`llem archive list` and the library's `archive.open(PATH)`.

The views `studies`, `runs`, `summary` and `environment` read exactly the files the
index (archive.json) lists, so a half-finished add is never seen. A remote archive
(`hf://datasets/OWNER/NAME`, `s3://bucket/prefix`, `https://...`) is read through
DuckDB's own httpfs extension, which DuckDB installs on first use (network needed);
see the README.
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

from llenergymeasure.orchestrator.archive.layout import INDEX_FILE, existing_archive, is_remote, load_index
from llenergymeasure.orchestrator.archive.schema import FORMAT, SCHEMA_VERSION, TABLES, ArchiveIndex, arrow_schema
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


def _remote_secret(con: duckdb.DuckDBPyConnection, root: str) -> None:
    """A private Hugging Face dataset: $HF_TOKEN as a temporary DuckDB secret (in memory only,
    as push reads it: from the environment, written nowhere)."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if root.startswith("hf://") and token:
        con.execute(f"create or replace temporary secret llem_hf (type huggingface, token {_quote(token)})")


def _remote_index(con: duckdb.DuckDBPyConnection, root: str) -> ArchiveIndex:
    try:
        text = con.execute("select content from read_text(?)", [f"{root.rstrip('/')}/{INDEX_FILE}"]).fetchone()[0]
    except duckdb.Error as e:
        raise Failure(f"{root}: cannot read its {INDEX_FILE} through DuckDB ({redact(str(e))})") from None
    raw = json.loads(text)
    if raw.get("format") != FORMAT or raw.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{root}: not an llem archive of schema_version {SCHEMA_VERSION}")
    return ArchiveIndex.model_validate(raw)


def open_archive(path: str | Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the archive's four views."""
    con = duckdb.connect()
    con.execute("set parquet_metadata_cache = true")  # many small files: read each footer once per connection
    if path is not None and is_remote(path):
        _remote_secret(con, str(path))
        index, root = _remote_index(con, str(path)), str(path)
    else:
        layout = existing_archive(path)
        index, root = load_index(layout), str(layout.root)
    _create_views(con, _files(root, index))
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
