"""Prefill against decode in the study's tables (`measurement.phase_split`; each run's two
windows are backends/harness/phase_split.py's).

Per run (runs.parquet): the split's figures as the run measured them.

Per configuration (summary.parquet):

- `prefill_energy_per_input_token_j`: mean and 95% Student-t interval across cycles, like
  every other metric (it is measured directly: the prefill window's energy / its input tokens).
- `decode_energy_per_output_token_j`: a difference of two measured windows, so its interval
  is propagated from both rather than taken from the per-run differences alone:

      decode = (mean over cycles of E_full/pass - mean over cycles of E_prefill/pass) / k

  with k the decode tokens per pass (fixed by the configuration), and its 95% interval the
  Welch interval of that difference of means (stats.difference: each window's standard
  error across cycles added in quadrature, Welch-Satterthwaite degrees of freedom), divided
  by k. Treating the windows as independent ignores their (positive) correlation within a
  run, so the interval is conservative. An interval that includes zero is flagged
  `decode_energy_ci_spans_zero`: the windows could not be told apart, and the report shows
  the flag beside the figure rather than the figure alone.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from llenergymeasure.backends.harness.result import RunResult
from llenergymeasure.orchestrator.analysis import stats

PREFILL = "prefill_energy_per_input_token_j"
DECODE = "decode_energy_per_output_token_j"
SPANS_ZERO = "decode_energy_ci_spans_zero"
# (run column, PhaseSplit field)
RUN_COLUMNS = (
    (PREFILL, "prefill_energy_per_input_token_j"),
    (DECODE, "decode_energy_per_output_token_j"),
    ("prefill_time_per_input_token_s", "prefill_time_per_input_token_s"),
    ("decode_time_per_output_token_s", "decode_time_per_output_token_s"),
    ("phase_split.full_energy_per_pass_j", "full_energy_per_pass_j"),
    ("phase_split.prefill_energy_per_pass_j", "prefill_energy_per_pass_j"),
    ("phase_split.decode_tokens_per_pass", "decode_tokens_per_pass"),
    ("phase_split.prefill_passes", "prefill_passes"),
    ("phase_split.energy_unavailable_reason", "energy_unavailable_reason"),
)
DESCRIBED = (PREFILL, "prefill_time_per_input_token_s", "decode_time_per_output_token_s")


def run_columns(result: RunResult) -> dict[str, Any]:
    """One run's split as runs.parquet columns ({} for a run without phase_split)."""
    split = result.phase_split
    if split is None:
        return {}
    return {col: getattr(split, name) for col, name in RUN_COLUMNS}


def _numbers(done: pd.DataFrame, col: str) -> list[float]:
    return pd.to_numeric(done[col], errors="coerce").dropna().tolist() if col in done else []


def decode_interval(full_per_pass: list[float], prefill_per_pass: list[float],
                    decode_tokens_per_pass: float) -> stats.Interval:
    """Decode energy per output token with its 95% interval propagated from both windows."""
    if decode_tokens_per_pass <= 0:
        return stats.Interval(None, None, None)
    d = stats.difference(prefill_per_pass, full_per_pass)  # mean(full) - mean(prefill)
    k = decode_tokens_per_pass
    return stats.Interval(*(None if v is None else v / k for v in (d.estimate, d.low, d.high)))


def summary_columns(done: pd.DataFrame, config: dict[str, Any]) -> dict[str, Any]:
    """A configuration's split across its finished cycles ({} without phase_split)."""
    if not (config.get("measurement") or {}).get("phase_split"):
        return {}
    out: dict[str, Any] = {}
    for col in DESCRIBED:
        d = stats.describe(_numbers(done, col))
        out.update({f"{col}_n": d.n, f"{col}_mean": d.mean, f"{col}_ci95_low": d.ci_low,
                    f"{col}_ci95_high": d.ci_high})
    full = _numbers(done, "phase_split.full_energy_per_pass_j")
    prefill = _numbers(done, "phase_split.prefill_energy_per_pass_j")
    tokens = _numbers(done, "phase_split.decode_tokens_per_pass")
    k = sum(tokens) / len(tokens) if tokens else 0.0
    r = decode_interval(full, prefill, k)
    out.update({f"{DECODE}_n": min(len(full), len(prefill)), f"{DECODE}_mean": r.estimate,
                f"{DECODE}_ci95_low": r.low, f"{DECODE}_ci95_high": r.high,
                SPANS_ZERO: None if r.low is None or r.high is None else bool(r.low <= 0 <= r.high)})
    return out


def flags(row: dict[str, Any]) -> list[str]:
    """The summary flag for a decode figure whose interval includes zero."""
    if not row.get(SPANS_ZERO):
        return []
    return [f"{SPANS_ZERO}: decode energy per output token {row[f'{DECODE}_mean']:.3g} J, 95% CI "
            f"{row[f'{DECODE}_ci95_low']:.3g} to {row[f'{DECODE}_ci95_high']:.3g} J includes 0 (the full and "
            "prefill-only windows cannot be told apart); more cycles or a longer min_window_s narrow it"]


def report_section(summary: pd.DataFrame) -> dict[str, Any] | None:
    """The report's prefill/decode table, or None when no configuration split its energy."""
    if summary.empty or f"{DECODE}_mean" not in summary:
        return None
    rows = []
    for _, r in summary[summary[f"{DECODE}_n"].notna()].iterrows():
        rows.append({"index": r["experiment_index"], "label": r["label"],
                     "prefill": _interval_text(r, PREFILL), "decode": _interval_text(r, DECODE),
                     "decode_time": _interval_text(r, "decode_time_per_output_token_s", scale=1000, unit="ms"),
                     "spans_zero": bool(r.get(SPANS_ZERO)) if r.get(SPANS_ZERO) is not None
                     and not pd.isna(r.get(SPANS_ZERO)) else False})
    return {"rows": rows} if rows else None


def _interval_text(r: pd.Series, col: str, scale: float = 1.0, unit: str = "J") -> str:
    mean, lo, hi = (r.get(f"{col}_{s}") for s in ("mean", "ci95_low", "ci95_high"))
    if mean is None or pd.isna(mean):
        return "n/a"
    text = f"{mean * scale:.4g} {unit}"
    if lo is not None and hi is not None and not pd.isna(lo) and not pd.isna(hi):
        text += f" (95% CI {lo * scale:.4g} to {hi * scale:.4g})"
    return text
