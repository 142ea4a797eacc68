"""Everything llem prints: the plan, live progress, the summary table."""

from __future__ import annotations

import math
import sys
import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from llenergymeasure.orchestrator.analysis.stats import is_missing
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.study.preflight import Placement
from llenergymeasure.orchestrator.study.spec import Study


def console() -> Console:
    c = Console(highlight=False)
    if not c.is_terminal:
        c = Console(highlight=False, width=200, no_color=True)
    return c


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if abs(v) >= 100 or digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if abs(v) >= 0.01 else f"{v:.3g}"


SHARED_COLUMNS = (
    ("model", lambda c: c.model + (f"@{c.model_revision[:12]}" if c.model_revision else "")),
    ("dataset", lambda c: c.dataset),
    ("prompts", lambda c: str(c.n_prompts)),
    ("in/out tokens", lambda c: f"{c.max_input_tokens}/{c.max_output_tokens}"),
)


def print_plan(
    out: Console,
    study: Study,
    runs: list[PlannedRun],
    resolved: dict[int, Placement],
    runner_desc: str,
    images: dict[str, str] | None = None,
    engines: dict[int, str] | None = None,
) -> None:
    ex = study.execution
    out.print(
        f"[bold]{study.name}[/bold]: {len(study.experiments)} experiment(s) x {ex.n_cycles} "
        f"cycle(s) = {len(runs)} run(s), order {ex.order}"
        + (f" (seed {ex.shuffle_seed})" if ex.order == "shuffled" else "")
    )
    out.print(f"runs on: {runner_desc}", markup=False)
    if ex.gap_between_runs_s or ex.gap_between_cycles_s:
        out.print(f"gaps: {ex.gap_between_runs_s:g} s between runs, {ex.gap_between_cycles_s:g} s between cycles")
    for note in study.notes:
        out.print(f"note: {note}", markup=False)
    # settings every experiment shares are printed once, not as columns
    varying = []
    for name, get in SHARED_COLUMNS:
        values = {get(e.config) for e in study.experiments}
        if len(values) == 1:
            out.print(f"{name}: {values.pop()}", markup=False)
        else:
            varying.append((name, get))
    t = Table(title="experiments", title_justify="left")
    cols = ["#", "id", "settings", "backend", "device", *(n for n, _ in varying)]
    if images:
        cols.append("image")
    if engines:
        cols.append("TensorRT-LLM engine")
    for col in cols:
        t.add_column(col, overflow="fold")
    for e in study.experiments:
        c = e.config
        row = [str(e.index), e.id[:12], e.label, c.backend, resolved[e.index].device]
        row += [get(c) for _, get in varying]
        if images:
            row.append(images.get(c.backend, ""))
        if engines:
            row.append(engines.get(e.index, ""))
        t.add_row(*row)
    out.print(t)
    out.print("order: " + " ".join(r.run_id for r in runs))


class Progress:
    """One line per run; on a terminal the running line updates with elapsed time."""

    def __init__(self, out: Console, total: int) -> None:
        self.out = out
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()
        self.live = out.is_terminal
        self._line = ""

    def _elapsed(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:d}:{s % 60:02d}"

    def start(self, run: PlannedRun, label: str) -> None:
        self._line = f"[{run.position}/{self.total}] {run.run_id} {label}"
        if self.live:
            sys.stdout.write(f"\r{self._line} ... (study {self._elapsed()})")
            sys.stdout.flush()
        else:
            self.out.print(f"{self._line} ... started (study {self._elapsed()})")

    def tick(self, run_elapsed: float) -> None:
        if self.live:
            sys.stdout.write(f"\r{self._line} ... {run_elapsed:4.0f} s (study {self._elapsed()})")
            sys.stdout.flush()

    def end(self, outcome: RunOutcome, seconds: float) -> None:
        self.done += 1
        if outcome.state == "done" and outcome.result is not None:
            m = outcome.result.metrics
            msg = f"done in {seconds:.1f} s: {m.output_tokens_per_s:,.1f} tok/s"
            if m.energy_per_output_token_j is not None:
                msg += f", {m.energy_per_output_token_j:.4g} J/token"
        else:
            msg = f"FAILED after {seconds:.1f} s: {outcome.error}"
        if self.live:
            sys.stdout.write("\r\033[K")
        self.out.print(f"{self._line} ... {msg}", markup=False)



def with_ci(r: pd.Series, m: str, digits: int = 1) -> str:
    """`mean ± half-width of the 95% CI` (or the mean alone when there is no interval)."""
    mean, lo, hi = r.get(f"{m}_mean"), r.get(f"{m}_ci95_low"), r.get(f"{m}_ci95_high")
    if is_missing(mean):
        return "n/a"
    text = _fmt(float(mean), digits)
    if not is_missing(lo) and not is_missing(hi):
        text += f" ± {_fmt((float(hi) - float(lo)) / 2, digits)}"
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


SUMMARY_COLUMNS = (
    ("output tok/s", lambda r: with_ci(r, "output_tokens_per_s")),
    ("tok/s vs ref", lambda r: ratio_text(r, "output_tokens_per_s")),
    ("J/output token", lambda r: with_ci(r, "energy_per_output_token_j", 4)),
    ("J/token vs ref", lambda r: ratio_text(r, "energy_per_output_token_j")),
    ("TTFT p50 ms", lambda r: with_ci(r, "ttft_ms_p50")),
    ("ITL p50 ms", lambda r: with_ci(r, "itl_ms_p50", 2)),
    ("peak MB", lambda r: _fmt(r.get("peak_memory_mb_mean"), 0)),
)


def summary_table(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The summary as text cells: one row per configuration (also the markdown export).
    A summary without energy columns (a throughput-only publication) shows none."""
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


def print_summary(out: Console, summary: pd.DataFrame, energy_note: str | None, reference: int = 1) -> None:
    t = Table(title="summary: mean ± 95% CI half-width across cycles; ratios to the reference (*) "
                    "with 95% CI; pareto: best throughput for its energy per token", title_justify="left")
    headers, rows = summary_table(summary)
    for col in headers:
        t.add_column(col, justify="left" if col in ("settings", "flags") else "right", overflow="fold",
                     no_wrap=col == "settings")
    for row in rows:
        t.add_row(*row)
    out.print(t)
    if energy_note:
        out.print(f"energy: n/a because {energy_note}", markup=False)
    print_costs(out, summary)


def cost_table(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]] | None:
    """Cost/carbon columns per configuration (mean ± CI half-width), or None when no price was set."""
    from llenergymeasure.orchestrator.analysis.costs import CO2, ENERGY_COST, ENERGY_KWH, FACILITY_KWH, GPU_TIME_COST, TOTAL_COST

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


def print_costs(out: Console, summary: pd.DataFrame) -> None:
    table = cost_table(summary)
    if table is None:
        return
    t = Table(title="cost and carbon per million output tokens (Mtok): mean ± 95% CI half-width; "
                    "n/a where energy or a GPU was not measured", title_justify="left")
    headers, rows = table
    for col in headers:
        t.add_column(col, justify="left" if col == "settings" else "right", overflow="fold")
    for row in rows:
        t.add_row(*row)
    out.print(t)


def compare_table(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """`llem compare` rows as text: A and B with CIs, the change in % and whether it is real."""
    headers = ["settings", "metric", "A", "B", "change", "change 95% CI", "differs"]
    rows = []
    for _, r in table.iterrows():
        a = {"x_mean": r["a_mean"], "x_ci95_low": r["a_ci95_low"], "x_ci95_high": r["a_ci95_high"]}
        b = {"x_mean": r["b_mean"], "x_ci95_low": r["b_ci95_low"], "x_ci95_high": r["b_ci95_high"]}
        pct = r["change_pct"]
        lo, hi = r["change_ci95_low"], r["change_ci95_high"]
        ci = "n/a" if is_missing(lo) or is_missing(hi) else f"{_fmt(float(lo), 3)} to {_fmt(float(hi), 3)}"
        verdict = r["ci_excludes_zero"]
        rows.append([
            str(r["label"]), str(r["metric"]), with_ci(pd.Series(a), "x", 2), with_ci(pd.Series(b), "x", 2),
            "n/a" if is_missing(pct) else f"{float(pct):+.1f}%", ci,
            "n/a" if is_missing(verdict) else ("yes" if verdict else "no"),
        ])
    return headers, rows
