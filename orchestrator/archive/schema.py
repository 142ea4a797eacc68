"""The archive's tables, defined once: one pydantic model per table row, from which
the Parquet schemas (`arrow_schema`) and the committed JSON Schema
(docs/archive-schema.json, `python -m llenergymeasure.orchestrator.archive.schema`)
are both derived, so the files, the docs and the code cannot drift apart.

Every study in an archive has four tables (studies/<study id>/<table>.parquet):

- `studies`: one row: what the study was, how complete, publication lock, provenance.
- `runs`: one row per run (experiment x cycle), every metric of the run contract.
- `summary`: one row per configuration *and metric*: mean, 95% CI, CV and the ratio to
  the study's reference configuration with its 95% CI, beside the configuration's
  validity flags. Long, so that a new metric is a new row, not a new schema.
- `environment`: one row per distinct environment the study's runs recorded (GPU model,
  driver, CPU, packages, image), joined to runs by `environment_id`.

Names are stable and carry their units (`energy_per_output_token_j`, `duration_s`,
`memory_total_gb`); `summary.unit` spells the metric's unit out. Renaming, removing or
retyping a column bumps SCHEMA_VERSION and adds a migration (migrate.py) from the
version before; a new nullable column does not (see the metrics below).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, create_model

SCHEMA_VERSION = 1
FORMAT = "llenergymeasure-archive"

_ROW = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Row(BaseModel):
    model_config = _ROW


# -- metrics ---------------------------------------------------------------------------
# Both metric lists come from where the metrics are defined (the run contract's Metrics,
# the study summary's HEADLINE), so the archive carries every metric by its own name.
# A metric added there is a new nullable column (runs) or new rows (summary): readers
# union files by column name, so that needs no new SCHEMA_VERSION, only the regenerated
# docs/archive-schema.json; renaming, removing or retyping a column does need one.

# name suffix -> unit, most specific first
_UNITS: tuple[tuple[str, str], ...] = (
    ("output_tokens_per_s", "output tokens/s"), ("requests_per_s", "requests/s"), ("_rps", "requests/s"),
    ("tokens_per_joule", "output tokens/J"), ("_per_output_token_j", "J/output token"),
    ("_per_request_j", "J/request"), ("_per_total_token_j", "J/token"), ("_per_flop_j", "J/FLOP"),
    ("_js", "J s"), ("_j", "J"), ("_w", "W"), ("_mb", "MB"), ("_gb", "GB"), ("_ms_per_s", "ms/s"),
    ("_share", "fraction"),
)


def unit_of(metric: str) -> str:
    """A metric's unit, read from its name (the names carry their units)."""
    base = re.sub(r"_p\d+$", "", metric)
    for suffix, unit in _UNITS:
        if base.endswith(suffix):
            return unit
    if base.endswith("_ms"):
        return "ms"
    if base.endswith("_s"):
        return "s"
    return ""


def _summary_metrics() -> tuple[tuple[str, str, bool], ...]:
    from llenergymeasure.orchestrator.analysis.summary import HEADLINE

    return tuple((m, unit_of(m), higher) for m, higher in HEADLINE)


def _run_metrics() -> tuple[tuple[str, type], ...]:
    from llenergymeasure.backends.harness.metrics import Metrics

    out = []
    for name, f in Metrics.model_fields.items():
        kinds = [a for a in getattr(f.annotation, "__args__", (f.annotation,)) if a is not type(None)]
        out.append((name, kinds[0]))
    return tuple(out)


# (column, unit, higher is better): the summarised metrics; `summary.metric` takes these values
SUMMARY_METRICS: tuple[tuple[str, str, bool], ...] = _summary_metrics()
# (column, type): every metric of a run (the run contract's Metrics), by its own name
RUN_METRICS: tuple[tuple[str, type], ...] = _run_metrics()


# -- tables ----------------------------------------------------------------------------

class StudyRow(_Row):
    """`studies`: one row per archived study."""

    study_id: str = Field(description="<created UTC stamp>-<12 hex>: the study's name, creation time and plan, hashed")
    study_name: str
    source_dir_name: str = Field(description="the study directory's name when it was added (no path)")
    created_at: str = Field(description="ISO 8601, UTC")
    last_run_finished_at: str | None = None
    status: str = Field(description="the study's status when added: finished, paused, stopped, interrupted, failed, running")
    status_reason: str | None = None
    partial: bool = Field(description="added with --partial: some runs had not finished (their rows say which)")
    publication: bool = Field(description="a publication study (it has study.lock.yaml)")
    lock_sha256: str | None = Field(None, description="SHA-256 of the publication lock file study.lock.yaml")
    reproduces: str | None = Field(None, description="the directory name of the study this one re-ran (llem reproduce)")
    runner: str
    tool_version: str
    tool_commit: str | None = None
    n_experiments: int
    n_cycles: int
    order: str
    n_runs_planned: int
    n_runs_done: int
    n_runs_failed: int
    reference_experiment_index: int
    max_cv: float = Field(description="analysis.max_cv: above it a configuration is flagged high_variance")
    swept_keys_json: str = Field(description="JSON list of the settings the study varies, in sweep order")
    energy_measured: bool = Field(description="any finished run has an energy figure")
    study_file_yaml: str | None = Field(None, description="the study file as given")
    identity_stripped: bool = Field(description="user, host and home names, GPU UUIDs and environment "
                                                "variables removed (the default; false with --keep-identity)")
    archived_at: str
    archived_by_tool_version: str
    schema_version: int


class RunRow(_Row):
    """`runs`: one row per run; metrics null unless `status` is done."""

    study_id: str
    run_id: str = Field(description="unique within its study, e.g. e03-c2 (experiment 3, cycle 2)")
    experiment_index: int
    experiment_id: str = Field(description="hash of the experiment's full configuration")
    label: str
    cycle: int
    position: int = Field(description="1-based place in the study's execution order")
    status: str = Field(description="done, failed, pending, running or skipped")
    error: str | None = None
    failure_kind: str | None = None
    model: str
    backend: str
    dataset: str
    device: str
    n_prompts: int
    max_input_tokens: int
    max_output_tokens: int
    batch_size: int | None = Field(None, description="the backend's batching setting: pytorch.batch_size, "
                                                     "vllm.max_num_seqs or tensorrt.max_batch_size")
    settings_json: str = Field(description="the experiment's whole configuration, flattened to dotted keys, as JSON")
    swept_json: str = Field(description="the settings this experiment sets among those the study varies, as JSON")
    resolved_device: str | None = None
    resolved_dtype: str | None = None
    n_parameters: int | None = None
    hardware: str | None = Field(None, description="what the run measured on, in words: GPU model(s) or CPU: <model>")
    n_gpus: int | None = None
    environment_id: str | None = None
    energy_source: str | None = None
    energy_unavailable_reason: str | None = None
    energy_fallback_reason: str | None = None
    cpu_energy_source: str | None = None
    sampling_coverage: float | None = None
    stabilisation_s: float | None = None
    stabilised: bool | None = None
    baseline_reused: bool | None = None
    warnings: str | None = Field(None, description="validity warnings, ' | '-separated, each '<code>: <detail>'")
    started_at: str | None = None
    finished_at: str | None = None
    result_schema_version: int | None = None


RunRow = create_model(  # type: ignore[misc]  (the run contract's metrics, appended by name)
    "RunRow", __base__=RunRow, __doc__=RunRow.__doc__,
    **{name: (kind | None, None) for name, kind in RUN_METRICS},
)


class SummaryRow(_Row):
    """`summary`: one row per configuration and metric, across the study's cycles."""

    study_id: str
    experiment_index: int
    experiment_id: str
    label: str
    model: str
    backend: str
    dataset: str
    device: str
    dtype: str | None = Field(None, description="the precision the runs used (resolved)")
    batch_size: int | None = Field(None, description="as runs.batch_size")
    hardware: str | None = None
    environment_id: str | None = None
    settings_json: str
    swept_json: str
    is_reference: bool
    reference_experiment_index: int
    runs_planned: int
    runs_done: int
    runs_failed: int
    energy_source: str | None = None
    energy_unavailable_reason: str | None = None
    flags: str = Field(description="'; '-separated reasons to doubt this configuration's figures (empty: none)")
    flagged: bool
    same_tokens_as_reference_share: float | None = None
    same_output_length_as_reference_share: float | None = None
    same_output_requests_compared: int | None = None
    same_output_unavailable_reason: str | None = None
    pareto_throughput_energy: bool | None = None
    pareto_latency_energy: bool | None = None
    metric: str = Field(description="one of the summarised metrics, named with its unit (e.g. energy_per_output_token_j)")
    unit: str
    higher_is_better: bool
    n: int = Field(description="finished runs with a value")
    mean: float | None = None
    std: float | None = None
    cv: float | None = Field(None, description="coefficient of variation across cycles, std / |mean|")
    ci95_low: float | None = Field(None, description="95% Student-t interval of the mean")
    ci95_high: float | None = None
    ratio: float | None = Field(None, description="mean / the reference configuration's mean")
    ratio_ci95_low: float | None = None
    ratio_ci95_high: float | None = None


class EnvironmentRow(_Row):
    """`environment`: one row per distinct environment of a study's runs."""

    study_id: str
    environment_id: str = Field(description="hash of this row's other fields")
    n_runs: int
    hardware: str
    gpu_model: str | None = Field(None, description="', '-separated GPU names, null on the CPU")
    gpu_count: int
    gpu_driver: str | None = None
    cuda_version: str | None = None
    cpu_model: str | None = None
    cpu_count: int | None = None
    memory_total_gb: float | None = None
    platform: str | None = None
    kernel: str | None = Field(None, description="from a publication study's environment.json")
    machine: str | None = None
    python_version: str | None = None
    in_container: bool | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
    vllm_version: str | None = None
    tensorrt_llm_version: str | None = None
    packages_json: str = Field(description="every recorded package version, as JSON")
    image_id: str | None = None
    image_ref: str | None = None
    image_digests: str | None = Field(None, description="', '-separated repository digests")
    image_base: str | None = None
    tool_version: str | None = None
    tool_commit: str | None = None
    runner: str
    hostname: str | None = Field(None, description="only with --keep-identity")
    gpu_uuids: str | None = Field(None, description="only with --keep-identity")
    env_json: str | None = Field(None, description="the runs' visible environment variables; only with --keep-identity")


TABLES: dict[str, type[_Row]] = {"studies": StudyRow, "runs": RunRow, "summary": SummaryRow,
                                 "environment": EnvironmentRow}


# -- the index (archive.json) ----------------------------------------------------------

class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str
    bytes: int
    rows: int
    columns_sha256: str = Field(description="SHA-256 of the file's column names and types (schema_fingerprint): "
                                            "readers union files by name only where these differ")


class StudyEntry(BaseModel):
    """One study in archive.json: where its files are and their checksums."""

    model_config = ConfigDict(extra="forbid")

    dir: str = Field(description="relative to the archive, e.g. studies/<study id>")
    files: dict[str, FileEntry] = Field(description="table name -> its file <table>.parquet in `dir`")
    run_ids: list[str]
    runs_done: int
    partial: bool
    added_at: str


class ArchiveIndex(BaseModel):
    """archive.json: the archive's one commit point. A study is in the archive when, and
    only when, this file lists it: files not listed (an interrupted add) are ignored and
    removed by the next add."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["llenergymeasure-archive"] = FORMAT
    schema_version: int = SCHEMA_VERSION
    studies: dict[str, StudyEntry] = Field(default_factory=dict)


# -- derived schemas -------------------------------------------------------------------

_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _base_type(annotation: Any) -> type:
    args = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
    return args[0]


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Parquet schema of a table: every column nullable, typed from the row model."""
    return pa.schema([pa.field(name, _ARROW[_base_type(f.annotation)]) for name, f in model.model_fields.items()])


def schema_fingerprint(schema: pa.Schema) -> str:
    return hashlib.sha256(",".join(f"{f.name}:{f.type}" for f in schema).encode()).hexdigest()


def json_schema() -> dict[str, Any]:
    """The archive's schema as one JSON Schema document (docs/archive-schema.json)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llenergymeasure results archive",
        "description": (__doc__ or "").strip(),
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "tables": {name: model.model_json_schema() for name, model in TABLES.items()},
        "index": ArchiveIndex.model_json_schema(),
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # regenerate the committed copy: python -m ...archive.schema docs/archive-schema.json
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if out is None:
        sys.stdout.write(json_schema_text())
    else:
        out.write_text(json_schema_text(), encoding="utf-8")
