"""One plain-language sentence per swept parameter: what changing it (and only it)
from the reference configuration did to energy per token and throughput."""

from __future__ import annotations

from typing import Any

import pandas as pd

from llenergymeasure.orchestrator.analysis import stats
from llenergymeasure.orchestrator.analysis.stats import is_missing
from llenergymeasure.orchestrator.analysis.summary import ENERGY, THROUGHPUT



def _same(a: Any, b: Any) -> bool:
    """Equal settings; a setting one configuration lacks (pandas' NA in a nullable column,
    whose `==` is NA, not False) equals only another missing one."""
    if is_missing(a) or is_missing(b):
        return is_missing(a) and is_missing(b)
    return bool(a == b)


def _values(runs: pd.DataFrame, index: int, metric: str) -> list[float]:
    ok = runs[(runs["status"] == "done") & (runs["experiment_index"] == index)]
    return pd.to_numeric(ok[metric], errors="coerce").dropna().tolist() if metric in ok else []


def _effect_text(r: stats.Interval, noun: str) -> str:
    if r.estimate is None:
        return ""
    text = f"{r.estimate:.2f}x the {noun}"
    if r.low is None or r.high is None:
        return text + " (no confidence interval: fewer than 2 finished cycles on one side)"
    text += f" (95% CI {r.low:.2f}-{r.high:.2f})"
    if r.excludes(1.0) is False:
        text += ", which is not distinguishable from no change"
    return text


def _effect(row: pd.Series, metric: str, noun: str) -> str:
    """The summary's ratio to the study's reference, as words."""
    est, lo, hi = (row.get(f"{metric}_ratio{s}") for s in ("", "_ci95_low", "_ci95_high"))
    return _effect_text(stats.Interval(*(None if is_missing(v) else float(v) for v in (est, lo, hi))), noun)


def _show(v: Any) -> str:
    if is_missing(v):  # a setting this configuration does not set: the backend's own default applies
        return "unset (the backend's default)"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def headline(summary: pd.DataFrame, runs: pd.DataFrame, param: str, keys: list[str],
             energy_reason: str | None) -> str:
    """Compare the last value of `param` with its baseline, all other swept settings
    equal. The baseline is the reference configuration where `param` applies to it,
    else (a setting of another backend) the first configuration it applies to."""
    applies = summary[[not is_missing(v) for v in summary[param]]]
    if applies.empty:
        return f"{param}: no configuration has this setting."
    ref = summary[summary["is_reference"]]
    base = ref.iloc[0] if len(ref) and not is_missing(ref.iloc[0][param]) else applies.iloc[0]
    others = [k for k in keys if k != param]
    group = summary[[all(_same(r[k], base[k]) for k in others) for _, r in summary.iterrows()]]
    changed = group[[not _same(v, base[param]) for v in group[param]]]
    changed = changed[changed["runs_done"] > 0]
    if changed.empty:
        return (f"{param}: no finished configuration differs from {base['label']} in {param} alone, "
                "so its effect cannot be isolated.")
    row = changed.iloc[-1]  # the last value swept: usually the far end of the range
    which = "the reference" if base["is_reference"] else "the first configuration with this setting"
    parts = []
    for metric, noun in ((ENERGY, "energy per output token"), (THROUGHPUT, "output throughput")):
        r = stats.ratio(_values(runs, row["experiment_index"], metric), _values(runs, base["experiment_index"], metric))
        if r.estimate is not None:
            parts.append(_effect_text(r, noun))
    sentence = f"Changing {param} from {_show(base[param])} ({which}) to {_show(row[param])} gives "
    if not parts:
        return sentence + "no comparable result."
    sentence += " and ".join(parts) + "."
    if not _values(runs, row["experiment_index"], ENERGY) and energy_reason:
        sentence += f" Energy was not measured: {energy_reason}."
    return sentence


def backend_headline(summary: pd.DataFrame, energy_reason: str | None) -> str:
    """Backends are compared at their best: settings named differently per backend
    (batch size, max_num_seqs, max_batch_size) cannot be matched one to one."""
    ok = summary[summary["runs_done"] > 0]
    metric, noun, what, best = (ENERGY, "lowest energy per output token", "energy per output token", "idxmin")
    if f"{ENERGY}_mean" not in ok or ok[f"{ENERGY}_mean"].isna().all():
        metric, noun, what, best = (THROUGHPUT, "highest output throughput", "output throughput", "idxmax")
    parts = []
    for backend, rows in ok.groupby("backend", sort=False):
        r = rows.loc[getattr(rows[f"{metric}_mean"].astype(float), best)()]
        ratio = _effect(r, metric, f"reference's {what}") if not r["is_reference"] else "the reference"
        parts.append(f"{backend} at its best ({r['label']}) reaches {ratio}")
    if len(parts) < 2:
        return "backend: fewer than two backends finished, so they cannot be compared."
    text = f"Comparing backends by their {noun}: " + "; ".join(parts) + "."
    if metric == THROUGHPUT and energy_reason:
        text += f" Energy was not measured: {energy_reason}."
    return text


def headlines(summary: pd.DataFrame, runs: pd.DataFrame, keys: list[str], energy_reason: str | None) -> list[str]:
    return [backend_headline(summary, energy_reason) if k == "backend"
            else headline(summary, runs, k, keys, energy_reason) for k in keys]
