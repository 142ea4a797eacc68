"""The results archive: many studies in one directory of Parquet files (one set per
study, a versioned schema in schema.py), queried with DuckDB, pushed to a Hugging Face
dataset, and read by a static explorer (site.py).

    import llenergymeasure.orchestrator.archive as archive
    con = archive.open("~/.local/share/llenergymeasure/archive")   # DuckDB connection
    con.sql("select * from summary where metric = 'energy_per_output_token_j'").df()

Layer: above publication and analysis (it reads finished study directories through
them), below the entry points (`llem archive ...`, `llem site`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open(path: str | Path | None = None) -> Any:  # noqa: A001  (the library's name for it: archive.open)
    """A DuckDB connection with the views `studies`, `runs`, `summary` and `environment`
    over the archive at `path` (default: the user's archive); UserError when it is not one."""
    from llenergymeasure.orchestrator.archive.query import open_archive

    return open_archive(path)
