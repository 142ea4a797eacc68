"""Per-run overhead of the local runner, and a study's wall time against the time its
measurements need.

Runs a small study (the tiny model, batch sizes 1 and 4, N cycles) through the real
`llem run --runner local` and reads back, for every run, what the measurement needed
(`result.json`: baseline, model load, warm-up, stabilisation, the window) and how long the
run took as the orchestrator saw it (the manifest's started_at and finished_at). The rest
is overhead: starting the run's process (a fork of the pre-imported launcher, or a new
interpreter importing torch and transformers), writing results, the process ending.

    python benchmarks/run_overhead.py [--cycles 3] [--keep DIR]   # as llem runs it (the launcher)
    python benchmarks/run_overhead.py --compare [--cycles 3]      # the same study with LLEM_LAUNCHER=0 first
    python benchmarks/run_overhead.py --teardown [--repeats 5]    # time from a run's last line to its exit

Prints the median per-run overhead with its 95% bootstrap interval, and the study's wall
time over the sum of necessary time (issue targets: <= 0.5 s and <= 1.3); with --compare,
both ways one after the other on the same machine, and the ratio of their medians.
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

from stats import bootstrap_ci  # benchmarks/stats.py (scripts run from their folder)

REPO = Path(__file__).resolve().parent.parent
STUDY = """\
name: run-overhead
model: llem/tiny-llama
device: cpu
n_prompts: 8
max_input_tokens: 32
max_output_tokens: 32
measurement: {{warmup_batches: 2, min_window_s: 0}}
sweep: {{pytorch.batch_size: [1, 4]}}
execution: {{n_cycles: {cycles}, order: interleaved}}
"""


def _seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def necessary_s(result: dict) -> float:
    """What the measurement itself needs: baseline, model load, warm-up, stabilisation, window."""
    phases, m = result["phases"], result["metrics"]
    return phases["baseline_s"] + m["model_load_s"] + phases["warmup_s"] + phases["stabilisation_s"] + m["duration_s"]


def teardown(repeats: int) -> int:
    """One run process (`python -m llenergymeasure.backends`, the tiny model) at a time: the
    seconds from its last line ("llem: done") to its exit, which measure nothing."""
    from llenergymeasure.backends.config import ExperimentConfig

    config = ExperimentConfig(model="llem/tiny-llama", device="cpu", n_prompts=2, max_input_tokens=16,
                              max_output_tokens=4, measurement={"min_window_s": 0, "warmup_batches": 0})
    tails = []
    with tempfile.TemporaryDirectory() as run_dir:
        env = {**os.environ, "LLEM_EXPERIMENT_JSON": config.canonical_json(), "LLEM_RUN_DIR": run_dir}
        for _ in range(repeats):
            p = subprocess.Popen([sys.executable, "-m", "llenergymeasure.backends"], env=env, cwd=run_dir,
                                 stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
            done = None
            for line in p.stderr:  # type: ignore[union-attr]
                if line.startswith("llem: done"):
                    done = time.monotonic()
            p.wait()
            if done is None or p.returncode != 0:
                print(f"the run failed (exit {p.returncode})")
                return 1
            tails.append(time.monotonic() - done)
    print(f"from a run's last line to its exit: median {statistics.median(tails):.3f} s "
          f"(min {min(tails):.3f}, max {max(tails):.3f}) over {repeats} runs")
    return 0


def study_overhead(out: Path, cycles: int, launcher: bool) -> tuple[list[float], float, float] | None:
    """One study through `llem run --runner local`: (per-run overheads, study wall, sum of necessary)."""
    study = out / "run-overhead.yaml"
    out.mkdir(parents=True, exist_ok=True)
    study.write_text(STUDY.format(cycles=cycles))
    env = {**os.environ, "LLEM_LAUNCHER": "1" if launcher else "0"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "llenergymeasure.orchestrator.cli", "run", str(study), "--runner",
                        "local", "-o", str(out / "results")], capture_output=True, text=True, cwd=REPO, env=env)
    study_wall = time.monotonic() - t0
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-2000:])
        return None
    (study_dir,) = (out / "results").iterdir()
    manifest = json.loads((study_dir / "manifest.json").read_text())
    overheads, needed = [], []
    for run in manifest["runs"]:
        result = json.loads((study_dir / run["run_dir"] / "result.json").read_text())
        wall = _seconds(run["started_at"], run["finished_at"])
        needed.append(necessary_s(result))
        overheads.append(wall - needed[-1])
        how = result["environment"].get("process_start", {}).get("kind", "interpreter")
        print(f"{run['run_id']}: run {wall:5.2f} s, needed {needed[-1]:5.2f} s, overhead {overheads[-1]:5.2f} s "
              f"({how})")
    return overheads, study_wall, sum(needed)


def report(label: str, overheads: list[float], study_wall: float, needed: float) -> None:
    lo, hi = bootstrap_ci(overheads)
    print(f"per-run overhead ({label}): median {statistics.median(overheads):.2f} s "
          f"(95% CI {lo:.2f}-{hi:.2f}) over {len(overheads)} runs; target <= 0.5 s")
    print(f"study wall {study_wall:.1f} s / necessary {needed:.1f} s = {study_wall / needed:.2f}; "
          "target <= 1.3 (the study's own start-up, planning, tables and report included)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="Keep the study directories under this folder.")
    ap.add_argument("--compare", action="store_true",
                    help="First the same study with LLEM_LAUNCHER=0 (a new interpreter per run).")
    ap.add_argument("--teardown", action="store_true", help="Only time how long a run takes to end.")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.teardown:
        return teardown(args.repeats)
    out = args.keep or Path(tempfile.mkdtemp(prefix="llem-overhead-"))
    ways = [(False, "local runner, LLEM_LAUNCHER=0: a new interpreter per run")] if args.compare else []
    ways.append((True, "local runner, runs forked from the pre-imported launcher"))
    medians = []
    for launcher, label in ways:
        print(f"-- {label}")
        measured = study_overhead(out / ("launcher" if launcher else "interpreter"), args.cycles, launcher)
        if measured is None:
            return 1
        report(label, *measured)
        medians.append(statistics.median(measured[0]))
    if len(medians) == 2:
        print(f"median per-run overhead, launcher / new interpreter: {medians[1] / medians[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
