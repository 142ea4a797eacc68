"""Exporting tables: CSV and JSON carry every column of the frame (for tools);
Markdown carries the readable cells (for papers, issues and notebooks)."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return v


def to_csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


def to_json(df: pd.DataFrame) -> str:
    records = [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
    return json.dumps(records, indent=2)


def to_markdown(headers: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
