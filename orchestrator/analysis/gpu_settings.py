"""`gpu:` settings in the study's tables and report.

Runs: what the driver enforced during the window (backends/harness/readback.py), beside
the requested `gpu.*` columns the config gives: `enforced.power_limit_w` (the lowest of
the run's GPUs: the binding one), `enforced.sm_clock_mhz` and `enforced.memory_clock_mhz`
(the median over the run's GPUs of each GPU's median clock in the window).

Report: a study that sweeps a `gpu.*` setting reads as a trade-off curve, so its headline
says what the swept setting did to energy per token *and* latency, and a chart shows both
against it with the configurations no other beats on both marked (the Pareto frontier).
"""

from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from llenergymeasure.backends.harness.result import RunResult
from llenergymeasure.orchestrator.analysis import stats
from llenergymeasure.orchestrator.analysis.pareto import pareto_front
from llenergymeasure.orchestrator.analysis.stats import is_missing

LATENCY = "e2e_ms_p50"  # a request's whole latency: what a power cap stretches
ENERGY = "energy_per_output_token_j"


def readback_columns(result: RunResult) -> dict[str, Any]:
    """The enforced settings of one run's GPUs as runs.parquet columns (None on the CPU)."""
    rb = result.gpu_readback
    limits = [r.power_limit_w for r in rb if r.power_limit_w is not None]
    sm = [r.sm_clock_mhz_median for r in rb if r.sm_clock_mhz_median is not None]
    mem = [r.memory_clock_mhz_median for r in rb if r.memory_clock_mhz_median is not None]
    return {"enforced.power_limit_w": min(limits) if limits else None,
            "enforced.sm_clock_mhz": statistics.median(sm) if sm else None,
            "enforced.memory_clock_mhz": statistics.median(mem) if mem else None}


def swept_gpu_settings(keys: list[str]) -> list[str]:
    return [k for k in keys if k.startswith("gpu.")]


def _values(runs: pd.DataFrame, index: int, metric: str) -> list[float]:
    ok = runs[(runs["status"] == "done") & (runs["experiment_index"] == index)]
    return pd.to_numeric(ok[metric], errors="coerce").dropna().tolist() if metric in ok else []


def _ratio_words(r: stats.Interval, noun: str) -> str | None:
    if r.estimate is None:
        return None
    text = f"{r.estimate:.2f}x the {noun}"
    if r.low is not None and r.high is not None:
        text += f" (95% CI {r.low:.2f}-{r.high:.2f})"
        if not r.excludes(1.0):
            text += ", not distinguishable from no change"
    return text


def _show(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def gpu_headline(summary: pd.DataFrame, runs: pd.DataFrame, param: str) -> str:
    """What moving a swept gpu.* setting from the least to the most energy-efficient value
    did to energy per output token and to median end-to-end latency, with intervals."""
    rows = summary[[not is_missing(v) for v in summary[param]]] if param in summary else summary.iloc[0:0]
    rows = rows[rows["runs_done"] > 0]
    energy = rows[f"{ENERGY}_mean"] if f"{ENERGY}_mean" in rows else pd.Series(dtype=float)
    if len(rows) < 2 or energy.isna().all():
        return (f"{param}: fewer than two settings have energy per token, so its trade-off against latency "
                "cannot be shown.")
    best, worst = rows.loc[energy.astype(float).idxmin()], rows.loc[energy.astype(float).idxmax()]
    parts = [w for w in (
        _ratio_words(stats.ratio(_values(runs, best["experiment_index"], ENERGY),
                                 _values(runs, worst["experiment_index"], ENERGY)), "energy per output token"),
        _ratio_words(stats.ratio(_values(runs, best["experiment_index"], LATENCY),
                                 _values(runs, worst["experiment_index"], LATENCY)), "median end-to-end latency"),
    ) if w]
    on_front = rows[rows.get("pareto_gpu_energy_latency", pd.Series(False, index=rows.index)).fillna(False)
                    .astype(bool)] if "pareto_gpu_energy_latency" in rows else rows.iloc[0:0]
    front = ", ".join(_show(v) for v in on_front[param]) or "none"
    return (f"Setting {param} to {_show(best[param])} instead of {_show(worst[param])} gives "
            + " and ".join(parts) + f"; settings on the energy-latency Pareto frontier: {front}.")


def add_gpu_frontier(summary: pd.DataFrame) -> pd.DataFrame:
    """`pareto_gpu_energy_latency`: no other configuration has both lower energy per token
    and lower median end-to-end latency."""
    if summary.empty or f"{ENERGY}_mean" not in summary or f"{LATENCY}_mean" not in summary:
        return summary
    out = summary.copy()
    out["pareto_gpu_energy_latency"] = pd.array(
        pareto_front(out[f"{LATENCY}_mean"].tolist(), out[f"{ENERGY}_mean"].tolist(),
                     maximise_x=False, maximise_y=False), dtype="boolean")
    return out


def report_parts(summary: pd.DataFrame, runs: pd.DataFrame, keys: list[str], has_energy: bool) -> dict[str, list]:
    """What a study sweeping gpu.* settings adds to the report: a headline per swept setting,
    and (with energy) energy per token and latency against it, plus latency against energy,
    each with the energy-latency Pareto frontier. Empty lists for any other study."""
    from llenergymeasure.orchestrator.analysis import charts

    params = swept_gpu_settings(keys)
    if not params or summary.empty:
        return {"headlines": [], "charts": [], "pareto": []}
    s = add_gpu_frontier(summary)
    out: dict[str, list] = {"headlines": [gpu_headline(s, runs, p) for p in params], "charts": [], "pareto": []}
    if not has_energy or "pareto_gpu_energy_latency" not in s:
        return out
    for p in params:
        out["charts"].append({"title": f"Energy per output token and latency by {p}", "uri": charts.setting_tradeoff_chart(
            s, p, "pareto_gpu_energy_latency", [(ENERGY, "J per output token"), (LATENCY, "E2E p50 (ms)")])})
    if s[f"{LATENCY}_mean"].notna().any():
        out["pareto"].append({"title": "End-to-end latency against energy per token", "uri": charts.pareto_chart(
            s, LATENCY, ENERGY, "pareto_gpu_energy_latency", "E2E p50 (ms)", "J per output token")})
    return out
