"""Container overhead: the same run through the local runner and the Docker runner.

Per run: wall-clock of `runner.execute` (process or container start to removal)
minus the run's own `model_load_s`, alternating local, docker, local, docker...
so that drift in machine load affects both alike. Target: docker - local <= 0.5 s.

    LLEM_BASE_IMAGE_PYTORCH=llem-base:bookworm-cpu python benchmarks/container_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from llenergymeasure.orchestrator.execution.choose_runner import runner_named
from llenergymeasure.orchestrator.execution.runners.base import RunJob
from llenergymeasure.orchestrator.study.load import load_study

STUDY = """
model: llem/tiny-llama
n_prompts: 8
max_input_tokens: 32
max_output_tokens: 16
pytorch: {batch_size: 4}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        study_file = Path(tmp) / "overhead.yaml"
        study_file.write_text(STUDY)
        study = load_study(study_file)
        config = study.experiments[0].config
        runners = [runner_named("local"), runner_named("docker")]
        for r in runners:
            r.prepare(study, print)
        net: dict[str, list[float]] = {r.name: [] for r in runners}
        for i in range(args.repeats):
            for r in runners:
                run_dir = Path(tmp) / f"bench-{r.name}" / "runs" / f"r{i}"
                t0 = time.perf_counter()
                outcome = r.execute(RunJob(config, run_dir))  # type: ignore[union-attr]
                wall = time.perf_counter() - t0
                assert outcome.result is not None, outcome.error
                load = outcome.result.metrics.model_load_s
                net[r.name].append(wall - load)
                print(f"{r.name:6} run {i + 1}: wall {wall:6.2f} s, model load {load:5.2f} s, rest {wall - load:6.2f} s")
    diffs = [d - lo for lo, d in zip(net["local"], net["docker"])]
    print(
        f"docker - local per run (model load excluded): mean {statistics.mean(diffs):+.2f} s, "
        f"median {statistics.median(diffs):+.2f} s over {len(diffs)} pairs "
        f"(local {statistics.mean(net['local']):.2f} s, docker {statistics.mean(net['docker']):.2f} s)"
    )


if __name__ == "__main__":
    main()
