"""Numbers as text, the same everywhere they are read: the terminal, the markdown
export and the HTML report (a mean with the half-width of its 95% interval, a ratio
with its interval, the summary, cost and comparison tables as rows of cells)."""

from __future__ import annotations

import math

import pandas as pd

from llenergymeasure.orchestrator.analysis.agreement import COMPARED, SAME_LENGTH
from llenergymeasure.orchestrator.analysis.costs import CO2, ENERGY_COST, ENERGY_KWH, FACILITY_KWH, GPU_TIME_COST, TOTAL_COST
from llenergymeasure.orchestrator.analysis.stats import is_missing


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if abs(v) >= 100 or digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if abs(v) >= 0.01 else f"{v:.3g}"


def with_ci(r: pd.Series, m: str, digits: int = 1) -> str:
    """`mean ± half-width of the 95% CI` (or the mean alone when there is no interval)."""
    mean, lo, hi = r.get(f"{m}_mean"), r.get(f"{m}_ci95_low"), r.get(f"{m}_ci95_high")
    if is_missing(mean):
        return "n/a"
    text = fmt(float(mean), digits)
    if not is_missing(lo) and not is_missing(hi):
        text += f" ± {fmt((float(hi) - float(lo)) / 2, digits)}"
    return text


def ratio_text(r: pd.Series, m: str) -> str:
    est, lo, hi = r.get(f"{m}_ratio"), r.get(f"{m}_ratio_ci95_low"), r.get(f"{m}_ratio_ci95_high")
    if is_missing(est):
        return "n/a"
    if r.get("is_reference"):
        return "reference"
    text = f"{float(est):.2f}x"
    if not is_missing(lo) and not is_missing(hi):
        text += f" ({float(lo):.2f}-{float(hi):.2f})"
    return text


def share_text(r: pd.Series, share: str) -> str:
    """An agreement share as the counts behind it, `47/48` (requests whose output equals the
    reference's / requests compared): exact, where a rounded 100% could hide one difference."""
    value, n = r.get(share), r.get(COMPARED)
    if is_missing(value) or is_missing(n) or not n:
        return "n/a"
    return f"{round(float(value) * int(n))}/{int(n)}"


def has_agreement(summary: pd.DataFrame) -> bool:
    """Whether any configuration's output was compared with the reference's."""
    return SAME_LENGTH in summary and bool(summary[SAME_LENGTH].notna().any())


SUMMARY_COLUMNS = (
    ("output tok/s", lambda r: with_ci(r, "output_tokens_per_s")),
    ("tok/s vs ref", lambda r: ratio_text(r, "output_tokens_per_s")),
    ("J/output token", lambda r: with_ci(r, "energy_per_output_token_j", 4)),
    ("J/token vs ref", lambda r: ratio_text(r, "energy_per_output_token_j")),
    ("TTFT p50 ms", lambda r: with_ci(r, "ttft_ms_p50")),
    ("ITL p50 ms", lambda r: with_ci(r, "itl_ms_p50", 2)),
    ("TPOT p50 ms", lambda r: with_ci(r, "tpot_ms_p50", 2)),
    ("E2E p50 ms", lambda r: with_ci(r, "e2e_ms_p50")),
    ("peak MB", lambda r: fmt(r.get("peak_memory_mb_mean"), 0)),
)


def summary_table(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The summary as text cells: one row per configuration (also the markdown export).
    A summary without energy columns (a throughput-only publication) shows none. Output
    agreement is not a column here: at 200 characters the intervals already wrap, and it is
    in summary.parquet (csv/json) and the report's "Same output?" section."""
    energy = "energy_per_output_token_j_mean" in summary
    columns = [(h, get) for h, get in SUMMARY_COLUMNS if energy or "J/" not in h]
    headers = ["#", "settings", "runs", *(h for h, _ in columns), *(["pareto"] if energy else []), "flags"]
    rows = []
    for _, r in summary.iterrows():
        pareto = r.get("pareto_throughput_energy")
        rows.append([
            str(r["experiment_index"]) + ("*" if r.get("is_reference") else ""),
            str(r["label"]),
            f"{r['runs_done']}/{r['runs_planned']}",
            *(get(r) for _, get in columns),
            *([("yes" if pareto is True else ("n/a" if is_missing(pareto) else "no"))] if energy else []),
            str(r.get("flags") or ""),
        ])
    return headers, rows


def cost_table(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]] | None:
    """Cost/carbon columns per configuration (mean ± CI half-width), or None when no price was set."""
    cols = [(c, h) for c, h in ((ENERGY_KWH, "kWh/Mtok"), (FACILITY_KWH, "facility kWh/Mtok"),
                                (ENERGY_COST, "energy cost/Mtok"), (GPU_TIME_COST, "GPU-time cost/Mtok"),
                                (TOTAL_COST, "cost/Mtok"), (CO2, "gCO2/Mtok")) if f"{c}_mean" in summary]
    if not cols:
        return None
    currency = str(summary["currency"].iloc[0]) if "currency" in summary else ""
    headers = ["#", "settings", *(h.replace("cost", f"cost ({currency})") for _, h in cols)]
    rows = [[str(r["experiment_index"]), str(r["label"]), *(with_ci(r, c, 4) for c, _ in cols)]
            for _, r in summary.iterrows()]
    return headers, rows


def compare_table(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """`llem compare` rows as text: A and B with CIs, the change in % and whether it is real."""
    headers = ["settings", "metric", "A", "B", "change", "change 95% CI", "differs"]
    rows = []
    for _, r in table.iterrows():
        a = {"x_mean": r["a_mean"], "x_ci95_low": r["a_ci95_low"], "x_ci95_high": r["a_ci95_high"]}
        b = {"x_mean": r["b_mean"], "x_ci95_low": r["b_ci95_low"], "x_ci95_high": r["b_ci95_high"]}
        pct = r["change_pct"]
        lo, hi = r["change_ci95_low"], r["change_ci95_high"]
        ci = "n/a" if is_missing(lo) or is_missing(hi) else f"{fmt(float(lo), 3)} to {fmt(float(hi), 3)}"
        verdict = r["ci_excludes_zero"]
        rows.append([
            str(r["label"]), str(r["metric"]), with_ci(pd.Series(a), "x", 2), with_ci(pd.Series(b), "x", 2),
            "n/a" if is_missing(pct) else f"{float(pct):+.1f}%", ci,
            "n/a" if is_missing(verdict) else ("yes" if verdict else "no"),
        ])
    return headers, rows
