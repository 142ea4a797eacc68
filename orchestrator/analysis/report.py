"""`report.html`: one self-contained page a non-specialist can read — headline
sentences, the summary with intervals, charts, the environment, every warning and
failure, and the study file. Charts are embedded; nothing is fetched when opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml
import pandas as pd

from llenergymeasure.backends import __version__
from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.backends.table import BACKENDS
from llenergymeasure.backends.contract import TIMESERIES_FILE
from llenergymeasure.orchestrator.analysis import charts, gpu_settings, phase_split
from llenergymeasure.orchestrator.analysis.stats import is_missing
from llenergymeasure.orchestrator.analysis.serving import serving_section
from llenergymeasure.orchestrator.analysis.concurrency import concurrency_note
from llenergymeasure.orchestrator.analysis.costs import CO2, ENERGY_COST, ENERGY_KWH, FACILITY_KWH, GPU_TIME_COST, TOTAL_COST
from llenergymeasure.orchestrator.analysis.compare import load_reproduction
from llenergymeasure.orchestrator.analysis.agreement import SAME_LENGTH, SAME_TOKENS, SAMPLING_REASON, UNAVAILABLE
from llenergymeasure.orchestrator.analysis.formatting import compare_table, has_agreement, ratio_text, share_text, with_ci
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.analysis.headlines import headlines
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.analysis.results import StudyResults, study_file_text
from llenergymeasure.orchestrator.analysis.summary import ENERGY, LATENCY, THROUGHPUT, energy_reason, swept_keys
from llenergymeasure.orchestrator.execution.layout import StudyLayout
from llenergymeasure.orchestrator.study.precision import AUTO

MAX_POWER_RUNS = 8

ENVIRONMENT_COLUMNS = (
    ("GPUs", "environment.gpus"),
    ("GPU driver", "environment.gpu_driver"),
    ("CPU", "environment.cpu_model"),
    ("torch", "environment.torch"),
    ("transformers", "environment.transformers"),
    ("image", "image_ref"),
    ("image id", "image_id"),
    ("energy source", "energy_source"),
    ("llem version", "tool_version"),
    ("llem commit", "tool_commit"),
)

COST_ROWS = (
    (ENERGY_KWH, "energy, kWh per million output tokens", 4),
    (FACILITY_KWH, "facility energy (x PUE), kWh per million output tokens", 4),
    (ENERGY_COST, "energy cost per million output tokens", 4),
    (GPU_TIME_COST, "GPU-time cost per million output tokens", 4),
    (TOTAL_COST, "total cost per million output tokens", 4),
    (CO2, "CO2, g per million output tokens", 2),
)



def _distinct(runs: pd.DataFrame, col: str) -> str:
    if col not in runs:
        return "n/a"
    vals = [str(v) for v in runs[col].dropna().unique() if str(v)]
    return ", ".join(vals) if vals else "n/a"


def _window_series(run_dir: Path) -> tuple[pd.DataFrame | None, str]:
    """(t_s, value) of one run's measured window: summed GPU power, else the run
    process's CPU utilisation; and which one it is ('power' | 'cpu' | '')."""
    try:
        ts = pd.read_parquet(run_dir / TIMESERIES_FILE)
    except (OSError, ValueError):
        return None, ""
    win = ts[ts["phase"] == "window"]
    if win.empty:
        return None, ""
    t0 = win["t_s"].min()
    gpu = win[(win["device"] != "process") & win["power_w"].notna()]
    if not gpu.empty:
        s = gpu.groupby("t_s", as_index=False)["power_w"].sum()
        return s.assign(t_s=s["t_s"] - t0).rename(columns={"power_w": "value"}), "power"
    proc = win[(win["device"] == "process") & win["utilization_pct"].notna()]
    if proc.empty:
        return None, ""
    s = proc[["t_s", "utilization_pct"]].rename(columns={"utilization_pct": "value"})
    return s.assign(t_s=s["t_s"] - t0), "cpu"


def _power_section(results: StudyResults, run_ids: list[str] | None = None) -> dict[str, Any]:
    """The chosen runs, or the first finished run of each configuration (up to MAX_POWER_RUNS)."""
    runs = results.runs
    if run_ids:
        unknown = [r for r in run_ids if r not in set(runs["run_id"])]
        if unknown:
            raise UserError(f"--runs: no run {', '.join(unknown)} in {results.study_dir}; "
                            f"run ids look like {runs['run_id'].iloc[0]} (see manifest.json)")
        chosen = runs[runs["run_id"].isin(run_ids) & (runs["status"] == "done")]
    else:
        chosen = (runs[runs["status"] == "done"].sort_values(["experiment_index", "cycle"])
                  .groupby("experiment_index").head(1).head(MAX_POWER_RUNS))
    power, cpu = [], []
    for _, r in chosen.iterrows():
        series, kind = _window_series(results.study_dir / r["run_dir"])
        label = f"{r['experiment_index']}: {r['label']} ({r['run_id']})"
        if kind == "power":
            power.append((label, series))
        elif kind == "cpu":
            cpu.append((label, series))
    out: dict[str, Any] = {"runs": [f"{r['run_id']} ({r['label']})" for _, r in chosen.iterrows()],
                           "chart": None, "kind": None}  # no chart: no finished run recorded a series
    if power:
        out["chart"] = charts.timeseries_chart(power, "value", "GPU power (W)", "Power during the measured window")
        out["kind"] = "power"
    elif cpu:
        out["chart"] = charts.timeseries_chart(
            cpu, "value", "CPU use of the run process (%)", "No power samples: CPU use during the measured window")
        out["kind"] = "cpu"
    return out


def _summary_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for _, r in summary.iterrows():
        rows.append({
            "index": r["experiment_index"], "label": r["label"], "backend": r["backend"],
            "reference": bool(r["is_reference"]), "runs": f"{r['runs_done']}/{r['runs_planned']}",
            "throughput": with_ci(r, THROUGHPUT), "throughput_ratio": ratio_text(r, THROUGHPUT),
            "energy": with_ci(r, ENERGY, 3), "energy_ratio": ratio_text(r, ENERGY),
            "power": with_ci(r, "avg_power_w"), "memory": with_ci(r, "peak_memory_mb", 0),
            "pareto": None if is_missing(r.get("pareto_throughput_energy")) else bool(r["pareto_throughput_energy"]),
            "flags": r["flags"],
        })
    return rows


LATENCY_COLUMNS = tuple(f"{m}_ms_p{p}" for m in ("ttft", "itl", "tpot", "e2e") for p in (50, 90, 99))


def _latency_header(column: str) -> str:
    """`ttft_ms_p50` -> `TTFT p50 ms`, as the summary table names them."""
    metric, unit, p = column.split("_")
    return f"{metric.upper()} {p} {unit}"


def _latency_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"index": r["experiment_index"], "label": r["label"],
             **{c: with_ci(r, c, 2 if c.startswith(("itl", "tpot")) else 1) for c in LATENCY_COLUMNS}}
            for _, r in summary.iterrows()]


# (metric, header, digits): the figures a cross-backend comparison turns on, in the side-by-side table
SIDE_BY_SIDE = (
    (THROUGHPUT, "output tokens/s", 1),
    ("ttft_ms_p50", "TTFT p50 ms", 1),
    ("tpot_ms_p50", "TPOT p50 ms", 2),
    ("e2e_ms_p50", "E2E p50 ms", 1),
    (ENERGY, "J per output token", 3),
)


def _side_by_side(summary: pd.DataFrame, has_energy: bool) -> dict[str, Any]:
    """Every configuration beside the reference on throughput, median latencies and energy per
    token, each cell the mean ± CI half-width over its ratio to the reference with its 95% CI,
    and whether it generated the reference's tokens: one table to read a cross-backend study by."""
    metrics = [m for m in SIDE_BY_SIDE if has_energy or m[0] != ENERGY]
    backends = list(dict.fromkeys(str(b) for b in summary["backend"])) if not summary.empty else []
    return {
        "title": "Backends side by side" if len(backends) > 1 else "Configurations side by side",
        "backends": ", ".join(backends[:-1]) + " and " + backends[-1] if len(backends) > 1 else None,
        "columns": [{"key": m, "header": h} for m, h, _ in metrics],
        "agreement": has_agreement(summary),
        "rows": [{"index": r["experiment_index"], "label": r["label"], "backend": r["backend"],
                  "reference": bool(r["is_reference"]),
                  "cells": {m: {"value": with_ci(r, m, d), "ratio": ratio_text(r, m)} for m, _, d in metrics},
                  "same_tokens": share_text(r, SAME_TOKENS)}
                 for _, r in summary.iterrows()],
    }


def _same_output(summary: pd.DataFrame) -> dict[str, Any]:
    """The "Same output?" section: per configuration, the requests that generated exactly the
    reference's tokens, and those of the same length, or why they were not compared."""
    rows = [{"index": r["experiment_index"], "label": r["label"], "backend": r["backend"],
             "reference": bool(r["is_reference"]),
             "tokens": share_text(r, SAME_TOKENS), "length": share_text(r, SAME_LENGTH),
             "tokens_pct": None if is_missing(r.get(SAME_TOKENS)) else f"{float(r[SAME_TOKENS]):.0%}",
             "why_not": r.get(UNAVAILABLE) if not is_missing(r.get(UNAVAILABLE)) else ""}
            for _, r in summary.iterrows()]
    sampled = UNAVAILABLE in summary and bool((summary[UNAVAILABLE] == SAMPLING_REASON).any())
    return {"rows": rows, "sampled": sampled}


def _cost_rows(results: StudyResults) -> list[dict[str, Any]]:
    s = results.summary
    rows = []
    for col, title, digits in COST_ROWS:
        if f"{col}_mean" in s:
            rows.append({"title": title, "values": [with_ci(r, col, digits) for _, r in s.iterrows()]})
    return rows


def chart_axes(summary: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The x axes to chart. Backend-scoped keys that play the same role on each
    backend (one swept key per backend, e.g. pytorch.batch_size and
    vllm.max_num_seqs) share one axis, one line per backend; `backend` itself is
    then shown by those lines rather than a chart of its own."""
    scoped: dict[str, list[str]] = {}
    for k in keys:
        head = k.split(".", 1)[0]
        if head in BACKENDS and "." in k:
            scoped.setdefault(head, []).append(k)
    if len(scoped) >= 2 and all(len(v) == 1 for v in scoped.values()):
        joint = [v[0] for v in scoped.values()]
        name = " / ".join(joint)
        summary = summary.copy()
        summary[name] = [next((r[k] for k in joint if not is_missing(r[k])), None) for _, r in summary.iterrows()]
        rest = [k for k in keys if k not in joint and k != "backend"]
        return summary, [name, *rest]
    return summary, keys


def _charts(results: StudyResults, keys: list[str], energy: bool) -> list[dict[str, str]]:
    out = []
    s, axes = chart_axes(results.summary, keys)
    for k in axes:
        out.append({"title": f"Throughput by {k}",
                    "uri": charts.metric_by_parameter(s, k, THROUGHPUT, "output tokens/s")})
        if energy:
            out.append({"title": f"Energy per output token by {k}",
                        "uri": charts.metric_by_parameter(s, k, ENERGY, "J per output token")})
    return out


def _warnings(runs: pd.DataFrame) -> list[dict[str, str]]:
    out = []
    for _, r in runs.iterrows():
        for w in str(r.get("warnings") or "").split(" | "):
            if w and w != "None":
                out.append({"run": r["run_id"], "label": r["label"], "warning": w})
    return out


def load_lock_summary(layout: StudyLayout) -> dict[str, Any] | None:
    """A publication study's lock (study.lock.yaml's `lock:`), or None when it was not one."""
    if not layout.study_lock.exists():
        return None
    try:
        return dict(yaml.safe_load(layout.study_lock.read_text(encoding="utf-8")).get("lock") or {})
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _lock_section(results: StudyResults) -> dict[str, Any] | None:
    layout = results.manifest.layout
    lock = load_lock_summary(layout)
    if lock is None:
        return None
    images = lock.get("images") or {}
    return {
        "files": [layout.study_lock.name, layout.environment.name, layout.reproduce_md.name],
        "items": [
            ("llem", f"{lock.get('tool_version')} at commit {lock.get('tool_commit')}"),
            ("runner", str(lock.get("runner"))),
            ("run order", " ".join(lock.get("run_order") or [])),
            *((f"model {m}", str(r)) for m, r in (lock.get("models") or {}).items()),
            *((f"dataset {d}", str(h)) for d, h in (lock.get("datasets") or {}).items()),
            *((f"image {b}", f"{i.get('tag')} id {i.get('id')}") for b, i in images.items()),
            ("requirements.lock", f"sha256:{lock.get('requirements_lock_sha256')}"),
        ],
    }


def _reproduction_section(results: StudyResults) -> dict[str, Any] | None:
    loaded = load_reproduction(results)
    if loaded is None:
        return None
    table, diffs, original = loaded
    headers, rows = compare_table(table)
    return {"original": str(original), "diffs": diffs, "headers": [*headers, "verdict"],
            "rows": [[*row, v] for row, v in zip(rows, table["verdict"])],
            "tolerance": float(table["tolerance"].iloc[0]) if len(table) else None}


def _findings(results: StudyResults, keys: list[str], no_energy: str | None) -> dict[str, Any]:
    """The headline sentences, or, when no run finished, why there are none: a study whose
    runs all failed still gets its report, and that report says so first."""
    runs = results.runs
    n_done = int((runs["status"] == "done").sum()) if len(runs) else 0
    if n_done:
        return {"headlines": headlines(results.summary, runs, keys, no_energy) if keys else [], "no_results": None}
    counts = ", ".join(f"{n} {state}" for state, n in runs["status"].value_counts().items())
    return {"headlines": [], "no_results": f"No run of this study finished ({counts}), so there are no "
                                           "figures: nothing was measured to summarise, chart or compare"}


def render_report(results: StudyResults, power_runs: list[str] | None = None) -> str:
    runs, summary, m = results.runs, results.summary, results.manifest
    keys = swept_keys([e.model_dump() for e in m.experiments])
    keys = [k for k in keys if k in summary]
    findings = _findings(results, keys, energy_reason(runs))
    if findings["no_results"]:
        keys = []  # no chart of settings nothing was measured for
    no_energy = energy_reason(runs)
    has_energy = f"{ENERGY}_mean" in summary and bool(summary[f"{ENERGY}_mean"].notna().any())
    pareto = []
    if has_energy:
        pareto.append({"title": "Throughput against energy per token", "uri": charts.pareto_chart(
            summary, THROUGHPUT, ENERGY, "pareto_throughput_energy", "output tokens/s", "J per output token")})
        if summary[f"{LATENCY}_mean"].notna().any():
            pareto.append({"title": "Latency against energy per token", "uri": charts.pareto_chart(
                summary, LATENCY, ENERGY, "pareto_latency_energy", "TTFT p50 (ms)", "J per output token")})
    gpu = gpu_settings.report_parts(summary, runs, keys, has_energy)  # a sweep of gpu.* settings: its trade-off
    findings["headlines"] = findings["headlines"] + gpu["headlines"]
    latency_chart = None
    if not summary.empty and summary["ttft_ms_p50_mean"].notna().any():
        latency_chart = charts.grouped_bars(
            summary, [("ttft_ms_p50", "p50"), ("ttft_ms_p90", "p90"), ("ttft_ms_p99", "p99")],
            "ms", "Time to first token by configuration (mean, 95% CI)")
    failed = runs[runs["status"] == "failed"]
    ref = summary[summary["is_reference"]]
    env = runs[runs["status"] == "done"]
    context = {
        "name": results.name,
        "study_dir": str(results.study_dir),
        "generated_at": utc_now(),
        "tool_version": __version__,
        "created_at": m.created_at,
        "runner": m.runner,
        "n_runs": len(runs),
        "counts": runs["status"].value_counts().to_dict(),
        "n_cycles": cycles_note(m.execution, summary),
        "order": m.execution.get("order"),
        "concurrency": concurrency_note(results.manifest),
        "reference": ref.iloc[0]["label"] if len(ref) else None,
        **findings,
        "energy_reason": no_energy,
        "has_energy": has_energy,
        "summary_rows": _summary_rows(summary),
        "latency_rows": _latency_rows(summary),
        "side_by_side": _side_by_side(summary, has_energy),
        "same_output": _same_output(summary),
        "latency_columns": [{"key": c, "header": _latency_header(c)} for c in LATENCY_COLUMNS],
        "latency_chart": latency_chart,
        "charts": _charts(results, keys, has_energy) + gpu["charts"],
        "pareto": pareto + gpu["pareto"],
        "phase_split": phase_split.report_section(summary),
        "serving": serving_section(summary, [e.model_dump() for e in m.experiments], has_energy, no_energy),
        "power": _power_section(results, power_runs),
        "cost_rows": _cost_rows(results),
        "cost_columns": [f"{r['experiment_index']}" for _, r in summary.iterrows()],
        "costs": results.costs,
        "cost_sources": results.cost_sources,
        "currency": results.costs.currency,
        "warnings": _warnings(runs),
        "failed": [{"run": r["run_id"], "label": r["label"], "error": r["error"] or "unknown"}
                   for _, r in failed.iterrows()],
        "environment": [(title, _distinct(env, col)) for title, col in ENVIRONMENT_COLUMNS],
        "study_file": study_file_text(results),
        "lock": _lock_section(results),
        "reproduction": _reproduction_section(results),
        "study_file_name": m.study_file,
    }
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return templates.get_template("report.html.j2").render(**context)


def write_report(results: StudyResults, path: Path | None = None, power_runs: list[str] | None = None) -> Path:
    path = path or results.manifest.layout.report
    write_bytes_atomic(path, render_report(results, power_runs).encode("utf-8"))
    return path


def cycles_note(execution: dict, summary: pd.DataFrame) -> str:
    """How many times each configuration ran: the planned count, or for `n_cycles: auto` the
    range actually run ("3-5 (auto, target ±5%)"), from the summary's own `cycles_run`, so
    the report never says "auto cycle(s)"."""
    planned = execution.get("n_cycles")
    if planned != AUTO:
        return str(planned)
    per = summary["cycles_run"] if "cycles_run" in summary else pd.Series(dtype=int)
    span = "?" if per.empty else (f"{per.min()}" if per.min() == per.max() else f"{per.min()}-{per.max()}")
    target = execution.get("target_ci_pct")
    return f"{span} (auto" + (f", target ±{target:g}%" if target is not None else "") + ")"
