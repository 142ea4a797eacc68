"""The `llem` command, end to end, in real subprocesses with the real tiny model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest

from tests.support import faultkit as fk
from tests.support.helpers import REPO, llem, wait_for_second_run, write

TINY = """
model: llem/tiny-llama
n_prompts: 4
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0}   # one pass: these tests are about orchestration
"""

BAD_STUDIES = {
    "unknown-key": (TINY + "sweep: {pytorch.batch_size: [1, 2]}\nexecution: {n_cycle: 2}\n",
                    "execution.n_cycle: unknown key (did you mean 'n_cycles'?)"),
    "wrong-type": (TINY + "sweep: {pytorch.batch_size: [1, two]}\n", "(from pytorch.batch_size=two)"),
    "impossible-value": (TINY + "sweep: {pytorch.batch_size: [1, -4]}\n", "(from pytorch.batch_size=-4)"),
    "impossible-combination": (TINY + "device: cpu\nsweep: {pytorch.load_in_4bit: [false, true]}\n",
                               "pytorch.load_in_4bit: bitsandbytes quantisation needs a CUDA GPU"),
    "missing-dataset": (TINY + "dataset: aienergyscore\n", "llem datasets fetch aienergyscore"),
    "missing-model": (TINY.replace("llem/tiny-llama", "nobody/nothing"), "hf download nobody/nothing"),
    "bad-yaml": ("model: [unclosed\n", "not valid YAML"),
    "too-many-runs": (TINY + "sweep: {pytorch.batch_size: [1, 2]}\nexecution: {n_cycles: 251}\n",
                      "this study expands to 502 runs (2 experiments x 251 cycles), more than 500; pass --yes"),
    "empty-file": ("\n", "is empty"),
    "duplicate-key": (TINY + "n_prompts: 8\n", "key 'n_prompts' appears twice"),
}


@pytest.mark.parametrize("name", sorted(BAD_STUDIES))
def test_bad_study_exits_2_naming_the_key_and_creates_nothing(tmp_path, tiny_model, name):
    text, expected = BAD_STUDIES[name]
    f = write(tmp_path / f"{name}.yaml", text)
    out = tmp_path / "results"
    r = llem("run", str(f), "-o", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists() or not any(out.iterdir())


def test_missing_file_and_bare_study_name(tmp_path):
    r = llem("run", str(tmp_path / "none.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = llem("run", "batch-sweep.yaml", cwd=REPO)
    assert r.returncode == 2 and "did you mean studies/batch-sweep.yaml" in r.stderr


@pytest.mark.parametrize("study", sorted(p.name for p in (REPO / "studies").glob("*.yaml")))
def test_every_shipped_study_loads_and_dry_runs(study, tmp_path, tiny_model):
    out = tmp_path / "results"
    r = llem("run", f"studies/{study}", "--dry-run", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "dry run: nothing was run" in r.stdout and "order:" in r.stdout
    assert not out.exists()


def test_config_reports_what_the_machine_offers():
    r = llem("config", "--json")
    assert r.returncode == 0, r.stderr
    checks = {(c["area"], c["item"]): c for c in json.loads(r.stdout)}
    assert checks[("backend", "pytorch")]["ok"] is True
    assert ("energy", "CPU RAPL") in checks and ("runtime", "Docker engine") in checks
    r = llem("doctor")
    assert r.returncode == 0 and "pytorch" in r.stdout


@pytest.mark.slow
def test_failed_run_is_isolated_and_exit_code_is_1(tmp_path, tiny_model):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model / f, broken / f)  # no weights: fails at load time, not before
    study = write(tmp_path / "mixed.yaml", TINY + f"""
experiments:
  - {{model: {broken}}}
  - {{pytorch: {{batch_size: 2}}}}
execution: {{n_cycles: 1, order: sequential}}
""")
    out = tmp_path / "results"
    r = llem("run", str(study), "-o", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stdout and "1 of 2 runs done, 1 failed" in r.stdout
    (study_dir,) = out.iterdir()
    manifest = json.loads((study_dir / "manifest.json").read_text())
    states = {run["run_id"]: run["state"] for run in manifest["runs"]}
    assert states == {"e01-c1": "failed", "e02-c1": "done"}
    failed = next(run for run in manifest["runs"] if run["state"] == "failed")
    assert failed["exit_code"] == 1 and failed["error"]
    assert (study_dir / "runs/e01-c1/error.json").exists()
    assert (study_dir / "runs/e02-c1/result.json").exists()
    runs = pd.read_parquet(study_dir / "runs.parquet")
    assert list(runs["status"]) == ["failed", "done"]
    assert runs["output_tokens_per_s"].isna().tolist() == [True, False]


@pytest.mark.slow
def test_ctrl_c_keeps_finished_runs_and_exits_130(tmp_path, tiny_model):
    study = write(tmp_path / "long.yaml", TINY + """
sweep: {pytorch.batch_size: [1, 2, 4]}
execution: {n_cycles: 1, order: sequential}
""")
    out = tmp_path / "results"
    # run 2 blocks once its model is loaded (the harness's test hook): Ctrl-C surely lands mid-run
    proc = subprocess.Popen(
        [sys.executable, "-m", "llenergymeasure.orchestrator.cli", "run", str(study), "-o", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LLEM_TEST_FAULT": "e02-c1:sleep=3600@load"},
    )
    manifest_path = wait_for_second_run(out)
    fk.wait_hooked(manifest_path.parent, "e02-c1", timeout=300)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    m = json.loads(manifest_path.read_text())
    assert [r["state"] for r in m["runs"]] == ["done", "failed", "pending"]
    assert m["runs"][1]["error"] == "interrupted (Ctrl-C)"
    study_dir = manifest_path.parent
    assert f"interrupted (Ctrl-C): finished runs are kept in {study_dir}" in stderr
    assert (study_dir / "runs/e01-c1/result.json").exists()
    assert list(pd.read_parquet(study_dir / "runs.parquet")["status"]) == ["done", "failed", "pending"]
    # the interrupted run's process got SIGTERM and said so; error.json says why it was stopped
    err = json.loads((study_dir / "runs/e02-c1/error.json").read_text())
    assert err["error_type"] == "Interrupted" and err["kind"] == "interrupted"
    assert err["cause"] == "Terminated: terminated by signal SIGTERM" and "Terminated" in err["traceback"]


@pytest.mark.slow
def test_library_and_cli_share_one_path(tmp_path, tiny_model):
    import llenergymeasure as llem_lib

    f = write(tmp_path / "one.yaml", TINY + "pytorch: {batch_size: 2}\n")
    res = llem_lib.run(f, llem_lib.RunOptions(output=tmp_path / "lib"))
    assert res.ok and res.study_dir.parent == tmp_path / "lib"
    assert (res.study_dir / "one.yaml").read_text() == f.read_text()  # the file as given
    assert list(res.runs["status"]) == ["done"] and res.runs["pytorch.batch_size"].tolist() == [2]
    assert res.summary.loc[0, "runs_done"] == 1
    with pytest.raises(llem_lib.UserError):
        llem_lib.run(write(tmp_path / "bad.yaml", TINY + "pytorch: {batch: 2}\n"), llem_lib.RunOptions(output=tmp_path / "x"))
