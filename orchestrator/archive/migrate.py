"""`llem archive migrate`: an archive written by an earlier llem, brought to this
llem's schema version one step at a time (MIGRATIONS: version -> its step to the next).

Version 0 is what sharing results meant before the archive had a schema: a folder per
study under studies/, holding copies of that study directory's own `runs.parquet` and
`summary.parquet` as llem wrote them (dotted configuration columns, the summary one wide
row per configuration), no archive.json, no manifest. Its step to version 1 rebuilds
each study's four tables from those two files, with what they cannot tell left null or
said so (runner "unknown", no study file, no lock), identity stripped as `add` does.
The version-0 folders are kept under v0-backup/.

Each step writes the new files beside the old ones and commits by writing archive.json
last, so an interrupted migration leaves the old version readable and is simply re-run.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from llenergymeasure.backends import __version__
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.analysis.stats import is_missing
from llenergymeasure.orchestrator.archive.add import collect_garbage, write_index, write_study_files
from llenergymeasure.orchestrator.archive.identity import Scrubber
from llenergymeasure.orchestrator.archive.layout import (
    ArchiveLayout, local_root, locked, stored_version,
)
from llenergymeasure.orchestrator.archive.schema import (
    RUN_METRICS, SCHEMA_VERSION, SUMMARY_METRICS, ArchiveIndex, EnvironmentRow, RunRow, StudyEntry, StudyRow,
    SummaryRow,
)
from llenergymeasure.orchestrator.archive.tables import (
    BATCH_KEYS, UNFINISHED, StudyTables, canonical, plain, validated_rows,
)
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.analysis_section import DEFAULT_MAX_CV

V0_BACKUP = "v0-backup"
_STAMP = re.compile(r"^(?P<name>.+)_(?P<stamp>\d{8}T\d{6}Z)$")
# runs.parquet columns of llem's study table that are not configuration (analysis/tables.py)
_V0_NOT_CONFIG = {
    "run_id", "position", "experiment_index", "experiment_id", "label", "cycle", "status", "error",
    "schema_version", "tool_version", "energy_source", "energy_unavailable_reason", "energy_fallback_reason",
    "cpu_energy_source", "stabilisation_s", "stabilised", "baseline_reused", "sampling_coverage", "warnings",
    "n_gpus", "tool_commit", "image_id", "image_ref", "started_at", "finished_at", "run_dir",
    *(m for m, _ in RUN_METRICS),
}


def _is_config(col: str) -> bool:
    return col not in _V0_NOT_CONFIG and not col.startswith(("resolved.", "environment.", "slurm."))


def _v0_folders(root: Path) -> list[Path]:
    """Version-0 study folders (a v1 folder left by an interrupted migration has studies.parquet)."""
    return sorted(d for d in (root / "studies").iterdir()
                  if (d / "runs.parquet").is_file() and (d / "summary.parquet").is_file()
                  and not (d / "studies.parquet").exists())


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: plain(v) for k, v in r.items()} for r in df.to_dict(orient="records")]


def _integers_back(df: pd.DataFrame) -> pd.DataFrame:
    """Integer settings that a null elsewhere in the column made floats (pytorch.batch_size
    beside vLLM rows) as integers again: a float column of whole numbers only."""
    df = df.copy()
    for c in df.columns:
        if _is_config(c) and pd.api.types.is_float_dtype(df[c]):
            values = df[c].dropna()
            if len(values) and (values == values.round()).all():
                df[c] = df[c].astype("Int64")
    return df


def _hardware(r: dict[str, Any]) -> str:
    return r.get("environment.gpus") or f"CPU: {r.get('environment.cpu_model') or 'unknown'}"


def _v0_environment(sid: str, runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    rows: dict[str, dict[str, Any]] = {}
    of_run = {}
    for r in runs:
        if r["status"] != "done":
            continue
        row = {"study_id": sid, "hardware": _hardware(r), "gpu_model": r.get("environment.gpus") or None,
               "gpu_count": int(r.get("n_gpus") or 0), "gpu_driver": r.get("environment.gpu_driver"),
               "cpu_model": r.get("environment.cpu_model"), "torch_version": r.get("environment.torch"),
               "transformers_version": r.get("environment.transformers"),
               "packages_json": canonical({k: v for k, v in (("torch", r.get("environment.torch")),
                                                            ("transformers", r.get("environment.transformers"))) if v}),
               "image_id": r.get("image_id"), "image_ref": r.get("image_ref"), "tool_version": r.get("tool_version"),
               "tool_commit": r.get("tool_commit"), "runner": "unknown"}
        row["environment_id"] = hashlib.sha256(canonical(row).encode()).hexdigest()[:16]
        rows.setdefault(row["environment_id"], {**row, "n_runs": 0})["n_runs"] += 1
        of_run[r["run_id"]] = row["environment_id"]
    return list(rows.values()), of_run


def _v0_study(folder: Path, scrub: Scrubber) -> StudyTables:
    """One version-0 folder as version-1 rows."""
    runs_df = _integers_back(pd.read_parquet(folder / "runs.parquet"))
    summary_df = _integers_back(pd.read_parquet(folder / "summary.parquet"))
    runs = _records(runs_df)
    if not runs:
        raise UserError(f"{folder / 'runs.parquet'}: has no runs; remove the folder or add the study itself")
    config_cols = [c for c in runs_df.columns if _is_config(c)]
    m = _STAMP.match(folder.name)
    name = m.group("name") if m else folder.name
    created = (datetime.strptime(m.group("stamp"), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).isoformat()
               if m else min((r["started_at"] for r in runs if r.get("started_at")), default=utc_now()))
    plan = [name, created, sorted({r["experiment_id"] for r in runs}), sorted(r["run_id"] for r in runs)]
    sid = (f"{datetime.fromisoformat(created).astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-"
           f"{hashlib.sha256(canonical(plan).encode()).hexdigest()[:12]}")
    scrub.learn(texts=[r.get("error") for r in runs] + [str(r.get("model")) for r in runs])
    swept = [c for c in summary_df.columns if c in config_cols and (c != "backend" or summary_df[c].nunique() > 1)]
    settings = {}
    for r in runs:
        flat = {c: r[c] for c in config_cols if r.get(c) is not None}
        settings[r["experiment_index"]] = {"settings_json": canonical(flat),
                                           "swept_json": canonical({k: flat[k] for k in swept if k in flat}),
                                           "batch_size": flat.get(BATCH_KEYS.get(str(flat.get("backend")), ""))}
    env_rows, env_of_run = _v0_environment(sid, runs)
    hw = {e["environment_id"]: e["hardware"] for e in env_rows}
    run_rows = []
    for r in runs:
        env_id = env_of_run.get(r["run_id"])
        run_rows.append({
            "study_id": sid, **{k: r.get(k) for k in ("run_id", "experiment_index", "experiment_id", "label", "cycle",
                                                    "position", "status", "error", "model", "backend", "dataset",
                                                    "device", "n_prompts", "max_input_tokens", "max_output_tokens",
                                                    "energy_source", "energy_unavailable_reason", "energy_fallback_reason",
                                                    "cpu_energy_source", "sampling_coverage", "stabilisation_s",
                                                    "stabilised", "baseline_reused", "started_at", "finished_at")},
            **settings[r["experiment_index"]], "warnings": r.get("warnings") or None,
            "resolved_device": r.get("resolved.device"), "resolved_dtype": r.get("resolved.dtype"),
            "n_parameters": r.get("resolved.n_parameters"), "n_gpus": r.get("n_gpus"), "environment_id": env_id,
            "hardware": hw.get(env_id or ""), "result_schema_version": r.get("schema_version") if r["status"] == "done" else None,
            **{k: r.get(k) for k, _ in RUN_METRICS},
        })
    summary_rows = _v0_summary(sid, _records(summary_df), settings, run_rows)
    ref = next((s["experiment_index"] for s in _records(summary_df) if s.get("is_reference")), 1)
    done = [r for r in runs if r["status"] == "done"]
    study = {
        "study_id": sid, "study_name": name, "source_dir_name": folder.name, "created_at": created,
        "last_run_finished_at": max((r["finished_at"] for r in runs if r.get("finished_at")), default=None),
        "status": "unknown (migrated from version 0)", "partial": any(r["status"] in UNFINISHED for r in runs),
        "publication": False, "runner": "unknown", "tool_version": runs[0].get("tool_version") or "unknown",
        "tool_commit": next((r.get("tool_commit") for r in done if r.get("tool_commit")), None),
        "n_experiments": len({r["experiment_index"] for r in runs}), "n_cycles": max(r["cycle"] for r in runs),
        "order": "unknown", "n_runs_planned": len(runs), "n_runs_done": len(done),
        "n_runs_failed": sum(r["status"] == "failed" for r in runs), "reference_experiment_index": ref,
        "max_cv": DEFAULT_MAX_CV, "swept_keys_json": json.dumps(swept),
        "energy_measured": any(r.get("energy_j") is not None for r in done), "identity_stripped": True,
        "archived_at": utc_now(), "archived_by_tool_version": __version__, "schema_version": SCHEMA_VERSION,
    }
    rows = {"studies": validated_rows(StudyRow, [study], scrub), "runs": validated_rows(RunRow, run_rows, scrub),
            "summary": validated_rows(SummaryRow, summary_rows, scrub),
            "environment": validated_rows(EnvironmentRow, env_rows, scrub)}
    return StudyTables(sid, rows, sorted(r["run_id"] for r in runs), len(done), study["partial"])


def _v0_summary(sid: str, summary: list[dict[str, Any]], settings: dict[int, dict[str, Any]],
                runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The wide v0 summary (one row per configuration) as v1's long one (per metric)."""
    ref = next((s["experiment_index"] for s in summary if s.get("is_reference")), 1)
    out = []
    for s in summary:
        idx = s["experiment_index"]
        mine = [r for r in runs if r["experiment_index"] == idx and r["status"] == "done"]
        first = next(iter(mine), None) or next(r for r in runs if r["experiment_index"] == idx)
        common = {
            "study_id": sid, "experiment_index": idx, "experiment_id": s["experiment_id"], "label": s["label"],
            **{k: first.get(k) for k in ("model", "backend", "dataset", "device", "hardware", "environment_id")},
            "dtype": first.get("resolved_dtype"), **settings[idx], "is_reference": bool(s.get("is_reference")),
            "reference_experiment_index": ref, "flags": s.get("flags") or "", "flagged": bool(s.get("flagged")),
            **{k: s.get(k) for k in ("runs_planned", "runs_done", "runs_failed", "energy_source",
                                     "energy_unavailable_reason", "same_tokens_as_reference_share",
                                     "same_output_length_as_reference_share", "same_output_requests_compared",
                                     "same_output_unavailable_reason", "pareto_throughput_energy",
                                     "pareto_latency_energy")},
        }
        for metric, unit, higher in SUMMARY_METRICS:
            if f"{metric}_n" not in s:
                continue
            stats = {k: s.get(f"{metric}_{k}") for k in ("mean", "std", "cv", "ci95_low", "ci95_high", "ratio",
                                                         "ratio_ci95_low", "ratio_ci95_high")}
            out.append({**common, "metric": metric, "unit": unit, "higher_is_better": higher,
                        "n": 0 if is_missing(s[f"{metric}_n"]) else int(s[f"{metric}_n"]), **stats})
    return out


def _v0_to_v1(layout: ArchiveLayout) -> None:
    scrub = Scrubber.for_machine()
    folders = _v0_folders(layout.root)
    found = [_v0_study(f, scrub) for f in folders]  # everything read before anything is written
    ids = [t.study_id for t in found]
    if len(set(ids)) != len(ids):
        raise UserError(f"{layout.studies}: two version-0 folders hold the same study; keep one of them")
    for d in layout.studies.iterdir():  # what an interrupted migration left (version-1 folders)
        if (d / "studies.parquet").exists():
            shutil.rmtree(d)
    shutil.rmtree(layout.staging, ignore_errors=True)
    now, entries = utc_now(), {}
    for t in found:
        rel = f"studies/{t.study_id}"
        files = write_study_files(layout.staging / t.study_id, t)
        (layout.staging / t.study_id).rename(layout.root / rel)
        entries[t.study_id] = StudyEntry(dir=rel, files=files, run_ids=t.run_ids, runs_done=t.runs_done,
                                         partial=t.partial, added_at=now)
    index = ArchiveIndex(studies=entries)
    write_index(layout, index)  # the commit: from here on the archive is version 1
    backup = layout.root / V0_BACKUP
    backup.mkdir(exist_ok=True)
    for f in folders:
        f.rename(backup / f.name)
    collect_garbage(layout, index)


MIGRATIONS: dict[int, Callable[[ArchiveLayout], None]] = {0: _v0_to_v1}


def migrate(path: str | Path | None) -> str:
    """Migrate the archive at `path` to SCHEMA_VERSION; what was done, in words."""
    layout = ArchiveLayout(local_root(path, "migrated"))
    if not layout.root.is_dir():
        raise UserError(f"{layout.root}: no such directory")
    with locked(layout):
        version = stored_version(layout)
        if version is None:
            raise UserError(f"{layout.root}: not an llem archive (no archive.json and no version-0 study folders)")
        if version > SCHEMA_VERSION:
            raise UserError(f"{layout.root}: archive schema_version {version} is newer than this llem's "
                            f"({SCHEMA_VERSION}); upgrade llem")
        if version == SCHEMA_VERSION:
            return f"{layout.root}: already at schema_version {SCHEMA_VERSION}"
        start = version
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](layout)
            version = stored_version(layout)  # type: ignore[assignment]
    kept = f"; the version-0 files are kept in {layout.root / V0_BACKUP}" if start == 0 else ""
    return f"{layout.root}: migrated from schema_version {start} to {SCHEMA_VERSION}{kept}"


