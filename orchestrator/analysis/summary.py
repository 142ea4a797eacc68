"""`summary.parquet`: one row per configuration across cycles.

For every headline metric (and cost column, when prices are set): n, mean, std,
coefficient of variation and a 95% Student-t interval; the ratio of means to the
reference configuration with its 95% interval (see `orchestrator.stats`); the
Pareto frontiers; whether each configuration generated the same tokens as the reference
(`agreement.py`); and flags a reader must see before trusting a row.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.orchestrator.analysis import phase_split, stats
from llenergymeasure.orchestrator.analysis.agreement import COMPARED, NOT_READ, SAME_LENGTH, SAME_TOKENS, Agreement
from llenergymeasure.orchestrator.analysis import serving as serving_analysis
from llenergymeasure.orchestrator.execution.layout import StudyLayout
from llenergymeasure.orchestrator.study import precision
from llenergymeasure.orchestrator.study.analysis_section import DEFAULT_MAX_CV, Costs
from llenergymeasure.orchestrator.analysis.costs import add_cost_columns
from llenergymeasure.orchestrator.analysis.pareto import pareto_front
from llenergymeasure.orchestrator.analysis.energy_columns import is_energy_column
from llenergymeasure.orchestrator.analysis.tables import flatten

MIN_CYCLES = 3

# (column, higher is better); the order is the order of the report's tables
HEADLINE: tuple[tuple[str, bool], ...] = (
    ("output_tokens_per_s", True),
    ("requests_per_s", True),
    ("energy_per_output_token_j", False),
    ("energy_per_request_j", False),
    ("energy_j", False),
    ("avg_power_w", False),
    ("energy_delay_product_js", False),
    ("output_tokens_per_joule", True),
    ("ttft_ms_p50", False),
    ("ttft_ms_p90", False),
    ("ttft_ms_p99", False),
    ("itl_ms_p50", False),
    ("itl_ms_p90", False),
    ("itl_ms_p99", False),
    ("tpot_ms_p50", False),
    ("tpot_ms_p90", False),
    ("tpot_ms_p99", False),
    ("e2e_ms_p50", False),
    ("e2e_ms_p90", False),
    ("e2e_ms_p99", False),
    ("peak_memory_mb", False),
)
THROUGHPUT = "output_tokens_per_s"
ENERGY = "energy_per_output_token_j"
LATENCY = "ttft_ms_p50"
VARIANCE_CHECKED = (THROUGHPUT, ENERGY)  # the figures a reader compares configurations by


def swept_keys(experiments: list[dict[str, Any]]) -> list[str]:
    """Dotted keys that differ between configurations, in first-seen order."""
    keys: list[str] = []
    for e in experiments:
        for k in e.get("swept", {}):
            if k not in keys:
                keys.append(k)
    return keys


def _warning_codes(values: pd.Series) -> dict[str, int]:
    counts: dict[str, int] = {}
    for text in values.dropna():
        for w in str(text).split(" | "):
            if w:
                code = w.split(":", 1)[0]
                counts[code] = counts.get(code, 0) + 1
    return counts


def _flags(n_done: int, n_failed: int, n_other: int, codes: dict[str, int]) -> list[str]:
    flags = []
    if n_done < MIN_CYCLES:
        flags.append(f"n={n_done} < {MIN_CYCLES} cycles")
    if n_failed:
        flags.append(f"{n_failed} failed run(s)")
    if n_other:
        flags.append(f"{n_other} run(s) not finished")
    for code, k in codes.items():
        flags.append(f"validity warning {code} ({k} run(s))")
    return flags


def high_variance(row: dict[str, Any], max_cv: float) -> list[str]:
    """`high_variance` flags: the headline figures whose CV across cycles exceeds `max_cv` (a
    noisy machine: contention, throttling), with the CVs, so a reader sees it before the means."""
    out = []
    for m in VARIANCE_CHECKED:
        cv = row.get(f"{m}_cv")
        if cv is not None and not math.isnan(cv) and cv > max_cv:
            out.append(f"high_variance: {m} CV {cv:.0%} > {max_cv:.0%} (analysis.max_cv)")
    return out


def ci_target_not_met(values: Mapping[str, list[float]], cycles: int, target_pct: float | None) -> list[str]:
    """n_cycles: auto's flag for a configuration that stopped (at max_cycles, or on a failure)
    with its 95% CI still wider than the target: the same interval and rule it stopped on
    (study/precision.py), from the same finished runs."""
    if target_pct is None:
        return []
    judged = {m: precision.ci_half_width_pct(values[m]) for m in VARIANCE_CHECKED  # measured ones only
              if precision.clean(values.get(m, []))}
    flag = precision.not_met_flag(judged, target_pct, cycles) if judged else None
    return [flag] if flag else []


def metric_columns(costs: Costs) -> list[str]:
    """The summarised metrics: the headline ones, then the cost columns `costs` allows."""
    probe = pd.DataFrame({"energy_per_output_token_j": [], "output_tokens_per_s": [], "n_gpus": []})
    return [m for m, _ in HEADLINE] + add_cost_columns(probe, costs)


def summarise(runs: pd.DataFrame, experiments: list[dict[str, Any]], reference_index: int = 1,
              costs: Costs | None = None, include_energy: bool = True,
              max_cv: float = DEFAULT_MAX_CV, agreement: Mapping[int, Agreement] | None = None,
              ci_target_pct: float | None = None) -> pd.DataFrame:
    """One row per experiment of the manifest (in index order), whether or not any run finished.
    `include_energy=False`: no energy, power, CO2 or Pareto columns at all. `max_cv`: above
    this coefficient of variation across cycles, throughput or energy per token is flagged.
    `agreement`: each experiment's output agreement with the reference (`agreement.py`, read
    from the run directories), computed for this `reference_index`; without it the columns are
    there but empty, saying so. `ci_target_pct` (n_cycles: auto's target_ci_pct): a configuration
    whose throughput or energy-per-token interval is still wider is flagged `ci_target_not_met`."""
    runs = runs.copy()
    for col in ("experiment_index", "status"):
        if col not in runs:  # a study with no runs
            runs[col] = pd.Series(dtype=object)
    costs = costs or Costs()
    cost_cols = add_cost_columns(runs, costs)
    metrics = [m for m in [m for m, _ in HEADLINE] + cost_cols if include_energy or not is_energy_column(m)]
    metrics += serving_analysis.metric_columns(experiments)  # goodput, rates: serving studies only
    done = runs[runs["status"] == "done"]
    def column(idx: int, m: str) -> list[float]:
        if m not in done:  # a table from before the metric existed
            return []
        return pd.to_numeric(done.loc[done["experiment_index"] == idx, m], errors="coerce").tolist()

    values = {e["index"]: {m: column(e["index"], m) for m in metrics} for e in experiments}
    ref = values.get(reference_index, {})
    keys = swept_keys(experiments)
    rows = []
    for e in experiments:
        idx = e["index"]
        mine = runs[runs["experiment_index"] == idx]
        ok = mine[mine["status"] == "done"]
        n_failed = int((mine["status"] == "failed").sum())
        flat = flatten(e["config"])
        row: dict[str, Any] = {
            "experiment_index": idx,
            "experiment_id": e["id"],
            "label": e["label"],
            "backend": e["config"].get("backend"),
            **{k: flat.get(k, e.get("swept", {}).get(k)) for k in keys},
            "is_reference": idx == reference_index,
            "runs_planned": len(mine),
            "runs_done": len(ok),
            "runs_failed": n_failed,
            "cycles_run": int(mine["status"].isin(("done", "failed")).sum()),  # n_cycles: auto: per configuration
            "energy_source": (", ".join(sorted(set(ok["energy_source"].dropna()))) or None) if "energy_source" in ok else None,
            "energy_unavailable_reason": next(iter(ok["energy_unavailable_reason"].dropna()), None)
            if "energy_unavailable_reason" in ok else None,
        }
        for m in metrics:
            d = stats.describe(values[idx][m])
            r = stats.ratio(values[idx][m], ref.get(m, []))
            row.update({
                f"{m}_n": d.n, f"{m}_mean": d.mean, f"{m}_std": d.std, f"{m}_cv": d.cv,
                f"{m}_ci95_low": d.ci_low, f"{m}_ci95_high": d.ci_high,
                f"{m}_ratio": r.estimate, f"{m}_ratio_ci95_low": r.low, f"{m}_ratio_ci95_high": r.high,
            })
        row.update((agreement or {}).get(idx, NOT_READ).model_dump())
        flags = _flags(len(ok), n_failed, len(mine) - len(ok) - n_failed,
                       _warning_codes(ok["warnings"]) if "warnings" in ok else {})
        row.update(serving_analysis.saturation_columns(ok))  # serving: runs that fell behind their load
        flags += high_variance(row, max_cv)
        row.update(phase_split.summary_columns(ok, e["config"]))  # prefill/decode, decode CI propagated
        flags += phase_split.flags(row)
        flags += ci_target_not_met(values[idx], row["cycles_run"], ci_target_pct)
        row["flags"] = "; ".join(flags)
        row["flagged"] = bool(flags)
        if cost_cols:
            row["currency"] = costs.currency
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out[[SAME_TOKENS, SAME_LENGTH]] = out[[SAME_TOKENS, SAME_LENGTH]].astype("float64")  # all-None: still numbers
    out[COMPARED] = out[COMPARED].astype("int64")
    for k in keys:  # parquet needs one type per column: mixed swept values become text
        raw = [flatten(e["config"]).get(k, e.get("swept", {}).get(k)) for e in experiments]
        kinds = {type(v) for v in raw if v is not None}
        if kinds == {int}:
            out[k] = pd.array(raw, dtype="Int64")  # stays integer beside backends without it
        elif len(kinds) > 1 and kinds != {int, float} or kinds & {list, dict}:
            out[k] = [None if v is None else str(v) for v in raw]
    if not include_energy:
        return out.drop(columns=[c for c in out.columns if is_energy_column(c)])
    tps, etok, lat = (out[f"{m}_mean"].tolist() for m in (THROUGHPUT, ENERGY, LATENCY))
    out["pareto_throughput_energy"] = pd.array(pareto_front(tps, etok, maximise_x=True, maximise_y=False),
                                               dtype="boolean")
    out["pareto_latency_energy"] = pd.array(pareto_front(lat, etok, maximise_x=False, maximise_y=False),
                                            dtype="boolean")
    return out


def energy_reason(runs: pd.DataFrame) -> str | None:
    """Why no finished run has energy (None when some do, or none finished)."""
    done = runs[runs["status"] == "done"]
    if "energy_j" not in runs:
        return "this publication reports no energy (execution.publication.energy_required: false)"
    if done.empty or done["energy_j"].notna().any():
        return None
    reasons = done["energy_unavailable_reason"].dropna()
    return str(reasons.iloc[0]) if len(reasons) else "no energy source"


def write_summary(summary: pd.DataFrame, study_dir: Path) -> Path:
    buf = io.BytesIO()
    summary.to_parquet(buf, index=False)
    path = StudyLayout(study_dir).summary
    write_bytes_atomic(path, buf.getvalue())
    return path
