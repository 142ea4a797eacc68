"""Opening a finished (or partly finished) study directory for analysis: the
manifest, one row per run and the summary, recomputed from the run directories
so that `llem results`/`report`/`compare` always agree with what is on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from llenergymeasure.orchestrator.study.analysis_section import Costs
from llenergymeasure.orchestrator.study.precision import AUTO, DEFAULT_TARGET_CI_PCT
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest, open_study_manifest
from llenergymeasure.orchestrator.analysis.agreement import output_agreement
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
        return self.manifest.study_name


def analysis_settings(manifest: Manifest) -> tuple[int, Costs, dict[str, str]]:
    a = manifest.analysis
    return a.reference_index, Costs.model_validate(a.costs), dict(a.cost_sources)


def auto_target(manifest: Manifest) -> float | None:
    """execution.target_ci_pct of an n_cycles: auto study (None otherwise)."""
    ex = manifest.execution
    return float(ex.get("target_ci_pct", DEFAULT_TARGET_CI_PCT)) if ex.get("n_cycles") == AUTO else None


def open_study(path: str | Path, reference: int | None = None) -> StudyResults:
    """Load DIR as a study directory; UserError (exit 2) when it is not one."""
    path = Path(path)  # the library is called with strings too (llem.open_study("results/..."))
    manifest = open_study_manifest(path)
    experiments = [e.model_dump() for e in manifest.experiments]
    ref, costs, sources = analysis_settings(manifest)
    if reference is not None:
        if not 1 <= reference <= len(experiments):
            raise UserError(f"--reference: experiment {reference} does not exist; use 1 to {len(experiments)}")
        ref = reference
    runs = pd.DataFrame(run_rows(manifest))
    summary = summarise(runs, experiments, ref, costs, include_energy=energy_published(manifest),
                        max_cv=manifest.analysis.max_cv, agreement=output_agreement(manifest, ref),
                        ci_target_pct=auto_target(manifest))
    return StudyResults(path, manifest, runs, summary, ref, costs, sources)


def study_file_text(results: StudyResults) -> str | None:
    try:
        return results.manifest.layout.study_file(results.manifest.study_file).read_text(encoding="utf-8")
    except OSError:
        return None
