"""The serving scenario in the study's analysis: its summary columns, and the report's
serving section, which answers the question a serving study asks: at each load, which
configuration meets the latency targets (serving.slo) at the lowest energy per token?

Summary columns (summary.parquet, only in studies with serving experiments): mean, 95% CI
and the other statistics of SERVING_METRICS across cycles, as for every headline metric,
and `saturated_runs` / `saturated_share`: the finished runs whose load the deployment did
not keep up with (the `saturated` validity warning, backends/serving/metrics.py; it is
also in the flags, as every warning code is).

A configuration *meets the SLO at a load* when, in the mean over its cycles, at least
SLO_ATTAINMENT of its requests met every target and none of its runs was saturated (a
queue that keeps growing meets any target only for as long as the load lasts).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from llenergymeasure.orchestrator.analysis.formatting import fmt, with_ci
from llenergymeasure.orchestrator.analysis.stats import is_missing

# (column, higher is better): summarised like the headline metrics, in serving studies
SERVING_METRICS: tuple[tuple[str, bool], ...] = (
    ("goodput_rps", True),
    ("slo_met_share", True),
    ("offered_request_rate_rps", True),
    ("achieved_request_rate_rps", True),
)
SLO_ATTAINMENT = 0.95
ENERGY = "energy_per_output_token_j"
# the load's identity: what makes two experiments face the same load (slo and timeouts do not)
LOAD_KEYS = ("request_rate", "burstiness", "max_concurrency", "n_requests", "duration_s")
SLO_NAMES = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "itl_ms": "largest ITL", "e2e_ms": "E2E latency"}


def is_serving(experiments: list[Mapping[str, Any]]) -> bool:
    return any((e.get("config") or {}).get("scenario") == "serving" for e in experiments)


def metric_columns(experiments: list[Mapping[str, Any]]) -> list[str]:
    """The serving metrics to summarise: all of them in a study with serving experiments, else none."""
    return [m for m, _ in SERVING_METRICS] if is_serving(experiments) else []


def saturation_columns(ok: pd.DataFrame) -> dict[str, Any]:
    """How many of a configuration's finished runs were saturated, and their share (None when
    none was assessed: offline runs, an inf load)."""
    none = {"saturated_runs": None, "saturation_assessed_runs": None, "saturated_share": None}
    if "saturated" not in ok:
        return none
    assessed = ok["saturated"].dropna()
    if assessed.empty:
        return none
    n = int(assessed.astype(bool).sum())
    return {"saturated_runs": n, "saturation_assessed_runs": len(assessed), "saturated_share": n / len(assessed)}


# -- the report's section ------------------------------------------------------------------

def load_of(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(a key grouping experiments under the same load, the load's settings)."""
    s = config.get("serving") or {}
    load = {k: s.get(k) for k in LOAD_KEYS if s.get(k) is not None}
    return json.dumps(load, sort_keys=True, default=str), load


def load_label(load: Mapping[str, Any]) -> str:
    rate = load.get("request_rate")
    text = "every request at once (request_rate inf)" if rate == "inf" else f"{fmt(float(rate), 2)} requests/s"
    more = [f"{k} {v}" for k, v in load.items() if k != "request_rate" and not (k == "burstiness" and v == 1.0)]
    return text + (f" ({', '.join(more)})" if more else "")


def slo_text(slo: Mapping[str, float] | None) -> str | None:
    if not slo:
        return None
    parts = [f"{name} ≤ {float(slo[k]):g} ms" for k, name in SLO_NAMES.items() if slo.get(k) is not None]
    return ", ".join(parts)


def meets_slo(r: pd.Series) -> bool | None:
    """The configuration meets the SLO at its load (module docstring); None without an SLO."""
    share = r.get("slo_met_share_mean")
    if is_missing(share):
        return None
    saturated = r.get("saturated_runs")
    return float(share) >= SLO_ATTAINMENT and (is_missing(saturated) or int(saturated) == 0)


def _cell_rows(rows: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for _, r in rows.iterrows():
        sat, n = r.get("saturated_runs"), r.get("saturation_assessed_runs")
        assessed = "not assessed" if is_missing(n) else f"{int(sat)} of {int(n)} run(s)"
        ok = meets_slo(r)
        out.append({
            "index": r["experiment_index"], "label": r["label"], "backend": r["backend"],
            "runs": f"{r['runs_done']}/{r['runs_planned']}",
            "achieved": with_ci(r, "achieved_request_rate_rps", 2), "goodput": with_ci(r, "goodput_rps", 2),
            "slo_share": "n/a" if is_missing(r.get("slo_met_share_mean")) else
            f"{float(r['slo_met_share_mean']):.0%}" + ("" if is_missing(r.get("slo_met_share_ci95_low")) else
                                                       f" ({max(0.0, float(r['slo_met_share_ci95_low'])):.0%}-"
                                                       f"{min(1.0, float(r['slo_met_share_ci95_high'])):.0%})"),
            "meets": "n/a" if ok is None else "yes" if ok else "no",
            "ttft_p50": with_ci(r, "ttft_ms_p50", 1), "ttft_p99": with_ci(r, "ttft_ms_p99", 1),
            "tpot_p50": with_ci(r, "tpot_ms_p50", 2), "tpot_p99": with_ci(r, "tpot_ms_p99", 2),
            "e2e_p99": with_ci(r, "e2e_ms_p99", 1), "energy": with_ci(r, ENERGY, 3),
            "throughput": with_ci(r, "output_tokens_per_s", 1),
            "saturated": assessed,
        })
    return out


def _overlaps(a: pd.Series, b: pd.Series, m: str) -> bool:
    lo_a, hi_a, lo_b, hi_b = (a.get(f"{m}_ci95_low"), a.get(f"{m}_ci95_high"), b.get(f"{m}_ci95_low"),
                              b.get(f"{m}_ci95_high"))
    if any(is_missing(v) for v in (lo_a, hi_a, lo_b, hi_b)):
        return True  # no interval: the two cannot be told apart
    return float(lo_a) <= float(hi_b) and float(lo_b) <= float(hi_a)


def _configurations(n: int) -> str:
    return f"{n} configuration" + ("" if n == 1 else "s")


def answer(rows: pd.DataFrame, has_energy: bool, no_energy: str | None, slo: str | None) -> str:
    """One sentence: the configuration with the lowest energy per token that meets the SLO at
    this load, or that none does, or (energy unavailable) the best by goodput, saying so."""
    done = rows[rows["runs_done"] > 0]
    if done.empty:
        return "No configuration finished a run at this load."
    if slo:
        candidates = done[[meets_slo(r) is True for _, r in done.iterrows()]]
        if candidates.empty:
            return (f"No configuration meets the SLO ({slo}, for at least {SLO_ATTAINMENT:.0%} of requests, unsaturated) "
                    "at this load.")
        scope = f"meet{'s' if len(candidates) == 1 else ''} the SLO ({slo}, for at least {SLO_ATTAINMENT:.0%} of requests, unsaturated)"
    else:
        candidates = done
        scope = (f"serve{'s' if len(candidates) == 1 else ''} this load "
                 "(no serving.slo was set, so no latency target is checked)")
    energetic = candidates[candidates[f"{ENERGY}_mean"].notna()] if f"{ENERGY}_mean" in candidates else candidates.iloc[0:0]
    if has_energy and not energetic.empty:
        ranked = energetic.sort_values(f"{ENERGY}_mean")
        best = ranked.iloc[0]
        text = (f"Lowest energy per output token among the {_configurations(len(candidates))} that {scope}: "
                f"{best['label']} ({with_ci(best, ENERGY, 3)} J/token).")
        if len(ranked) > 1 and _overlaps(best, ranked.iloc[1], ENERGY):
            text += f" Its interval overlaps {ranked.iloc[1]['label']}'s: the two are not told apart."
        return text
    by = "goodput_rps" if slo else "output_tokens_per_s"
    ranked = candidates.sort_values(f"{by}_mean", ascending=False, na_position="last")
    best = ranked.iloc[0]
    why = f" ({no_energy})" if no_energy else ""
    what = "goodput" if slo else "output tokens/s"
    return (f"Energy per token was not measured{why}, so the answer is by {what} alone: of the "
            f"{_configurations(len(candidates))} that {scope}, {best['label']} has the highest "
            f"({with_ci(best, by, 2)}).")


def serving_section(summary: pd.DataFrame, experiments: list[Mapping[str, Any]], has_energy: bool,
                    no_energy: str | None) -> dict[str, Any] | None:
    """The report's serving section: one table and one answer per load level; None in a
    study without serving experiments."""
    if not is_serving(experiments) or summary.empty:
        return None
    by_index = {e["index"]: e["config"] for e in experiments}
    groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for idx, config in by_index.items():
        if config.get("scenario") != "serving":
            continue
        key, load = load_of(config)
        groups.setdefault(key, (load, []))[1].append(idx)
    levels = []
    for load, indices in sorted(groups.values(), key=lambda g: _rate_order(g[0])):
        rows = summary[summary["experiment_index"].isin(indices)]
        slos = {json.dumps((by_index[i].get("serving") or {}).get("slo"), sort_keys=True) for i in indices}
        slo = slo_text(json.loads(next(iter(slos)))) if len(slos) == 1 else "differs between configurations"
        levels.append({"label": load_label(load), "slo": slo, "rows": _cell_rows(rows),
                       "answer": answer(rows, has_energy, no_energy, slo)})
    return {"levels": levels, "attainment": f"{SLO_ATTAINMENT:.0%}", "has_energy": has_energy}


def _rate_order(load: Mapping[str, Any]) -> tuple[float, str]:
    rate = load.get("request_rate")
    return (float("inf") if rate == "inf" else float(rate or 0), json.dumps(load, sort_keys=True, default=str))


def serving_table(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]] | None:
    """`llem results`: per configuration of a serving study, the load it faced, what it achieved,
    its goodput and SLO share, and in how many runs it saturated; None for an offline study."""
    if summary.empty or "goodput_rps_mean" not in summary:
        return None
    headers = ["#", "settings", "offered req/s", "achieved req/s", "goodput req/s", "meeting SLO", "saturated"]
    rows = []
    for _, r in summary.iterrows():
        share = r.get("slo_met_share_mean")
        sat, n = r.get("saturated_runs"), r.get("saturation_assessed_runs")
        rows.append([str(r["experiment_index"]), str(r["label"]), fmt(r.get("offered_request_rate_rps_mean"), 2),
                     with_ci(r, "achieved_request_rate_rps", 2), with_ci(r, "goodput_rps", 2),
                     "n/a" if is_missing(share) else f"{float(share):.0%}",
                     "not assessed" if is_missing(n) else f"{int(sat)}/{int(n)} runs"])
    return headers, rows
