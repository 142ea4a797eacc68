"""Slurm runner overhead: a 100-run plan of trivial tiny-model runs on a real
single-node Slurm cluster (tests/support/slurm_cluster.py, Debian's slurm-wlm + munge).

Measured from one `llem run --runner slurm` (a subprocess, as a user runs it):
  submission   process start -> "submitted" printed (import, study load, preflight,
               script, sbatch); and sbatch alone
  runs' time   sum over runs of each task's own duration (task record start -> end),
               divided by the peak number of concurrent runs: the wall time the runs
               would need with zero overhead at that concurrency
  overhead     total wall time - runs' time; as a fraction of runs' time
  breakdown    first task start after submission; mean gap between a task ending
               and the next starting on the freed CPU (Slurm's scheduler); last task
               end -> process exit (following + runs.parquet, summary, report)
  bare Slurm   the same cluster running a plain array of `sleep` tasks (no llem) with
               the same width: Slurm's own gap between a task ending and the next
               starting. llem's own overhead = total - runs' time - that gap for each
               task start that waited for a freed slot.
Targets (issue 8): submission < 2 s; overhead < 10 % of runs' time.

    python benchmarks/slurm_overhead.py [--runs 100] [--poll 1]
    python benchmarks/slurm_overhead.py --submit-only   # `llem run --detach` wall time, then scancel
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.slurm_cluster import SlurmCluster, unavailable_reason  # noqa: E402


def _t(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def _peak(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def _gaps(spans: list[tuple[float, float]], peak: int) -> list[float]:
    """A slot frees at each end; the start that follows it waited for the scheduler."""
    ends = sorted(b for _, b in spans)
    starts = sorted(a for a, _ in spans)
    return [min((s for s in starts if s >= e), default=e) - e for e in ends[: len(ends) - peak]]


def bare_slurm_gap(root: Path, env: dict[str, str], tasks: int = 20, sleep_s: float = 2.0) -> float:
    """Mean gap between a task ending and the next starting for an array of plain `sleep`
    tasks (no llem at all): the cluster's own dispatch latency."""
    d = root / "bare"
    d.mkdir()
    script = d / "bare.sh"
    script.write_text(f"#!/bin/bash\ndate +%s.%N > {d}/start_$SLURM_ARRAY_TASK_ID\nsleep {sleep_s}\n"
                      f"date +%s.%N > {d}/end_$SLURM_ARRAY_TASK_ID\n")
    subprocess.run(["sbatch", "--parsable", f"--array=0-{tasks - 1}", "--cpus-per-task=1", f"--output={d}/%a.out",
                    str(script)], env=env, check=True, capture_output=True)
    deadline = time.time() + 60 + tasks * sleep_s * 2
    while len(list(d.glob("end_*"))) < tasks:
        if time.time() > deadline:
            sys.exit("the bare Slurm array did not finish")
        time.sleep(0.2)
    time.sleep(0.3)  # the last end file is complete
    spans = [(float((d / f"start_{i}").read_text()), float((d / f"end_{i}").read_text())) for i in range(tasks)]
    return statistics.mean(_gaps(spans, _peak(spans)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100, help="plan size (10 configurations x runs/10 cycles)")
    ap.add_argument("--poll", type=float, default=1.0, help="slurm.poll_interval_s")
    ap.add_argument("--submit-only", action="store_true",
                    help="time `llem run --detach` (process start to exit, i.e. submission) 5 times, cancel the arrays")
    args = ap.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    root = Path(tempfile.mkdtemp(prefix="llem-slurm-bench-"))
    cluster = SlurmCluster(root / "cluster").start()
    try:
        env = {**os.environ, **cluster.env}
        study = root / "trivial.yaml"
        study.write_text(f"""\
name: slurm-overhead
model: llem/tiny-llama
n_prompts: 1
max_input_tokens: 8
max_output_tokens: 1
measurement: {{min_window_s: 0, warmup_batches: 0}}
sweep: {{pytorch.batch_size: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}
execution: {{n_cycles: {max(1, args.runs // 10)}, order: interleaved}}
slurm: {{time_limit: "10:00", poll_interval_s: {args.poll}}}
""")
        # build the tiny model once, outside the measurement
        subprocess.run([sys.executable, "-c", "from llenergymeasure.backends.models import ensure_builtin; "
                        "ensure_builtin('llem/tiny-llama')"], check=True, env=env, cwd=REPO)
        if args.submit_only:
            times = []
            for i in range(5):
                t0 = time.time()
                p = subprocess.run([sys.executable, "-m", "llenergymeasure.orchestrator.cli", "run", str(study), "--runner", "slurm",
                                    "--detach", "-o", str(root / f"detached-{i}")], cwd=REPO, env=env,
                                   capture_output=True, text=True)
                times.append(time.time() - t0)
                if p.returncode != 0:
                    sys.exit(p.stdout + p.stderr)
                subprocess.run(["scancel", "--name", "llem-slurm-overhead"], env=env)
            print(json.dumps({"runs": args.runs, "detached_submission_s": [round(t, 2) for t in times],
                              "median_s": round(statistics.median(times), 2)}, indent=2))
            return
        out = root / "results"
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "llenergymeasure.orchestrator.cli", "run", str(study), "--runner", "slurm",
                                 "-o", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        submitted_at = None
        tail = []
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line])[-20:]
            if submitted_at is None and "as Slurm array" in line:
                submitted_at = time.time()
        code = proc.wait()
        t_end = time.time()
        if code != 0:
            sys.exit("the study failed:\n" + "".join(tail))
        (study_dir,) = out.iterdir()
        m = json.loads((study_dir / "manifest.json").read_text())
        records = [json.loads(p.read_text()) for p in (study_dir / "slurm" / "tasks").glob("*.json")]
        spans = sorted((_t(r["started_at"]), _t(r["finished_at"])) for r in records)
        durations = [b - a for a, b in spans]
        peak = _peak(spans)
        runs_time = sum(durations) / peak
        total = t_end - t0
        ends = sorted(b for _, b in spans)
        gaps = _gaps(spans, peak)
        bare = bare_slurm_gap(root, env)
        slurm_own = bare * len(gaps) / peak  # wall time the cluster's own dispatch costs, spread over the slots
        llem_own = total - runs_time - slurm_own
        result = {
            "runs": len(records),
            "done": sum(r["state"] == "done" for r in m["runs"]),
            "peak_concurrent": peak,
            "submission_s": round((submitted_at or t_end) - t0, 2),
            "sbatch_s": m["slurm"]["submissions"][0]["submit_s"],
            "mean_run_s": round(statistics.mean(durations), 2),
            "runs_time_s": round(runs_time, 1),
            "total_s": round(total, 1),
            "overhead_s": round(total - runs_time, 1),
            "overhead_fraction": round((total - runs_time) / runs_time, 3),
            "first_start_after_submit_s": round(spans[0][0] - (submitted_at or t0), 2),
            "mean_sched_gap_s": round(statistics.mean(gaps), 2) if gaps else None,
            "bare_slurm_gap_s": round(bare, 2),
            "slurm_dispatch_s": round(slurm_own, 1),
            "llem_overhead_s": round(llem_own, 1),
            "llem_overhead_fraction": round(llem_own / runs_time, 3),
            "last_end_to_exit_s": round(t_end - ends[-1], 2),
            "poll_interval_s": args.poll,
        }
        print(json.dumps(result, indent=2))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
