"""Opening a finished (or partly finished) study directory for analysis: the
manifest, one row per run and the summary, recomputed from the run directories
so that `llem results`/`report`/`compare` always agree with what is on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from llenergymeasure.orchestrator.study.analysis_section import Costs
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import MANIFEST_FILE, Manifest
from llenergymeasure.orchestrator.analysis.energy_columns import energy_published
from llenergymeasure.orchestrator.analysis.summary import summarise
from llenergymeasure.orchestrator.analysis.tables import run_rows


@dataclass
class StudyResults:
    study_dir: Path
    manifest: Manifest
    runs: pd.DataFrame
    summary: pd.DataFrame
    reference_index: int
    costs: Costs
    cost_sources: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.manifest.data.get("study_name", self.study_dir.name))


def analysis_settings(manifest: Manifest) -> tuple[int, Costs, dict[str, str]]:
    a = manifest.data.get("analysis") or {}
    return int(a.get("reference_index", 1)), Costs.model_validate(a.get("costs") or {}), dict(a.get("cost_sources") or {})


def open_study(path: Path, reference: int | None = None) -> StudyResults:
    """Load DIR as a study directory; UserError (exit 2) when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; give a study directory created by `llem run` "
                        "(e.g. results/<study>_<timestamp>)")
    if not (path / MANIFEST_FILE).is_file():
        raise UserError(f"{path}: not a study directory (no {MANIFEST_FILE}); give a directory created by "
                        "`llem run` (e.g. results/<study>_<timestamp>)")
    try:
        manifest = Manifest.load(path)
        experiments: list[dict[str, Any]] = manifest.experiments
        _ = manifest.data["runs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path / MANIFEST_FILE}: unreadable or damaged manifest ({type(e).__name__}: {e})") from None
    ref, costs, sources = analysis_settings(manifest)
    if reference is not None:
        if not 1 <= reference <= len(experiments):
            raise UserError(f"--reference: experiment {reference} does not exist; use 1 to {len(experiments)}")
        ref = reference
    runs = pd.DataFrame(run_rows(manifest))
    summary = summarise(runs, experiments, ref, costs, include_energy=energy_published(manifest.data))
    return StudyResults(path, manifest, runs, summary, ref, costs, sources)


def study_file_text(results: StudyResults) -> str | None:
    name = results.manifest.data.get("study_file")
    try:
        return (results.study_dir / name).read_text(encoding="utf-8") if name else None
    except OSError:
        return None
