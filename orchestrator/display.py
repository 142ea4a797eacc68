"""Everything llem prints: the plan, live progress, the summary table."""

from __future__ import annotations

import math
import sys
import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from orchestrator.collect import RunOutcome
from orchestrator.plan import PlannedRun
from orchestrator.preflight import Resolved
from orchestrator.study import Study


def console() -> Console:
    c = Console(highlight=False)
    if not c.is_terminal:
        c = Console(highlight=False, width=160, no_color=True)
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
    resolved: dict[int, Resolved],
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


def print_summary(out: Console, summary: pd.DataFrame, energy_note: str | None) -> None:
    t = Table(title="summary (mean ± std across cycles)", title_justify="left")
    for col in ("#", "settings", "runs", "output tok/s", "TTFT p50 ms", "ITL p50 ms", "J/output token", "peak MB"):
        t.add_column(col, justify="left" if col == "settings" else "right")
    for _, r in summary.iterrows():
        tps = _fmt(r["output_tokens_per_s_mean"])
        if r["output_tokens_per_s_std"] is not None and not pd.isna(r["output_tokens_per_s_std"]):
            tps += f" ± {_fmt(r['output_tokens_per_s_std'])}"
        t.add_row(
            str(r["experiment_index"]),
            r["label"],
            f"{r['runs_done']}/{r['runs_planned']}",
            tps,
            _fmt(r["ttft_ms_p50_mean"]),
            _fmt(r["itl_ms_p50_mean"], 2),
            _fmt(r["energy_per_output_token_j_mean"], 4),
            _fmt(r["peak_memory_mb_mean"], 0),
        )
    out.print(t)
    if energy_note:
        out.print(f"energy: n/a because {energy_note}")
