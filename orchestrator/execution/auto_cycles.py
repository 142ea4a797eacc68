"""`execution.n_cycles: auto`: after the first cycles, one more cycle at a time of only the
configurations whose 95% confidence interval is still wider than `target_ci_pct`, until
every one meets it or reaches `max_cycles` (the rule: study/precision.py `judge`).

Every decision is made from the finished runs on disk (their result.json) and the
manifest, never from memory: a study resumed after a crash, between rounds or in the
middle of one, decides exactly as an uninterrupted one would. A round is decided only
when every run planned so far has finished (done, or failed and kept).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.outcome import load_result
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.plan import PlannedRun, added_round
from llenergymeasure.orchestrator.study.precision import ENERGY, THROUGHPUT, Verdict, judge
from llenergymeasure.orchestrator.study.spec import Execution

UNFINISHED = ("pending", "running", "skipped")
SHOWN = 10  # configurations named in one message


@dataclass
class Samples:
    """One configuration's runs so far, as `judge` reads them."""

    cycles: int = 0  # the highest cycle planned for it
    failed: int = 0
    values: dict[str, list[float | None]] = field(default_factory=dict)


def samples(manifest: Manifest, energy: bool = True) -> dict[int, Samples]:
    """Every experiment's judged metrics from its done runs' result.json: output throughput,
    and energy per output token unless `energy` is False (a study publishing no energy)."""
    metrics = (THROUGHPUT, ENERGY) if energy else (THROUGHPUT,)
    out = {e.index: Samples(values={m: [] for m in metrics}) for e in manifest.experiments}
    for run in manifest.runs:
        s = out[run.experiment_index]
        s.cycles = max(s.cycles, run.cycle)
        if run.state == "failed":
            s.failed += 1
        if run.state != "done":
            continue
        result = load_result(manifest.run_dir(run.run_id))
        if result is None:  # removed or damaged since: resume's reconcile runs it again
            continue
        for m in metrics:
            s.values[m].append(getattr(result.metrics, m))
    return out


def verdicts(manifest: Manifest, execution: Execution, energy: bool = True) -> dict[int, Verdict]:
    return {i: judge(s.values, s.cycles, execution.target_ci_pct, execution.max_cycles, s.failed)
            for i, s in samples(manifest, energy).items()}


def _label(manifest: Manifest, index: int) -> str:
    return f"experiment {index} ({manifest.experiment(index).label})"


def _say(manifest: Manifest, execution: Execution, found: dict[int, Verdict], notify: Notify) -> None:
    """What this round decided: the configurations that stop short of the target (once, in
    the round they stop), then the next cycle or the end."""
    target = f"±{execution.target_ci_pct:g}%"
    latest = max(v.cycles for v in found.values())
    for i, v in found.items():
        if v.cycles == latest and v.decision == "max_cycles":
            notify(f"n_cycles auto: {_label(manifest, i)} is still above {target} after max_cycles "
                   f"{execution.max_cycles} ({v.describe()}); flagged ci_target_not_met")
        elif v.cycles == latest and v.decision == "failed":
            notify(f"n_cycles auto: {_label(manifest, i)} has failed run(s), so no cycle is added to it "
                   f"({v.describe()}); `--resume --retry-failed` runs them again")
    if any(ENERGY in v.unjudged for v in found.values()):
        notify("n_cycles auto: energy per token was not measured (no energy meter for these runs), so "
               "throughput alone decides")
    more = [i for i, v in found.items() if v.more]
    if more:
        notify(f"n_cycles auto: after cycle {latest}, {len(more)} of {len(found)} configuration(s) above "
               f"{target}; one more cycle of: "
               + "; ".join(f"{_label(manifest, i)}: {found[i].describe()}" for i in more[:SHOWN])
               + (f"; and {len(more) - SHOWN} more" if len(more) > SHOWN else ""))
        return
    met = [v.cycles for v in found.values() if v.decision == "met"]
    cycles = f" in {min(met)}" + (f"–{max(met)}" if max(met) > min(met) else "") + " cycles" if met else ""
    notify(f"n_cycles auto: no more cycles; {len(met)} of {len(found)} configuration(s) within {target}{cycles}")


def next_round(manifest: Manifest, execution: Execution, notify: Notify, energy: bool = True) -> list[PlannedRun]:
    """The next added cycle's runs, already in the manifest (pending), or [] when the study
    needs no more: every configuration met the target, reached max_cycles, or failed, or
    runs planned so far have not all finished (a stopped study decides when resumed)."""
    if any(r.state in UNFINISHED for r in manifest.runs):
        return []
    found = verdicts(manifest, execution, energy)
    _say(manifest, execution, found, notify)
    nxt = {i: v.cycles + 1 for i, v in found.items() if v.more}
    if not nxt:
        return []
    runs = added_round(nxt, len(manifest.experiments), execution.order, execution.shuffle_seed,
                       execution.max_cycles, first_position=len(manifest.runs) + 1)
    manifest.add_runs(runs)
    return runs
