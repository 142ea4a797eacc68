"""`llem reproduce DIR`: re-run a locked publication study (same plan, pins, order
and seeds) and judge, per configuration and headline metric, whether the new
numbers are consistent with the original ones.

Verdict per row: "consistent" when the 95% interval of the change includes zero
or the change is within `tolerance` of the original mean (default 5%: differences
a reader would not act on); otherwise "different", with the size of the change.
Hardware and software differences are listed first: they explain most differences."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.orchestrator.analysis.compare import compare, environment_differences
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.layout import StudyLayout
from llenergymeasure.orchestrator.execution.manifest import open_study_manifest
from llenergymeasure.orchestrator.analysis.results import StudyResults

DEFAULT_TOLERANCE = 0.05


def verdicts(table: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    out = table.copy()

    def judge(r: pd.Series) -> str:
        if pd.isna(r["change"]):
            return "not comparable"
        within = r["a_mean"] not in (None, 0) and abs(r["change"]) <= tolerance * abs(r["a_mean"])
        if within or r["ci_excludes_zero"] is False:
            return "consistent"
        if r["ci_excludes_zero"] is None:
            return "not comparable"  # no interval on one side and beyond the tolerance
        return f"different ({r['change_pct']:+.1f}%)"

    out["verdict"] = [judge(r) for _, r in out.iterrows()] if len(out) else []
    out["tolerance"] = tolerance
    return out


def reproduction(original: StudyResults, new: StudyResults, tolerance: float = DEFAULT_TOLERANCE
                 ) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    table, _ = compare(original, new)
    return verdicts(table, tolerance), environment_differences(original, new)


def write_reproduction(study_dir: Path, table: pd.DataFrame) -> Path:
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    path = StudyLayout(study_dir).reproduction
    write_bytes_atomic(path, buf.getvalue())
    return path


def locked_study_file(study_dir: Path) -> Path:
    lock = open_study_manifest(study_dir).layout.study_lock
    if not lock.exists():
        raise UserError(f"{study_dir}: has no {lock.name}: only studies run with --publication "
                        "(execution.publication) are locked and can be reproduced")
    return lock
