"""Everything llem prints on a terminal: the plan, live progress, the summary, the
comparison and machine tables. Text cells come from analysis/formatting.py (the
markdown export and the HTML report read the same); this module only lays them out."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Sequence
from typing import TypeVar

import pandas as pd
from rich.console import Console
from rich.table import Table

from llenergymeasure.orchestrator.analysis.formatting import compare_table, cost_table, summary_table
from llenergymeasure.orchestrator.analysis.results import StudyResults
from llenergymeasure.orchestrator.analysis.summary import energy_reason
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.execution.session import PreparedStudy
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.study.preflight import Placement
from llenergymeasure.orchestrator.study.spec import Study

T = TypeVar("T")

SHARED_COLUMNS = (
    ("model", lambda c: c.model + (f"@{c.model_revision[:12]}" if c.model_revision else "")),
    ("dataset", lambda c: c.dataset),
    ("prompts", lambda c: str(c.n_prompts)),
    ("in/out tokens", lambda c: f"{c.max_input_tokens}/{c.max_output_tokens}"),
)


SHOWN = 20  # a plan longer than twice this shows its first and last SHOWN entries


def shown(items: Sequence[T]) -> list[T | None]:
    """All of `items`, or its first and last SHOWN with None standing for the rest: a plan of
    60,000 runs is not printed line by line."""
    if len(items) <= 2 * SHOWN:
        return list(items)
    return [*items[:SHOWN], None, *items[-SHOWN:]]


def console() -> Console:
    c = Console(highlight=False)
    if not c.is_terminal:
        c = Console(highlight=False, width=200, no_color=True)
    return c


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None,
          left: Sequence[str] = ("settings", "metric", "flags")) -> Table:
    t = Table(title=title, title_justify="left", show_header=True)
    for col in headers:
        t.add_column(col, justify="left" if col in left else "right", overflow="fold", no_wrap=col == "settings")
    for row in rows:
        t.add_row(*row)
    return t


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:d}:{s % 60:02d}"


def estimate_left(runs: Sequence[PlannedRun], durations: dict[int, list[float]]) -> float | None:
    """Seconds the `runs` still to do will take: each at the mean of its own experiment's
    finished runs, else at the mean of every finished run; None before any run finished."""
    every = [d for ds in durations.values() for d in ds]
    if not every:
        return None
    overall = sum(every) / len(every)
    return sum(sum(ds) / len(ds) if (ds := durations.get(r.experiment_index)) else overall for r in runs)


class Progress:
    """One line per run; on a terminal the running line updates with elapsed time.

    `[n/total]` counts this session's runs (a resumed study runs only what is left), so
    it never passes its total; where that differs from the plan, the run's place in the
    plan follows (`plan 3/4`)."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.todo: list[PlannedRun] = []
        self.total = 0
        self.planned = 0
        self.started = 0
        self.done = 0
        self.t0 = time.monotonic()
        self.live = out.is_terminal
        self._line = ""
        self._current: PlannedRun | None = None
        self.durations: dict[int, list[float]] = {}  # experiment index -> its finished runs' seconds

    def begin(self, todo: list[PlannedRun], planned: int) -> None:
        """Called again with each cycle n_cycles: auto adds: its runs count on after the others."""
        self.todo.extend(todo)
        self.total, self.planned = len(self.todo), planned

    def _left(self) -> str:
        """`, ~M:SS left, ends ~HH:MM UTC` from the runs still to do (this one included), once a
        run has finished; empty before."""
        seconds = estimate_left(self.todo[self.started - 1:], self.durations)
        if seconds is None:
            return ""
        end = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return f", ~{_clock(seconds)} left, ends ~{end:%H:%M} UTC"

    def _elapsed(self) -> str:
        s = int(time.monotonic() - self.t0)
        return f"{s // 60:d}:{s % 60:02d}"

    def start(self, run: PlannedRun, label: str) -> None:
        self.started += 1
        self._current = run
        where = f" (plan {run.position}/{self.planned})" if self.total != self.planned else ""
        self._line = f"[{self.started}/{self.total}] {run.run_id}{where} {label}"
        if self.live:
            sys.stdout.write(f"\r{self._line} ... (study {self._elapsed()}{self._left()})")
            sys.stdout.flush()
        else:
            self.out.print(f"{self._line} ... started (study {self._elapsed()}{self._left()})", markup=False)

    def tick(self, run_elapsed: float) -> None:
        if self.live:
            sys.stdout.write(f"\r{self._line} ... {run_elapsed:4.0f} s (study {self._elapsed()})")
            sys.stdout.flush()

    def end(self, outcome: RunOutcome, seconds: float) -> None:
        self.done += 1
        if self._current is not None:
            self.durations.setdefault(self._current.experiment_index, []).append(seconds)
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


class Terminal:
    """The console llem prints to, and what it prints there."""

    def __init__(self) -> None:
        self.out = console()

    def notify(self, message: str) -> None:
        self.out.print(message, markup=False, soft_wrap=True)

    def progress(self) -> Progress:
        return Progress(self.out)

    # -- the plan
    def _plan_header(self, study: Study, n_runs: int, runner: str) -> None:
        ex = study.execution
        n_exp = len(study.experiments)
        runs = f"{n_runs} run(s)"
        if ex.auto:  # a resumed study's plan has the cycles it added so far
            runs += f" {'first' if n_runs == n_exp * ex.first_cycles else 'so far'}, at most {n_exp * ex.max_cycles}"
        self.out.print(f"[bold]{study.name}[/bold]: {n_exp} experiment(s) x {ex.describe_cycles()} "
                       f"{'' if ex.auto else 'cycle(s) '}= {runs}, order {ex.order}"
                       + (f" (seed {ex.shuffle_seed})" if ex.order == "shuffled" else ""))
        self.notify(f"runs on: {runner}")
        if ex.gap_between_runs_s or ex.gap_between_cycles_s:
            self.notify(f"gaps: {ex.gap_between_runs_s:g} s between runs, {ex.gap_between_cycles_s:g} s between cycles")
        for note in study.notes:
            self.notify(f"note: {note}")

    def print_plan(self, prepared: PreparedStudy) -> None:
        study, images, engines = prepared.study, prepared.images, prepared.engines
        self._plan_header(study, len(prepared.plan), prepared.runner.describe())
        varying = []  # settings every experiment shares are printed once, not as columns
        for name, get in SHARED_COLUMNS:
            values = {get(e.config) for e in study.experiments}
            if len(values) == 1:
                self.notify(f"{name}: {values.pop()}")
            else:
                varying.append((name, get))
        headers = ["#", "id", "settings", "backend", "device", *(n for n, _ in varying),
                   *(["image"] if images else []), *(["TensorRT-LLM engine"] if engines else [])]
        rows = []
        for e in shown(study.experiments):
            if e is None:
                rows.append(["...", "", f"{len(study.experiments) - 2 * SHOWN} more", *[""] * (len(headers) - 3)])
                continue
            c = e.config
            rows.append([str(e.index), e.id[:12], e.label, c.backend, prepared.placements[e.index].device,
                         *(get(c) for _, get in varying), *([images.get(c.backend, "")] if images else []),
                         *([engines.get(e.index, "")] if engines else [])])
        self.out.print(table(headers, rows, "experiments", left=headers))
        order = [r.run_id if r is not None else f"... ({len(prepared.plan) - 2 * SHOWN} more) ..."
                 for r in shown(prepared.plan)]
        self.notify("order: " + " ".join(order))
        ex = study.execution
        if ex.auto:
            self.notify(f"n_cycles auto: then one more cycle at a time of only the configurations whose 95% CI of "
                        f"throughput or energy per token is wider than ±{ex.target_ci_pct:g}%, up to "
                        f"{ex.max_cycles} cycles")

    def print_dry_run(self, placements: dict[int, Placement], resume_preview: str | None) -> None:
        problems: dict[str, list[int]] = {}
        for i, p in placements.items():
            if p.problem:
                problems.setdefault(p.problem, []).append(i)
        for problem, indices in problems.items():
            which = "experiment " + ", ".join(map(str, indices)) if len(indices) < len(placements) \
                else "every experiment"
            self.notify(f"not runnable here ({which}): {problem}")
        if resume_preview:
            self.notify(resume_preview)
        n_bad = sum(len(v) for v in problems.values())
        self.notify("dry run: nothing was run" + (f" ({n_bad} experiment(s) could not run on this "
                    "machine as it is)" if n_bad else ""))

    # -- results
    def print_summary(self, results: StudyResults) -> None:
        headers, rows = summary_table(results.summary)
        self.out.print(table(headers, rows, "summary: mean ± 95% CI half-width across cycles; ratios to the "
                             "reference (*) with 95% CI; pareto: best throughput for its energy per token"))
        note = energy_reason(results.runs)
        if note:
            self.notify(f"energy: n/a because {note}")
        costs = cost_table(results.summary)
        if costs is not None:
            self.out.print(table(*costs, "cost and carbon per million output tokens (Mtok): mean ± 95% CI "
                                 "half-width; n/a where energy or a GPU was not measured"))

    def print_environment_differences(self, diffs: list[tuple[str, str, str]], a: str = "A", b: str = "B") -> None:
        if diffs:
            self.out.print(table(["what", a, b], [list(d) for d in diffs],
                                 "environment differences (these explain most differences)", left=["what", a, b]))
        else:
            self.notify("environment: no difference in GPUs, driver, CPU, packages, image or llem version")

    def print_comparison(self, comparison: pd.DataFrame, title: str, verdicts: bool = False) -> None:
        headers, rows = compare_table(comparison)
        if verdicts:
            headers, rows = [*headers, "verdict"], [[*r, v] for r, v in zip(rows, comparison["verdict"])]
        self.out.print(table(headers, rows, title))

    def print_rows(self, headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
        self.out.print(table(headers, rows, title, left=headers))
