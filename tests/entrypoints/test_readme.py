"""The README's commands are executed here, so the docs cannot drift."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest

from tests.support.helpers import REPO, llem

README = (REPO / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make study STUDY=batch-sweep.yaml", "make test"]
    assert README.index("```bash") < README.index("LLenergyMeasure measures")


def test_ci_calls_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_make_study_batch_sweep(batch_sweep):
    """The README's first command, exactly as written (run by the `batch_sweep` fixture)."""
    p, new = batch_sweep
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert len(new) == 1 and new[0].name.startswith("batch-sweep_")
    runs = pd.read_parquet(new[0] / "runs.parquet")
    assert len(runs) == 12 and (runs["status"] == "done").all()
    assert "summary: mean ± 95% CI half-width across cycles" in p.stdout
    assert "12 of 12 runs done, 0 failed" in p.stdout
    assert (new[0] / "summary.parquet").exists() and (new[0] / "report.html").exists()
    tps = runs.groupby("pytorch.batch_size")["output_tokens_per_s"].mean()
    assert list(tps.index) == [1, 2, 4, 8]
    # (how much batching speeds this machine up is a measurement, not a test: on a loaded
    # machine it need not hold; the summary's flags and intervals say how far to trust it)
    assert (tps > 0).all(), tps.to_dict()
    # energy where this machine can measure it (RAPL), else null with the reason
    assert (runs["energy_j"].notna() == runs["energy_source"].notna()).all()
    assert (runs["energy_j"].notna() | runs["energy_unavailable_reason"].notna()).all()
    assert (runs["n_passes"] >= 1).all() and (runs["duration_s"] >= 5.0).all()  # min_window_s


def test_datasets_list():
    r = llem("datasets", "list")
    assert r.returncode == 0 and "synthetic" in r.stdout and "aienergyscore" in r.stdout


@pytest.mark.slow
def test_harness_overhead_benchmark_runs(tiny_model):
    p = subprocess.run(
        [sys.executable, "benchmarks/harness_overhead.py", "--repeats", "2", "--n-prompts", "4",
         "--max-output-tokens", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    ratio = float(re.search(r"ratio: median ([0-9.]+)", p.stdout).group(1))
    assert 0.2 < ratio < 5  # it measured something; the real number goes in the issue note


def test_readme_example_study_is_valid(tmp_path, tiny_model):
    """The study shown in the README's "Study files" section loads and dry-runs."""
    block = re.search(r"## Study files\n\n```yaml\n(.*?)```", README, re.S).group(1)
    f = tmp_path / "readme-example.yaml"
    f.write_text(block)
    r = llem("run", str(f), "--dry-run", "--runner", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "9 experiment(s) x 3 cycle(s)" in r.stdout  # 4 batch sizes x 2 precisions + 1


@pytest.mark.slow
def test_sampler_overhead_benchmark_runs(tiny_model):
    p = subprocess.run(
        [sys.executable, "benchmarks/sampler_overhead.py", "--repeats", "2", "--n-prompts", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    ratio = float(re.search(r"ratio: median ([0-9.]+)", p.stdout).group(1))
    assert 0.2 < ratio < 5 and "one sample costs" in p.stdout


def test_readme_cost_settings_are_valid(tmp_path):
    """The `analysis:` block in the README's cost section is accepted as written."""
    from llenergymeasure.orchestrator.study.load import load_study

    block = re.search(r"### Cost and carbon.*?```yaml\n(.*?)```", README, re.S).group(1)
    f = tmp_path / "costs.yaml"
    f.write_text("model: llem/tiny-llama\nsweep:\n  pytorch.batch_size: [1, 2]\n" + block)
    study = load_study(f)
    assert study.reference_index == 1
    assert study.analysis.costs.electricity_price_per_kwh == 0.15 and study.analysis.costs.pue == 1.2
