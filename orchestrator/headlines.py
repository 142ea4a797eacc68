"""One plain-language sentence per swept parameter: what changing it (and only it)
from the reference configuration did to energy per token and throughput."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from orchestrator.summary import ENERGY, THROUGHPUT


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _same(a: Any, b: Any) -> bool:
    return (_missing(a) and _missing(b)) or a == b


def _effect(row: pd.Series, metric: str, noun: str) -> str:
    est, lo, hi = row.get(f"{metric}_ratio"), row.get(f"{metric}_ratio_ci95_low"), row.get(f"{metric}_ratio_ci95_high")
    if _missing(est):
        return ""
    text = f"{float(est):.2f}x the {noun}"
    if _missing(lo) or _missing(hi):
        return text + " (no confidence interval: fewer than 2 finished cycles on one side)"
    text += f" (95% CI {float(lo):.2f}-{float(hi):.2f})"
    if float(lo) <= 1.0 <= float(hi):
        text += ", which is not distinguishable from no change"
    return text


def _show(v: Any) -> str:
    return "n/a" if _missing(v) else str(v)


def headline(summary: pd.DataFrame, param: str, keys: list[str], energy_reason: str | None) -> str:
    ref = summary[summary["is_reference"]]
    if ref.empty:
        return f"{param}: no reference configuration."
    ref_row = ref.iloc[0]
    others = [k for k in keys if k != param]
    group = summary[[all(_same(r[k], ref_row[k]) for k in others) for _, r in summary.iterrows()]]
    changed = group[[not _same(v, ref_row[param]) for v in group[param]]]
    changed = changed[changed["runs_done"] > 0]
    if changed.empty:
        return (f"{param}: no finished configuration differs from the reference "
                f"({ref_row['label']}) in {param} alone, so its effect cannot be isolated.")
    row = changed.iloc[-1]  # the last value swept: usually the far end of the range
    parts = [p for p in (_effect(row, ENERGY, "energy per output token"),
                         _effect(row, THROUGHPUT, "output throughput")) if p]
    sentence = f"Changing {param} from {_show(ref_row[param])} (the reference) to {_show(row[param])} gives "
    if not parts:
        return sentence + "no comparable result."
    sentence += " and ".join(parts) + "."
    if _missing(row.get(f"{ENERGY}_ratio")) and energy_reason:
        sentence += f" Energy was not measured: {energy_reason}."
    return sentence


def backend_headline(summary: pd.DataFrame, energy_reason: str | None) -> str:
    """Backends are compared at their best: settings named differently per backend
    (batch size, max_num_seqs, max_batch_size) cannot be matched one to one."""
    ok = summary[summary["runs_done"] > 0]
    metric, noun, best = (ENERGY, "lowest energy per output token", "idxmin")
    if ok[f"{ENERGY}_mean"].isna().all():
        metric, noun, best = (THROUGHPUT, "highest output throughput", "idxmax")
    parts = []
    for backend, rows in ok.groupby("backend", sort=False):
        r = rows.loc[getattr(rows[f"{metric}_mean"].astype(float), best)()]
        ratio = _effect(r, metric, "reference's value") if not r["is_reference"] else "the reference"
        parts.append(f"{backend} at its best ({r['label']}) reaches {ratio}")
    if len(parts) < 2:
        return "backend: fewer than two backends finished, so they cannot be compared."
    text = f"Comparing backends by their {noun}: " + "; ".join(parts) + "."
    if metric == THROUGHPUT and energy_reason:
        text += f" Energy was not measured: {energy_reason}."
    return text


def headlines(summary: pd.DataFrame, keys: list[str], energy_reason: str | None) -> list[str]:
    return [backend_headline(summary, energy_reason) if k == "backend" else headline(summary, k, keys, energy_reason)
            for k in keys]
