"""`runs.parquet`: one flat row per run, loadable with one `pandas.read_parquet`.

Config columns keep their dotted names (`pytorch.batch_size`); metric columns
keep theirs (`output_tokens_per_s`). Failed and unfinished runs have rows too,
with `status` saying so and null metrics.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.backends.contract import SCHEMA_VERSION
from llenergymeasure.backends.harness.metrics import Metrics
from llenergymeasure.orchestrator.execution.outcome import load_result
from llenergymeasure.orchestrator.analysis import phase_split
from llenergymeasure.orchestrator.analysis.energy_columns import energy_published, is_energy_column
from llenergymeasure.orchestrator.analysis.gpu_settings import readback_columns
from llenergymeasure.orchestrator.execution.manifest import Manifest

METRIC_COLUMNS = list(Metrics.model_fields)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_rows(manifest: Manifest) -> list[dict[str, Any]]:
    rows = []
    for run in manifest.in_order():
        exp = manifest.experiment(run.experiment_index)
        row: dict[str, Any] = {
            "run_id": run.run_id,
            "position": run.position,
            "experiment_index": exp.index,
            "experiment_id": exp.id,
            "label": exp.label,
            "cycle": run.cycle,
            "status": run.state,
            "error": run.error,
            "schema_version": SCHEMA_VERSION,
            "tool_version": manifest.tool_version,
        }
        row.update(flatten(exp.config))
        row.update({m: None for m in METRIC_COLUMNS})
        result = load_result(manifest.run_dir(run.run_id)) if run.state == "done" else None
        if result is not None:
            env = result.environment
            row.update(result.metrics.model_dump())
            row.update(readback_columns(result))  # gpu: settings as enforced in the window
            row.update(phase_split.run_columns(result))  # measurement.phase_split
            row.update(
                {
                    "energy_source": result.energy_source,
                    "energy_unavailable_reason": result.energy_unavailable_reason,
                    "energy_fallback_reason": result.energy_fallback_reason,
                    "cpu_energy_source": result.cpu_energy.source,
                    "stabilisation_s": result.stabilisation.waited_s,
                    "stabilised": result.stabilisation.reached,
                    "baseline_reused": result.baseline.reused if result.baseline else None,
                    "sampling_coverage": result.sampling_coverage,
                    "warnings": " | ".join(result.warnings),
                    "resolved.device": result.resolved.device,
                    "resolved.dtype": result.resolved.dtype,
                    "resolved.n_parameters": result.resolved.n_parameters,
                    "environment.gpus": ", ".join(g["name"] for g in env.get("gpus", [])),
                    "n_gpus": len(env.get("gpus", [])),  # the run's GPUs (0 on the CPU)
                    "environment.gpu_driver": env.get("gpu_driver"),
                    "environment.cpu_model": env.get("cpu_model"),
                    "environment.torch": env.get("packages", {}).get("torch"),
                    "environment.transformers": env.get("packages", {}).get("transformers"),
                    "tool_commit": env.get("tool_commit"),
                    "image_id": (env.get("image") or {}).get("id"),
                    "image_ref": (env.get("image") or {}).get("ref"),
                    "started_at": result.started_at,
                    "finished_at": result.finished_at,
                }
            )
        slurm = run.slurm.model_dump(mode="json", exclude_none=True) if run.slurm else {}
        for k, v in slurm.items():  # job id, array task, node, GPU UUIDs, Slurm state
            row[f"slurm.{k}"] = ", ".join(v) if isinstance(v, list) else v
        row["run_dir"] = run.run_dir
        rows.append(row)
    if not energy_published(manifest):
        rows = [{k: v for k, v in r.items() if not is_energy_column(k)} for r in rows]
    return rows


def one_type_per_column(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet holds one type per column: a setting whose values mix numbers and text across
    runs (serving.request_rate: [4, inf]) is written as text, as the summary writes it."""
    for col in df.columns[df.dtypes == object]:
        kinds = {type(v) for v in df[col].dropna()}
        if str in kinds and kinds & {int, float} and kinds <= {str, int, float, bool}:
            df[col] = [None if pd.isna(v) else str(v) for v in df[col]]
    return df


def write_runs_table(manifest: Manifest) -> Path:
    df = one_type_per_column(pd.DataFrame(run_rows(manifest)))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    path = manifest.layout.runs_table
    write_bytes_atomic(path, buf.getvalue())
    return path
