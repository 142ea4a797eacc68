"""The report's charts: matplotlib figures rendered to SVG data URIs, so the HTML
file needs nothing from the network (or from disk) to show them."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

matplotlib.rcParams.update({
    "svg.fonttype": "none",  # text stays text: smaller files, crisp at any zoom
    "svg.hashsalt": "llem",  # stable ids: the same data gives the same file
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
})

WIDTH, HEIGHT = 6.4, 3.6
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _uri(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None  # inf (serving.request_rate) has no place on a numeric axis


def _err(rows: pd.DataFrame, m: str) -> tuple[list[float], list[list[float]]]:
    means, lo, hi = [], [], []
    for _, r in rows.iterrows():
        mean = _num(r[f"{m}_mean"])
        means.append(mean if mean is not None else math.nan)
        low, high = _num(r[f"{m}_ci95_low"]), _num(r[f"{m}_ci95_high"])
        lo.append(mean - low if mean is not None and low is not None else 0.0)
        hi.append(high - mean if mean is not None and high is not None else 0.0)
    return means, [lo, hi]


def metric_by_parameter(summary: pd.DataFrame, param: str, metric: str, ylabel: str) -> str:
    """Mean and 95% CI of `metric` against swept `param`, one line per backend."""
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    values = [v for v in summary[param].tolist() if not pd.isna(v)]
    numeric = all(_num(v) is not None and not isinstance(v, bool) for v in values)
    categories = list(dict.fromkeys(str(v) for v in values))
    for i, (backend, rows) in enumerate(summary.groupby("backend", sort=False)):
        rows = rows[rows[param].notna()]
        if rows.empty:
            continue
        if numeric:
            rows = rows.assign(_x=[float(v) for v in rows[param]]).sort_values("_x")
            xs = rows["_x"].tolist()
        else:
            xs = [categories.index(str(v)) for v in rows[param]]
        means, err = _err(rows, metric)
        ax.errorbar(xs, means, yerr=err, marker="o", capsize=4, color=COLOURS[i % len(COLOURS)], label=str(backend))
    if numeric and values and min(float(v) for v in values) > 0 and max(float(v) for v in values) / min(
            float(v) for v in values) >= 8:
        ax.set_xscale("log", base=2)
        ticks = sorted({float(v) for v in values})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    elif not numeric:
        ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0)
    ax.set_xlabel(param)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    if summary["backend"].nunique() > 1:
        ax.legend(title="backend", frameon=False)
    ax.set_title(f"{ylabel} by {param} (mean, 95% CI)", fontsize=10)
    return _uri(fig)


def pareto_chart(summary: pd.DataFrame, x: str, y: str, front: str, xlabel: str, ylabel: str) -> str:
    """Each configuration as a point with CI bars; the frontier joined by a line."""
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT + 0.6))
    for i, (backend, rows) in enumerate(summary.groupby("backend", sort=False)):
        xm, xe = _err(rows, x)
        ym, ye = _err(rows, y)
        ax.errorbar(xm, ym, xerr=xe, yerr=ye, fmt="o", capsize=3, color=COLOURS[i % len(COLOURS)],
                    label=str(backend))
        for (_, r), px, py in zip(rows.iterrows(), xm, ym):
            ax.annotate(str(r["experiment_index"]), (px, py), textcoords="offset points", xytext=(5, 5), fontsize=8)
    on = summary[summary[front].fillna(False).astype(bool)]
    if len(on) > 1:
        on = on.sort_values(f"{x}_mean")
        ax.plot(on[f"{x}_mean"], on[f"{y}_mean"], "--", color="#555", linewidth=1, label="Pareto frontier")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(f"{ylabel} against {xlabel} (numbers: configurations)", fontsize=10)
    return _uri(fig)


def grouped_bars(summary: pd.DataFrame, metrics: Sequence[tuple[str, str]], ylabel: str, title: str) -> str:
    """One group of bars per configuration, one bar per metric, with 95% CI whiskers."""
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    n = len(metrics)
    width = 0.8 / n
    xs = list(range(len(summary)))
    for j, (m, label) in enumerate(metrics):
        means, err = _err(summary, m)
        ax.bar([x + (j - (n - 1) / 2) * width for x in xs], means, width, yerr=err, capsize=2,
               color=COLOURS[j % len(COLOURS)], label=label)
    ax.set_xticks(xs, [str(i) for i in summary["experiment_index"]])
    ax.set_xlabel("configuration")
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=8, ncol=n)
    ax.set_title(title, fontsize=10)
    return _uri(fig)


def timeseries_chart(series: Sequence[tuple[str, pd.DataFrame]], column: str, ylabel: str, title: str) -> str:
    """`column` against time (s) within each run's measured window, one line per run."""
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    for i, (label, df) in enumerate(series):
        ax.plot(df["t_s"], df[column], color=COLOURS[i % len(COLOURS)], linewidth=1.2, label=label)
    ax.set_xlabel("time in the measured window (s)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=10)
    return _uri(fig)


def setting_tradeoff_chart(summary: pd.DataFrame, param: str, front: str, metrics: Sequence[tuple[str, str]]) -> str:
    """One panel per (metric, label) against a swept numeric setting (a GPU power limit, a
    clock), mean and 95% CI, one line per backend; configurations on the `front` Pareto
    frontier filled and starred, the others hollow, so a reader sees the trade-off curve
    and where on it nothing is dominated."""
    fig, axes = plt.subplots(len(metrics), 1, figsize=(WIDTH, HEIGHT * 0.75 * len(metrics)), sharex=True)
    axes = list(axes) if len(metrics) > 1 else [axes]
    rows = summary[summary[param].notna()].copy()
    rows["_x"] = [_num(v) if _num(v) is not None else i for i, v in enumerate(rows[param])]
    rows = rows.sort_values("_x")
    on = rows[front].fillna(False).astype(bool) if front in rows else pd.Series(False, index=rows.index)
    for ax, (metric, label) in zip(axes, metrics):
        for i, (backend, group) in enumerate(rows.groupby("backend", sort=False)):
            means, err = _err(group, metric)
            colour = COLOURS[i % len(COLOURS)]
            ax.errorbar(group["_x"], means, yerr=err, marker="o", mfc="white", capsize=3, color=colour,
                        label=str(backend))
            best = group[on.loc[group.index]]
            if not best.empty:
                ax.plot(best["_x"], [_num(v) for v in best[f"{metric}_mean"]], "*", markersize=12, color=colour,
                        label="Pareto frontier" if i == 0 else None)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    axes[-1].set_xlabel(param)
    axes[0].legend(frameon=False, fontsize=8)
    axes[0].set_title(f"{' and '.join(lab for _, lab in metrics)} by {param} (mean, 95% CI; "
                      "stars: energy-latency Pareto frontier)", fontsize=9)
    return _uri(fig)
