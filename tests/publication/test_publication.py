"""Publication mode and `llem reproduce`, in a temporary git repository holding this
working tree (committed, so it is clean unless a test dirties it), with the real
CLI run from there so that the tool checks that tree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.support.helpers import CPU_STUDY, REPO, llem, write

pytestmark = pytest.mark.slow

# the shared three-cycle CPU study, shuffled (the lock must pin the run order) and
# published without energy (no sensor here)
STUDY = (CPU_STUDY.replace("name: cpu-three-cycles", "name: pub")
         .replace("execution: {n_cycles: 3, order: interleaved}",
                  "execution:\n  n_cycles: 3\n  order: shuffled\n  shuffle_seed: 5\n"
                  "  publication: {energy_required: false}"))
assert "shuffle_seed: 5" in STUDY


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def clean_tree(tmp_path: Path) -> Path:
    """This working tree's files (tracked and untracked, not ignored) committed in a new repository."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                           check=True, capture_output=True, text=True).stdout.split("\0")
    tree = tmp_path / "tree"
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            dst = tree / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    _git(tree, "init", "-q")
    _git(tree, "add", "-A")
    _git(tree, "-c", "user.email=test@llem", "-c", "user.name=test", "commit", "-qm", "snapshot")
    (tree / ".git" / "info" / "exclude").write_text("studies-under-test/\nresults/\n")
    return tree


def _study(tree: Path, text: str = STUDY) -> Path:
    return write(tree / "studies-under-test" / "pub.yaml", text)


def _refused(tree: Path, study: Path, *args: str, env: dict | None = None) -> str:
    out = tree / "results"
    r = llem("run", str(study), "-o", str(out), *args, cwd=tree, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert "publication mode: refusing to start" in r.stderr, r.stderr
    assert not out.exists(), "a refused publication study must not create anything"
    return r.stderr


def test_dirty_tree_is_refused_naming_the_file(clean_tree: Path, tiny_model: Path):
    changed = clean_tree / "orchestrator" / "analysis" / "stats.py"
    changed.write_text(changed.read_text(encoding="utf-8") + "# changed\n", encoding="utf-8")  # still valid code
    (clean_tree / "notes.txt").write_text("untracked\n")
    err = _refused(clean_tree, _study(clean_tree))
    assert "uncommitted or untracked changes" in err and "orchestrator/analysis/stats.py" in err and "notes.txt" in err


def test_unpinned_model_and_one_cycle_are_refused(clean_tree: Path, tiny_model: Path):
    text = STUDY.replace("model: llem/tiny-llama", "model: Qwen/Qwen2.5-0.5B-Instruct").replace("n_cycles: 3", "n_cycles: 1")
    err = _refused(clean_tree, _study(clean_tree, text))
    assert "model: Qwen/Qwen2.5-0.5B-Instruct (experiment 1) is not pinned; set model_revision" in err
    assert "execution.n_cycles: 1 planned" in err
    # --publication on the command line means the same as the study setting
    plain = STUDY.replace("  publication: {energy_required: false}\n", "").replace("n_cycles: 3", "n_cycles: 2")
    err = _refused(clean_tree, _study(clean_tree, plain), "--publication")
    assert "execution.n_cycles: 2 planned" in err


def test_no_energy_source_is_refused_unless_energy_is_not_required(clean_tree: Path, tiny_model: Path):
    from llenergymeasure.backends.harness.energy import select_cpu_meter

    if select_cpu_meter().source:
        pytest.skip("this machine can read RAPL, so a CPU run has an energy source")
    # the local runner: with Docker here, auto would pick a CPU image whose base is refused first
    err = _refused(clean_tree, _study(clean_tree, STUDY.replace("{energy_required: false}", "true")),
                   "--runner", "local")
    assert "runs on the CPU and" in err and "energy_required: false" in err


def test_image_referenced_by_tag_only_is_refused(clean_tree: Path, tiny_model: Path):
    from tests.support.helpers import LOCAL_BASE, docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    err = _refused(clean_tree, _study(clean_tree), "--runner", "docker",
                   env={"LLEM_BASE_IMAGE_PYTORCH": LOCAL_BASE})
    assert f"base {LOCAL_BASE} is referenced by tag only; pin it by digest" in err


def test_publication_study_locks_round_trips_and_reproduces(clean_tree: Path, tiny_model: Path):
    out = clean_tree / "results"
    r = llem("run", str(_study(clean_tree)), "--runner", "local", "-o", str(out), cwd=clean_tree)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (study_dir,) = out.iterdir()
    for name in ("study.lock.yaml", "environment.json", "REPRODUCE.md", "summary.parquet", "report.html"):
        assert (study_dir / name).exists(), name
    lock_file = study_dir / "study.lock.yaml"
    lock = yaml.safe_load(lock_file.read_text())["lock"]
    manifest = json.loads((study_dir / "manifest.json").read_text())
    assert lock["tool_commit"] == _git(clean_tree, "rev-parse", "HEAD").strip()
    assert lock["run_order"] == [x["run_id"] for x in manifest["runs"]]
    assert [x["id"] for x in lock["experiments"]] == [x["id"] for x in manifest["experiments"]]
    assert lock["models"]["llem/tiny-llama"].startswith("sha256:")
    # the lock is a study file that loads to the identical plan
    from llenergymeasure.orchestrator.study.plan import order_runs
    from llenergymeasure.orchestrator.study.load import load_study

    again = load_study(lock_file)
    ex = again.execution
    assert [e.id for e in again.experiments] == [x["id"] for x in manifest["experiments"]]
    assert [p.run_id for p in order_runs(len(again.experiments), ex.n_cycles, ex.order, ex.shuffle_seed)] \
        == lock["run_order"]
    assert ex.publication is not None and ex.publication.energy_required is False
    # throughput/latency only: no energy columns anywhere
    for table in ("runs.parquet", "summary.parquet"):
        cols = pd.read_parquet(study_dir / table).columns
        assert not [c for c in cols if "energy" in c or "power_w" in c], table
    assert "llem reproduce" in (study_dir / "REPRODUCE.md").read_text()
    env = json.loads((study_dir / "environment.json").read_text())
    assert env["kernel"] and env["host"]["cpu_model"] is not None and "env" not in env["host"]

    # a changed lock is refused before anything runs
    tampered = write(clean_tree / "studies-under-test" / "tampered.yaml",
                     lock_file.read_text().replace("shuffle_seed: 5", "shuffle_seed: 6"))
    r = llem("run", str(tampered), "--runner", "local", "-o", str(clean_tree / "other"), cwd=clean_tree)
    assert r.returncode == 2 and "run order differs" in r.stderr and not (clean_tree / "other").exists()

    # reproduce on the same machine. Whether two runs of a tiny model agree on a shared CPU is a
    # measurement, not a test (a loaded machine made them differ by 95%): a tolerance of 100x the
    # original mean makes every comparable row consistent, and the verdict logic is tested on its own
    r = llem("reproduce", str(study_dir), "-o", str(clean_tree / "repro"), "--runner", "local",
             "--tolerance", "100", cwd=clean_tree)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (repro_dir,) = (clean_tree / "repro").iterdir()
    table = pd.read_parquet(repro_dir / "reproduction.parquet")
    tps = table[table["metric"] == "output_tokens_per_s"]
    assert len(tps) == 2 and (tps["verdict"] == "consistent").all(), tps.to_dict("records")
    assert json.loads((repro_dir / "manifest.json").read_text())["reproduces"] == str(study_dir.resolve())
    html = (repro_dir / "report.html").read_text()
    assert 'id="reproduction-table"' in html and 'id="lock"' in html and "consistent" in html
    assert "comparisons consistent" in r.stdout


def test_reproduction_verdicts():
    """consistent: the change's CI includes zero, or the change is within the tolerance of the
    original mean; different otherwise, with its size; not comparable without numbers."""
    from llenergymeasure.orchestrator.publication.reproduce import verdicts

    table = pd.DataFrame([
        {"change": 1.0, "a_mean": 100.0, "ci_excludes_zero": True, "change_pct": 1.0},    # within 5%
        {"change": 30.0, "a_mean": 100.0, "ci_excludes_zero": False, "change_pct": 30.0},  # CI spans zero
        {"change": 30.0, "a_mean": 100.0, "ci_excludes_zero": True, "change_pct": 30.0},   # a real change
        {"change": 30.0, "a_mean": 100.0, "ci_excludes_zero": None, "change_pct": 30.0},   # no interval
        {"change": float("nan"), "a_mean": 100.0, "ci_excludes_zero": None, "change_pct": None},
    ])
    assert verdicts(table, 0.05)["verdict"].tolist() == [
        "consistent", "consistent", "different (+30.0%)", "not comparable", "not comparable"]
    assert verdicts(table, 0.5)["verdict"].tolist()[2] == "consistent"
