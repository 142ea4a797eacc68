"""llem against optimum-benchmark on the same model and workload (issue 16), in one run.

The workload: the tiny Llama directory `llem/tiny-llama` resolves to, 32 input / 32 output
tokens, batch sizes 1 and 4, 2 warm-up batches, no minimum window (8 prompts: 8 batches of 1,
2 of 4). llem runs it as one two-experiment sweep (`llem run` of a study file, local runner,
one process per study); the peer, optimum-benchmark 0.6.0, as two experiments, one CLI process
each (its PyTorch backend under its `process` launcher, device cpu, `input_shapes` batch x 32,
`generate_kwargs` max/min_new_tokens 32, `warmup_runs: 2`, `iterations` = the batches of the
window, `duration: 0`, latency tracker on, memory and energy trackers off).

The repeats alternate (llem, peer, then peer, llem, ...) so that the load of a shared machine
weighs on both alike; the load average is printed beside every repeat. Printed at the end, with
the issue's targets: the wall of llem's sweep over the peer's two experiments (median of the
paired ratios, 95% bootstrap CI; <= 0.35), llem's per-run overhead (run wall, from the
manifest, minus baseline, model load, warm-up, stabilisation and window, from result.json;
median <= 0.5 s) and its study wall over the necessary time (those phases summed over the runs,
plus configured gaps; <= 1.3).

The peer is installed by this script into its own venv (default build/peer-venv, ignored by
git; never a dependency of llem): optimum-benchmark==0.6.0, transformers==4.57.6 (0.6.0 does
not import under transformers 5) and torch==2.13.0, the host's. If that fails, the comparison
is skipped with the reason and llem is measured alone. transformers 4.57 cannot read the tiny
model's 5.x tokenizer_config (`TokenizersBackend`) nor its config's `rope_parameters`: the peer
then gets a converted copy (same weights and tokenizer.json) in build/, and the script says so.

llem's runs take a lock directory of their own (LLEM_LOCK_DIR): on a shared machine another
study may hold the host's `cpu` lock, and the peer takes no lock either.

    cd benchmarks && ../.venv/bin/python peer_overhead.py [--repeats 3] [--keep DIR] [--no-install] [--batch-sweep]

--batch-sweep then runs the README's batch sweep once (12 runs, 5 s windows), the study the
issue's wall / necessary target is set for, and prints its per-run overhead and that ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from stats import bootstrap_ci  # benchmarks/stats.py (scripts run from their folder)

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
PEER_PINS = ("optimum-benchmark==0.6.0", "transformers==4.57.6", "torch==2.13.0")
MODEL = "llem/tiny-llama"
BATCH_SIZES = (1, 4)
N_PROMPTS = 8
TOKENS = 32
WARMUP_BATCHES = 2
TARGET_RATIO, TARGET_OVERHEAD_S, TARGET_WALL_RATIO = 0.35, 0.5, 1.3

STUDY = f"""\
name: peer-overhead
model: {MODEL}
device: cpu
n_prompts: {N_PROMPTS}
max_input_tokens: {TOKENS}
max_output_tokens: {TOKENS}
measurement: {{warmup_batches: {WARMUP_BATCHES}, min_window_s: 0}}
sweep: {{pytorch.batch_size: [{", ".join(map(str, BATCH_SIZES))}]}}
execution: {{n_cycles: 1}}
"""

PEER_CONFIG = """\
defaults:
  - benchmark
  - scenario: inference
  - launcher: process
  - backend: pytorch
  - _self_
name: peer-bs{batch}
launcher: {{device_isolation: false}}
backend: {{device: cpu, model: {model}, task: text-generation, library: transformers, model_type: llama}}
scenario:
  latency: true
  memory: false
  energy: false
  warmup_runs: {warmup}
  iterations: {iterations}
  duration: 0
  input_shapes: {{batch_size: {batch}, sequence_length: {tokens}}}
  generate_kwargs: {{max_new_tokens: {tokens}, min_new_tokens: {tokens}}}
hydra:
  run: {{dir: {out}}}
  job: {{chdir: true}}
"""

# What the peer's transformers must do with the model directory before it is used.
LOADS = """\
import sys
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
AutoConfig.from_pretrained(sys.argv[1]); AutoTokenizer.from_pretrained(sys.argv[1])
AutoModelForCausalLM.from_pretrained(sys.argv[1])
"""


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} CPUs"


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else "no output"


# -- the peer: its venv and its copy of the model


def peer_python(venv: Path, install: bool) -> tuple[Path | None, str]:
    """The peer venv's python, installed there first if missing: (python, what it is), or
    (None, why not)."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", ("import optimum_benchmark, transformers, torch; from importlib.metadata import "
                                 "version; print(version('optimum-benchmark'), transformers.__version__, "
                                 "torch.__version__)")]
    ok = python.exists() and subprocess.run(check, capture_output=True, text=True, check=False).returncode == 0
    if not ok:
        if not install:
            return None, f"no peer in {venv} (--no-install)"
        print(f"installing the peer into {venv}: {' '.join(PEER_PINS)} (minutes, once)", flush=True)
        steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", *PEER_PINS]]
        for step in steps:
            p = subprocess.run(step, capture_output=True, text=True, check=False)
            if p.returncode != 0:
                return None, f"`{' '.join(step)}` failed: {_last_line(p.stderr or p.stdout)}"
    p = subprocess.run(check, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        return None, f"the peer does not import: {_last_line(p.stderr)}"
    versions = p.stdout.split()
    if versions[:2] != ["0.6.0", "4.57.6"]:
        return None, f"{venv} holds optimum-benchmark {versions[0]}, transformers {versions[1]}, not 0.6.0 / 4.57.6"
    return python, f"optimum-benchmark {versions[0]}, transformers {versions[1]}, torch {versions[2]} ({venv})"


def _loads(python: Path, model_dir: Path) -> str | None:
    """None when the peer's transformers loads the directory, else its last error line."""
    p = subprocess.run([str(python), "-c", LOADS, str(model_dir)], capture_output=True, text=True, check=False,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return None if p.returncode == 0 else _last_line(p.stderr)


def _convert_for_transformers4(src: Path, dest: Path) -> None:
    """A copy of the model directory transformers 4.57 reads: `rope_parameters` (5.x) as
    `rope_theta`, the tokenizer as `PreTrainedTokenizerFast` over the same tokenizer.json.
    Weights and the tokenizer file are copied unchanged; published by rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", "tokenizer_config.json"):
            shutil.copy2(f, tmp / f.name)
    config = json.loads((src / "config.json").read_text())
    rope = config.pop("rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"{src}: rope_type {rope['rope_type']} has no transformers 4.57 spelling here")
    config["rope_theta"] = rope.get("rope_theta", 10000.0)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer = json.loads((src / "tokenizer_config.json").read_text())
    tokenizer.pop("backend", None)
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)


def peer_model(python: Path, model_dir: Path) -> tuple[Path | None, str]:
    """The model directory the peer uses: llem's own when its transformers loads it, else a
    converted copy in build/ (said)."""
    why = _loads(python, model_dir)
    if why is None:
        return model_dir, f"{model_dir} (loads under transformers 4.57.6 as it is)"
    dest = BUILD / f"peer-{model_dir.name}"
    _convert_for_transformers4(model_dir, dest)
    if (still := _loads(python, dest)) is not None:
        return None, f"the converted copy {dest} does not load either: {still}"
    return dest, (f"{dest}: a converted copy of {model_dir} (transformers 4.57.6 refused it: {why}; "
                  "rope_parameters -> rope_theta, tokenizer_class -> PreTrainedTokenizerFast, same weights)")


def run_peer(python: Path, model_dir: Path, out: Path, batch: int) -> float | None:
    """One peer experiment as its CLI runs it: the process's wall, None if it failed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"peer-bs{batch}.yaml").write_text(PEER_CONFIG.format(
        batch=batch, model=model_dir, warmup=WARMUP_BATCHES, iterations=N_PROMPTS // batch, tokens=TOKENS,
        out=out / "run"))
    cli = python.parent / "optimum-benchmark"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LOG_TO_FILE": "0"}
    t0 = time.monotonic()
    p = subprocess.run([str(cli), "--config-dir", str(out), "--config-name", f"peer-bs{batch}"], cwd=out,
                       env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if p.returncode != 0 or not (out / "run" / "benchmark_report.json").exists():
        print(f"peer batch {batch} failed (exit {p.returncode}): {p.stderr[-1500:]}")
        return None
    return wall


# -- llem


@dataclass
class LlemRun:
    run_id: str
    wall_s: float
    necessary_s: float
    start: str  # how its process began: fork (the launcher) or interpreter

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.necessary_s


@dataclass
class LlemStudy:
    wall_s: float
    runs: list[LlemRun]
    gaps_s: float
    # where the rest of the wall goes: from `llem run` starting to its session (imports, the
    # plan, the device lock), from the session to the first run (the launcher's imports), and
    # from the last run to the process's exit (tables, summary, report)
    before_s: float
    launcher_s: float
    after_s: float

    @property
    def necessary_s(self) -> float:
        return sum(r.necessary_s for r in self.runs) + self.gaps_s


def _seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def necessary_s(result: dict) -> float:
    """What a run's measurement needs: its baselines, model load, warm-up, stabilisation, window."""
    phases, m = result["phases"], result["metrics"]
    return (phases["baseline_s"] + phases.get("loaded_baseline_s", 0.0) + m["model_load_s"] + phases["warmup_s"]
            + phases["stabilisation_s"] + m["duration_s"])


def _gaps_s(manifest: dict) -> float:
    """The configured gaps the study waited between its runs (between cycles, the cycle gap)."""
    ex, runs = manifest["execution"], manifest["runs"]
    return sum(ex["gap_between_cycles_s"] if b["cycle"] != a["cycle"] else ex["gap_between_runs_s"]
               for a, b in itertools.pairwise(runs))


def run_llem(out: Path, text: str = STUDY) -> LlemStudy | None:
    """A study as a user runs it (llem's sweep by default): one `llem run` process, its
    wall, and its runs."""
    out.mkdir(parents=True, exist_ok=True)
    study = out / "study.yaml"
    study.write_text(text)
    env = {**os.environ, "LLEM_LOCK_DIR": str(out.parent / "locks")}
    began = datetime.now(timezone.utc)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "llenergymeasure.orchestrator.cli", "run", str(study), "--runner",
                        "local", "-o", str(out / "results")], capture_output=True, text=True, check=False, cwd=REPO,
                       env=env)
    wall = time.monotonic() - t0
    ended = datetime.now(timezone.utc)
    if p.returncode != 0:
        print(f"llem run failed (exit {p.returncode}):", p.stdout[-1500:], p.stderr[-1500:])
        return None
    (study_dir,) = (out / "results").iterdir()
    manifest = json.loads((study_dir / "manifest.json").read_text())
    runs = []
    for run in manifest["runs"]:
        result = json.loads((study_dir / run["run_dir"] / "result.json").read_text())
        start = result["environment"].get("process_start", {}).get("kind", "interpreter")
        runs.append(LlemRun(run["run_id"], _seconds(run["started_at"], run["finished_at"]), necessary_s(result),
                            start))
    first, last = manifest["runs"][0], manifest["runs"][-1]
    session = manifest["sessions"][0]["started_at"]
    return LlemStudy(wall, runs, _gaps_s(manifest), before_s=_seconds(began.isoformat(), session),
                     launcher_s=_seconds(session, first["started_at"]),
                     after_s=_seconds(last["finished_at"], ended.isoformat()))


# -- the repeats and the report


def paired_ratio(llem: list[float], peer: list[float]) -> tuple[float, float, float]:
    """Median of the per-repeat ratios llem/peer and its 95% bootstrap interval: each repeat's
    pair ran back to back, so the machine's load cancels within a pair."""
    ratios = [a / b for a, b in zip(llem, peer)]
    return (statistics.median(ratios), *bootstrap_ci(ratios))


def repeat(i: int, out: Path, peer: tuple[Path, Path] | None) -> tuple[LlemStudy, float | None] | None:
    """One repeat: llem's sweep and the peer's two experiments, llem first on even repeats."""
    def llem_side() -> LlemStudy | None:
        return run_llem(out / f"llem-{i}")

    def peer_side() -> float | None:
        if peer is None:
            return None
        walls = [run_peer(*peer, out / f"peer-{i}-bs{b}", b) for b in BATCH_SIZES]
        return None if None in walls else sum(w for w in walls if w is not None)

    print(f"repeat {i + 1}: {load()}", flush=True)
    if i % 2 == 0:
        study, peer_wall = llem_side(), peer_side()
    else:
        peer_wall = peer_side()
        study = llem_side()
    if study is None or (peer is not None and peer_wall is None):
        return None
    for r in study.runs:
        print(f"  llem {r.run_id}: run {r.wall_s:5.2f} s, necessary {r.necessary_s:5.2f} s, "
              f"overhead {r.overhead_s:5.2f} s ({r.start})")
    print(f"  llem sweep (whole `llem run`): {study.wall_s:5.1f} s, necessary {study.necessary_s:5.2f} s, "
          f"wall/necessary {study.wall_s / study.necessary_s:.2f}; before the session {study.before_s:.2f} s, "
          f"session to first run (launcher start) {study.launcher_s:.2f} s, last run to exit {study.after_s:.2f} s")
    if peer_wall is not None:
        print(f"  peer two experiments: {peer_wall:5.1f} s; llem/peer {study.wall_s / peer_wall:.2f}")
    print(f"  {load()}", flush=True)
    return study, peer_wall


def report(studies: list[LlemStudy], peer_walls: list[float]) -> None:
    walls = [s.wall_s for s in studies]
    print(f"llem sweep walls: {', '.join(f'{w:.1f}' for w in walls)} s; median {statistics.median(walls):.1f} s")
    if peer_walls:
        print(f"peer walls (two experiments): {', '.join(f'{w:.1f}' for w in peer_walls)} s; "
              f"median {statistics.median(peer_walls):.1f} s")
        ratio, lo, hi = paired_ratio(walls, peer_walls)
        print(f"llem / peer: {ratio:.2f} (95% CI {lo:.2f}-{hi:.2f}; ratio of medians "
              f"{statistics.median(walls) / statistics.median(peer_walls):.2f}); target <= {TARGET_RATIO}")
    overheads = [r.overhead_s for s in studies for r in s.runs]
    lo, hi = bootstrap_ci(overheads)
    print(f"llem per-run overhead: median {statistics.median(overheads):.2f} s (95% CI {lo:.2f}-{hi:.2f}) over "
          f"{len(overheads)} runs; target <= {TARGET_OVERHEAD_S} s")
    print("llem study wall, besides its runs (medians): before the session "
          f"{statistics.median(s.before_s for s in studies):.2f} s, session to first run (launcher start) "
          f"{statistics.median(s.launcher_s for s in studies):.2f} s, last run to exit "
          f"{statistics.median(s.after_s for s in studies):.2f} s")
    ratios = [s.wall_s / s.necessary_s for s in studies]
    lo, hi = bootstrap_ci(ratios)
    print(f"llem study wall / necessary: median {statistics.median(ratios):.2f} (95% CI {lo:.2f}-{hi:.2f}) over "
          f"{len(ratios)} studies; the issue's <= {TARGET_WALL_RATIO} is for the README batch sweep (--batch-sweep)")
    print(f"after: {load()}")


def batch_sweep(out: Path) -> int:
    """The README's batch sweep (studies/batch-sweep.yaml, 12 runs with 5 s windows), once:
    the study the issue's wall / necessary target is set for."""
    print(f"README batch sweep (studies/batch-sweep.yaml): {load()}", flush=True)
    study = run_llem(out / "batch-sweep", (REPO / "studies" / "batch-sweep.yaml").read_text())
    if study is None:
        return 1
    overheads = [r.overhead_s for r in study.runs]
    lo, hi = bootstrap_ci(overheads)
    print(f"  per-run overhead: {', '.join(f'{o:.2f}' for o in overheads)} s; median "
          f"{statistics.median(overheads):.2f} s (95% CI {lo:.2f}-{hi:.2f}); target <= {TARGET_OVERHEAD_S} s")
    print(f"  study wall {study.wall_s:.1f} s / necessary {study.necessary_s:.1f} s = "
          f"{study.wall_s / study.necessary_s:.2f}; target <= {TARGET_WALL_RATIO} (before the session "
          f"{study.before_s:.2f} s, launcher start {study.launcher_s:.2f} s, last run to exit {study.after_s:.2f} s)")
    print(f"  after: {load()}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="Repeats of each side (at least 3 for the ratio).")
    ap.add_argument("--keep", type=Path, default=None, help="Keep the studies and peer outputs under this folder.")
    ap.add_argument("--peer-venv", type=Path, default=BUILD / "peer-venv")
    ap.add_argument("--no-install", action="store_true", help="Skip the peer unless its venv is already there.")
    ap.add_argument("--batch-sweep", action="store_true",
                    help="Then run the README's batch sweep once (its wall / necessary is the issue's target).")
    args = ap.parse_args()

    from llenergymeasure.backends.models import resolve_model

    model_dir = resolve_model(MODEL)
    print(f"llem: {MODEL} = {model_dir}; {load()}")
    python, what = peer_python(args.peer_venv, install=not args.no_install)
    peer: tuple[Path, Path] | None = None
    if python is None:
        print(f"peer skipped: {what}")
    else:
        peer_dir, how = peer_model(python, model_dir)
        print(f"peer: {what}\npeer model: {how}")
        if peer_dir is None:
            print("peer skipped: it cannot load the model")
        else:
            peer = (python, peer_dir)
    out = args.keep or Path(tempfile.mkdtemp(prefix="llem-peer-"))
    studies, peer_walls = [], []
    for i in range(args.repeats):
        measured = repeat(i, out, peer)
        if measured is None:
            return 1
        studies.append(measured[0])
        if measured[1] is not None:
            peer_walls.append(measured[1])
    if studies:
        report(studies, peer_walls)
    if args.batch_sweep and batch_sweep(out) != 0:
        return 1
    if args.keep is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
