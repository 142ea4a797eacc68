"""Whether a study's runs ran at the same time, from their recorded start and end.

Runs on Slurm or on several GPUs of one host (`execution.parallel_gpus`) overlap;
a reader comparing their numbers must know, so the printed summary and the report
say how many ran at once at most.
"""

from __future__ import annotations

from llenergymeasure.orchestrator.execution.manifest import Manifest


def max_concurrent(manifest: Manifest) -> int:
    """How many runs were running at the same time at most (from started_at/finished_at)."""
    events = []
    for r in manifest.runs:
        if r.started_at and r.finished_at:
            events += [(r.started_at, 1), (r.finished_at, -1)]
    peak = cur = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        cur += d
        peak = max(peak, cur)
    return peak


def concurrency_note(manifest: Manifest) -> str | None:
    """One sentence on concurrency for whole-plan runners (Slurm, parallel GPUs); None otherwise."""
    runner = manifest.runner
    where = "on Slurm" if runner == "slurm" else "on this host's GPUs"
    peak = max_concurrent(manifest)
    if peak > 1:
        alloc = "allocated" if runner == "slurm" else "given"
        return (f"runs executed concurrently {where} (up to {peak} at once, each on the GPUs it was "
                f"{alloc}); each run's actual start is its started_at in manifest.json")
    if runner == "slurm":
        return "runs executed one at a time on Slurm; each run's actual start is its started_at in manifest.json"
    return None
