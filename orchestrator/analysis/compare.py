"""`llem compare A B`: the same configurations in two studies side by side (a new
driver, image or machine), with the change and whether its 95% interval excludes
zero. Configurations are matched by their config hash, so only identical
experiment settings are compared; what differs in the environment is listed first
because it usually explains the differences."""

from __future__ import annotations

from pathlib import Path

from typing import Any

import pandas as pd

from llenergymeasure.orchestrator.analysis import stats
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.analysis.results import StudyResults, open_study

COMPARED = (
    "output_tokens_per_s",
    "energy_per_output_token_j",
    "avg_power_w",
    "ttft_ms_p50",
    "itl_ms_p50",
    "tpot_ms_p50",
    "e2e_ms_p50",
    "peak_memory_mb",
)
ENVIRONMENT = ("environment.gpus", "environment.gpu_driver", "environment.cpu_model", "environment.torch",
               "environment.transformers", "image_id", "tool_version", "tool_commit", "energy_source")


def _values(runs: pd.DataFrame, experiment_id: str, metric: str) -> list[float]:
    ok = runs[(runs["status"] == "done") & (runs["experiment_id"] == experiment_id)]
    if metric not in ok:
        return []
    return pd.to_numeric(ok[metric], errors="coerce").dropna().tolist()


def environment_differences(a: StudyResults, b: StudyResults) -> list[tuple[str, str, str]]:
    out = []
    for col in ENVIRONMENT:
        va = ", ".join(sorted({str(v) for v in a.runs.get(col, pd.Series(dtype=object)).dropna()}))
        vb = ", ".join(sorted({str(v) for v in b.runs.get(col, pd.Series(dtype=object)).dropna()}))
        if va != vb:
            out.append((col, va or "n/a", vb or "n/a"))
    return out


def compare(a: StudyResults, b: StudyResults) -> tuple[pd.DataFrame, list[str]]:
    """One row per (shared configuration, metric); and notes on what could not be matched."""
    ids_a = {e.id: e for e in a.manifest.experiments}
    ids_b = {e.id: e for e in b.manifest.experiments}
    shared = [i for i in ids_a if i in ids_b]
    if not shared:
        raise UserError(f"{a.study_dir} and {b.study_dir} share no configuration (same settings, same config "
                        "hash); compare studies of the same experiments")
    notes = []
    only_a = [ids_a[i].label for i in ids_a if i not in ids_b]
    only_b = [ids_b[i].label for i in ids_b if i not in ids_a]
    if only_a:
        notes.append(f"only in A ({a.study_dir.name}): " + "; ".join(only_a))
    if only_b:
        notes.append(f"only in B ({b.study_dir.name}): " + "; ".join(only_b))
    rows: list[dict[str, Any]] = []
    for i in shared:
        for m in COMPARED:
            va, vb = _values(a.runs, i, m), _values(b.runs, i, m)
            if not va and not vb:
                continue
            da, db = stats.describe(va), stats.describe(vb)
            diff = stats.difference(va, vb)
            rows.append({
                "experiment_id": i,
                "label": ids_a[i].label,
                "metric": m,
                "a_n": da.n, "a_mean": da.mean, "a_ci95_low": da.ci_low, "a_ci95_high": da.ci_high,
                "b_n": db.n, "b_mean": db.mean, "b_ci95_low": db.ci_low, "b_ci95_high": db.ci_high,
                "change": diff.estimate,
                "change_pct": 100 * diff.estimate / da.mean if diff.estimate is not None and da.mean else None,
                "change_ci95_low": diff.low,
                "change_ci95_high": diff.high,
                "ci_excludes_zero": diff.excludes(0.0),
            })
    return pd.DataFrame(rows), notes


def load_reproduction(results: StudyResults) -> tuple[pd.DataFrame, list[tuple[str, str, str]], Path] | None:
    """For the report of a reproduction (`llem reproduce`): its comparison table, the
    environment differences and the original study directory; None for other studies."""
    original = results.manifest.reproduces
    path = results.manifest.layout.reproduction
    if not original or not path.exists():
        return None
    try:
        diffs = environment_differences(open_study(Path(original)), results)
    except UserError:
        diffs = []
    return pd.read_parquet(path), diffs, Path(original)
