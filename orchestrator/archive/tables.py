"""A study directory as archive rows (schema.py): read through the same code as
`llem results` (analysis.results.open_study: runs and summary recomputed from the run
directories), reshaped to the archive's stable columns, and scrubbed of identity
(identity.py) unless the caller keeps it."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from llenergymeasure.backends import __version__
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.contract import SCHEMA_VERSION as RESULT_SCHEMA_VERSION
from llenergymeasure.backends.hashing import sha256_file
from llenergymeasure.orchestrator.analysis.results import StudyResults, open_study, study_file_text
from llenergymeasure.orchestrator.analysis.summary import swept_keys
from llenergymeasure.orchestrator.analysis.tables import flatten
from llenergymeasure.orchestrator.archive.identity import Scrubber
from llenergymeasure.orchestrator.archive.schema import (
    RUN_METRICS, SCHEMA_VERSION, SUMMARY_METRICS, EnvironmentRow, RunRow, StudyRow, SummaryRow,
)
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.outcome import load_result

UNFINISHED = ("pending", "running", "skipped")
BATCH_KEYS = {"pytorch": "pytorch.batch_size", "vllm": "vllm.max_num_seqs", "tensorrt": "tensorrt.max_batch_size"}


@dataclass
class StudyTables:
    study_id: str
    rows: dict[str, list[dict[str, Any]]]  # table -> validated rows (plain Python values)
    run_ids: list[str]
    runs_done: int
    partial: bool


def plain(v: Any) -> Any:
    """numpy/pandas scalars as Python values; NaN and NA as None."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


def study_id(manifest: Manifest) -> str:
    """<created UTC stamp>-<12 hex>: stable however the directory is renamed or copied, and
    free of anything a user named (the hash covers the name, time and plan)."""
    created = datetime.fromisoformat(manifest.created_at).astimezone(timezone.utc)
    plan = [manifest.study_name, manifest.created_at, [e.id for e in manifest.experiments],
            sorted(r.run_id for r in manifest.runs)]
    return f"{created:%Y%m%dT%H%M%SZ}-{hashlib.sha256(canonical(plan).encode()).hexdigest()[:12]}"


def hardware(env: dict[str, Any]) -> str:
    """What a run measured on, in words: its GPUs ("2x NVIDIA A100...") or the CPU."""
    names = [g.get("name") or "GPU" for g in env.get("gpus") or []]
    if names:
        counts = Counter(names)
        return ", ".join(f"{n}x {name}" if n > 1 else name for name, n in counts.items())
    return f"CPU: {env.get('cpu_model') or 'unknown'}"


def _batch(flat: dict[str, Any], backend: str | None) -> int | None:
    v = flat.get(BATCH_KEYS.get(backend or "", ""))
    if isinstance(v, float) and v.is_integer():  # a column with other backends' nulls holds floats
        v = int(v)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _mode(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


# -- environment ------------------------------------------------------------------------

def _environment_row(sid: str, env: dict[str, Any], runner: str, kernel: str | None, keep: bool) -> dict[str, Any]:
    packages = env.get("packages") or {}
    image = env.get("image") or {}
    gpus = env.get("gpus") or []
    row = {
        "study_id": sid, "hardware": hardware(env),
        "gpu_model": ", ".join(g.get("name") or "GPU" for g in gpus) or None, "gpu_count": len(gpus),
        "gpu_driver": env.get("gpu_driver"), "cuda_version": env.get("torch_cuda"),
        "cpu_model": env.get("cpu_model"), "cpu_count": env.get("cpu_count"),
        "memory_total_gb": env.get("memory_total_gb"), "platform": env.get("platform"), "kernel": kernel,
        "machine": env.get("machine"), "python_version": env.get("python"), "in_container": env.get("in_container"),
        "torch_version": packages.get("torch"), "transformers_version": packages.get("transformers"),
        "vllm_version": packages.get("vllm"), "tensorrt_llm_version": packages.get("tensorrt_llm"),
        "packages_json": canonical(packages), "image_id": image.get("id"), "image_ref": image.get("ref"),
        "image_digests": ", ".join(image.get("digests") or []) or None, "image_base": image.get("base"),
        "tool_version": env.get("tool_version"), "tool_commit": env.get("tool_commit"), "runner": runner,
        "hostname": env.get("hostname") if keep else None,
        "gpu_uuids": (", ".join(g.get("uuid") or "" for g in gpus) or None) if keep else None,
        "env_json": canonical(env.get("env") or {}) if keep else None,
    }
    row["environment_id"] = hashlib.sha256(canonical(row).encode()).hexdigest()[:16]
    return row


def _kernel(study_dir: Path) -> str | None:
    """The kernel a publication study's host reported (environment.json), if any."""
    try:
        return json.loads((study_dir / "environment.json").read_text(encoding="utf-8")).get("kernel")
    except (OSError, ValueError, AttributeError):
        return None


# -- rows -------------------------------------------------------------------------------

def _settings(exp: Any, keys: list[str]) -> dict[str, str]:
    """settings_json and swept_json of an experiment (manifest.ExperimentEntry)."""
    flat = flatten(exp.config)
    return {"settings_json": canonical(flat),
            "swept_json": canonical({k: flat[k] for k in keys if flat.get(k) is not None})}


def _run_row(sid: str, r: dict[str, Any], entry: Any, settings: dict[str, str], env_id: str | None,
             hw: str | None) -> dict[str, Any]:
    return {**settings,
        "study_id": sid, "run_id": r["run_id"], "experiment_index": r["experiment_index"],
        "experiment_id": r["experiment_id"], "label": r["label"], "cycle": r["cycle"], "position": r["position"],
        "status": r["status"], "error": r.get("error"), "failure_kind": entry.failure_kind,
        "model": r.get("model"), "backend": r.get("backend"), "dataset": r.get("dataset"), "device": r.get("device"),
        "n_prompts": r.get("n_prompts"), "max_input_tokens": r.get("max_input_tokens"),
        "max_output_tokens": r.get("max_output_tokens"), "batch_size": _batch(r, r.get("backend")),
        "resolved_device": r.get("resolved.device"), "resolved_dtype": r.get("resolved.dtype"),
        "n_parameters": r.get("resolved.n_parameters"), "hardware": hw, "n_gpus": r.get("n_gpus"),
        "environment_id": env_id, "energy_source": r.get("energy_source"),
        "energy_unavailable_reason": r.get("energy_unavailable_reason"),
        "energy_fallback_reason": r.get("energy_fallback_reason"), "cpu_energy_source": r.get("cpu_energy_source"),
        "sampling_coverage": r.get("sampling_coverage"), "stabilisation_s": r.get("stabilisation_s"),
        "stabilised": r.get("stabilised"), "baseline_reused": r.get("baseline_reused"),
        "warnings": r.get("warnings") or None, "started_at": r.get("started_at"), "finished_at": r.get("finished_at"),
        "result_schema_version": RESULT_SCHEMA_VERSION if r["status"] == "done" else None,
        **{m: r.get(m) for m, _ in RUN_METRICS},
    }


def _summary_rows(sid: str, s: dict[str, Any], exp: Any, ref: int, keys: list[str],
                  runs: list[dict[str, Any]], columns: set[str]) -> list[dict[str, Any]]:
    flat = flatten(exp.config)
    mine = [r for r in runs if r["experiment_index"] == exp.index and r["status"] == "done"]
    common = {
        "study_id": sid, "experiment_index": exp.index, "experiment_id": exp.id, "label": exp.label,
        "model": flat.get("model"), "backend": flat.get("backend"), "dataset": flat.get("dataset"),
        "device": flat.get("device"), "dtype": _mode([r["resolved_dtype"] for r in mine]),
        "batch_size": _batch(flat, flat.get("backend")), "hardware": _mode([r["hardware"] for r in mine]),
        "environment_id": _mode([r["environment_id"] for r in mine]),
        **_settings(exp, keys), "is_reference": exp.index == ref, "reference_experiment_index": ref,
        **{k: plain(s.get(k)) for k in ("runs_planned", "runs_done", "runs_failed", "energy_source",
                                        "energy_unavailable_reason", "flags", "flagged",
                                        "same_tokens_as_reference_share", "same_output_length_as_reference_share",
                                        "same_output_requests_compared", "same_output_unavailable_reason",
                                        "pareto_throughput_energy", "pareto_latency_energy")},
    }
    common["flags"] = common["flags"] or ""
    out = []
    for metric, unit, higher in SUMMARY_METRICS:
        if f"{metric}_n" not in columns:  # not published (e.g. a publication without energy)
            continue
        out.append({**common, "metric": metric, "unit": unit, "higher_is_better": higher,
                    "n": plain(s[f"{metric}_n"]) or 0,
                    **{k: plain(s.get(f"{metric}_{k}")) for k in ("mean", "std", "cv", "ci95_low", "ci95_high", "ratio",
                                                                 "ratio_ci95_low", "ratio_ci95_high")}})
    return out


def _learn_identity(scrub: Scrubber, m: Manifest, results: StudyResults, envs: list[dict[str, Any]]) -> None:
    hosts = [s.host for s in m.sessions] + [e.get("hostname") for e in envs]
    hosts += [(e.get("env") or {}).get("SLURMD_NODENAME") for e in envs]
    hosts += [r.slurm.node for r in m.runs if r.slurm is not None]
    texts = [m.study_base_dir, study_file_text(results), *(r.error for r in m.runs)]
    texts += [canonical(e.config) for e in m.experiments]
    scrub.learn(hosts, texts)


def validated_rows(model: type, rows: list[dict[str, Any]], scrub: Scrubber) -> list[dict[str, Any]]:
    return [model.model_validate(scrub.row({k: plain(v) for k, v in row.items()})).model_dump() for row in rows]


def study_tables(study_dir: Path, partial: bool, keep_identity: bool) -> StudyTables:
    """Every archive row of the study at `study_dir`; UserError when it is not one, has
    unfinished runs (unless `partial`) or no finished run at all."""
    results = open_study(study_dir)
    m = results.manifest
    unfinished = [r.run_id for r in m.runs if r.state in UNFINISHED]
    done = [r for r in m.runs if r.state == "done"]
    if unfinished and not partial:
        raise UserError(f"{study_dir}: {len(unfinished)} of {len(m.runs)} run(s) have not finished "
                        f"({', '.join(unfinished[:5])}{', ...' if len(unfinished) > 5 else ''}); finish it with "
                        f"`llem run --resume {study_dir}`, or add what finished with --partial (marked partial)")
    if not done:
        raise UserError(f"{study_dir}: no run finished, so there is nothing to archive")
    sid = study_id(m)
    scrub = Scrubber.for_machine(keep=keep_identity)
    results_by_run = {r.run_id: load_result(m.run_dir(r.run_id)) for r in done}
    envs_by_run = {k: (v.environment if v is not None else {}) for k, v in results_by_run.items()}
    _learn_identity(scrub, m, results, list(envs_by_run.values()))

    kernel = _kernel(study_dir)
    env_rows: dict[str, dict[str, Any]] = {}
    env_of_run: dict[str, str] = {}
    for run_id, env in envs_by_run.items():
        row = _environment_row(sid, env, m.runner, kernel, keep_identity)
        row = scrub.row(row)
        env_rows.setdefault(row["environment_id"], {**row, "n_runs": 0})["n_runs"] += 1
        env_of_run[run_id] = row["environment_id"]
    hw_of_env = {k: v["hardware"] for k, v in env_rows.items()}

    entries = {r.run_id: r for r in m.runs}
    keys = swept_keys([e.model_dump() for e in m.experiments])
    settings = {e.index: _settings(e, keys) for e in m.experiments}
    runs = [_run_row(sid, {k: plain(v) for k, v in r.items()}, entries[r["run_id"]], settings[r["experiment_index"]],
                     env_of_run.get(r["run_id"]), hw_of_env.get(env_of_run.get(r["run_id"], "")))
            for r in results.runs.to_dict(orient="records")]
    columns = set(results.summary.columns)
    summary = []
    for s in results.summary.to_dict(orient="records"):
        summary += _summary_rows(sid, s, m.experiment(int(s["experiment_index"])), results.reference_index, keys,
                                 runs, columns)
    study = _study_row(sid, study_dir, results, runs, keep_identity)
    rows = {"studies": validated_rows(StudyRow, [study], scrub), "runs": validated_rows(RunRow, runs, scrub),
            "summary": validated_rows(SummaryRow, summary, scrub),
            "environment": validated_rows(EnvironmentRow, list(env_rows.values()), scrub)}
    return StudyTables(sid, rows, sorted(entries), len(done), bool(unfinished))


def _study_row(sid: str, study_dir: Path, results: StudyResults, runs: list[dict[str, Any]],
               keep_identity: bool) -> dict[str, Any]:
    m = results.manifest
    layout = m.layout
    lock = layout.study_lock if layout.study_lock.is_file() else None
    finished = [r["finished_at"] for r in runs if r.get("finished_at")]
    commits = [r.get("tool_commit") for r in results.runs.to_dict(orient="records")] if "tool_commit" in results.runs else []
    return {
        "study_id": sid, "study_name": m.study_name, "source_dir_name": Path(study_dir).resolve().name,
        "created_at": m.created_at, "last_run_finished_at": max(finished) if finished else None,
        "status": m.status, "status_reason": m.status_reason,
        "partial": any(r.state in UNFINISHED for r in m.runs), "publication": lock is not None,
        "lock_sha256": sha256_file(lock) if lock else None,
        "reproduces": Path(m.reproduces).name if m.reproduces else None, "runner": m.runner,
        "tool_version": m.tool_version, "tool_commit": _mode([plain(c) for c in commits]),
        "n_experiments": len(m.experiments), "n_cycles": max((r.cycle for r in m.runs), default=0),
        "order": str(m.execution.get("order")), "n_runs_planned": len(m.runs),
        "n_runs_done": sum(r.state == "done" for r in m.runs), "n_runs_failed": sum(r.state == "failed" for r in m.runs),
        "reference_experiment_index": results.reference_index, "max_cv": m.analysis.max_cv,
        "swept_keys_json": json.dumps(swept_keys([e.model_dump() for e in m.experiments])),
        "energy_measured": any(r.get("energy_j") is not None for r in runs),
        "study_file_yaml": study_file_text(results), "identity_stripped": not keep_identity,
        "archived_at": utc_now(), "archived_by_tool_version": __version__, "schema_version": SCHEMA_VERSION,
    }
