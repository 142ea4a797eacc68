"""Where a study lives, and what happens when that place is wrong or goes away (issue 17):
a bad `-o` or `$LLEM_LOCK_DIR` is bad input (exit 2, one message naming the path,
nothing created); a study directory removed while the study runs stops it (exit 1,
saying what was lost) instead of being silently recreated; a file given where a study
directory is wanted is called a file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import open_study_manifest
from tests.support import faultkit as fk
from tests.support.helpers import llem, write

TINY = """\
name: where
model: llem/tiny-llama
n_prompts: 2
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0, warmup_batches: 0}
"""


@pytest.fixture(autouse=True)
def _reap_llem_processes():
    yield
    fk.reap()


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A directory even root cannot write: a read-only tmpfs (skips where mount is refused)."""
    path = tmp_path / "ro"
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs (needs root): {r.stderr.strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _refused(r: subprocess.CompletedProcess, *said: str) -> None:
    text = r.stdout + r.stderr
    assert r.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, r.stderr
    for s in said:
        assert s in error[0], error[0]


# -- item 3: bad output and lock locations

@pytest.mark.parametrize("case", ["file", "under-a-file", "sysfs", "read-only"])
def test_a_bad_output_location_exits_2_naming_it_and_creates_nothing(tmp_path, tiny_model, case, request):
    """They were FileExistsError / NotADirectoryError / PermissionError tracebacks (exit 1)."""
    f = write(tmp_path / "where.yaml", TINY)
    a_file = write(tmp_path / "a-file", "")
    out, reason = {
        "file": (a_file, "is a file, not a directory"),
        "under-a-file": (a_file / "sub", f"is under {a_file}, which is a file"),
        "sysfs": (Path("/sys/llem-test-output"), "cannot create a study directory there"),
        "read-only": (None, "is not writable"),
    }[case]
    if case == "read-only":
        out = request.getfixturevalue("read_only_dir") / "results"
    if case == "sysfs" and not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    r = llem("run", str(f), "--runner", "local", "-o", str(out))
    _refused(r, f"-o {out}", reason)
    assert case == "file" or not out.exists()
    assert a_file.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ro") == ["a-file", "where.yaml"]


@pytest.mark.parametrize("case", ["file", "under-a-file", "sysfs", "read-only"])
def test_a_bad_lock_directory_exits_2_naming_it_and_creates_nothing(tmp_path, tiny_model, case, request):
    """$LLEM_LOCK_DIR at a file, or somewhere nobody can write: tracebacks (exit 1) before."""
    f = write(tmp_path / "where.yaml", TINY)
    a_file = write(tmp_path / "a-file", "")
    locks, reason = {
        "file": (a_file, "is a file, not a directory"),
        "under-a-file": (a_file / "locks", f"{a_file} is a file"),
        "sysfs": (Path("/sys/llem-test-locks"), "cannot be created"),
        "read-only": (None, "is not writable"),
    }[case]
    if case == "read-only":
        locks = request.getfixturevalue("read_only_dir")
    if case == "sysfs" and not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    out = tmp_path / "out"
    r = llem("run", str(f), "--runner", "local", "-o", str(out), env={"LLEM_LOCK_DIR": str(locks)})
    _refused(r, f"LLEM_LOCK_DIR={locks}", reason, "point LLEM_LOCK_DIR at a directory")
    assert not out.exists()
    if case != "read-only":
        assert not locks.is_dir()


# -- item 8h: a file where a study directory is wanted

def test_a_file_given_as_a_study_directory_is_called_a_file(tmp_path):
    """`llem results FILE/x` said "no such directory"; FILE itself is a file too."""
    f = write(tmp_path / "study.yaml", TINY)
    for path, said in ((f, f"{f}: is a file, not a study directory"),
                       (f / "x", f"{f / 'x'}: {f} is a file, so this is not a study directory")):
        with pytest.raises(UserError, match="is a file") as e:
            open_study_manifest(path)
        assert str(e.value).startswith(said)
    r = llem("results", str(f / "x"))
    _refused(r, f"{f} is a file")


# -- item 5: the study directory removed while the study runs

@pytest.mark.slow
def test_a_study_directory_removed_mid_run_stops_the_study_and_is_not_recreated(tmp_path, tiny_model):
    """`rm -rf` of the study during run 2: the orchestrator recreated it, finished, and said
    "2 of 3 runs done" while run 1's result was gone. Now: exit 1 naming what was lost,
    and nothing recreated."""
    f = write(tmp_path / "where.yaml", TINY + """
sweep: {pytorch.batch_size: [1, 2, 3]}
execution: {n_cycles: 1, order: sequential}
""")
    out = tmp_path / "out"
    proc = fk.start("run", str(f), "--runner", "local", "-o", str(out),
                    environ=fk.env(LLEM_TEST_FAULT="e02-c1:sleep=300"))
    study = fk.the_study(out)
    fk.wait_hooked(study, "e02-c1")
    assert fk.states(study)["e01-c1"] == "done"
    shutil.rmtree(study)
    fk.fault("study directory removed mid-run")
    fk.kill_run_process(study, "e02-c1")
    code, text = fk.finish(proc)
    assert code == 1, text[-3000:]
    assert f"the study directory {study} was removed (with the results of finished run(s) e01-c1)" in text
    assert "runs done" not in text  # no summary of a study that is gone
    assert not study.exists() and list(out.iterdir()) == []  # nothing recreated, no new study directory


@pytest.mark.slow
def test_a_finished_result_removed_mid_study_stops_it(tmp_path, tiny_model):
    """The same check before each run and at the end: a done run's result.json removed."""
    f = write(tmp_path / "where.yaml", TINY + """
sweep: {pytorch.batch_size: [1, 2]}
execution: {n_cycles: 1, order: sequential}
""")
    out = tmp_path / "out"
    proc = fk.start("run", str(f), "--runner", "local", "-o", str(out),
                    environ=fk.env(LLEM_TEST_FAULT="e02-c1:sleep=300"))
    study = fk.the_study(out)
    fk.wait_hooked(study, "e02-c1")
    (study / "runs" / "e01-c1" / "result.json").unlink()
    fk.fault("a finished run's result.json removed mid-study")
    fk.kill_run_process(study, "e02-c1")
    code, text = fk.finish(proc)
    assert code == 1, text[-3000:]
    assert f"the result.json of finished run(s) e01-c1 was removed from {study}" in text
    assert f"llem run --resume {study}" in text
    assert fk.states(study) == {"e01-c1": "done", "e02-c1": "running"}  # nothing recorded past the loss
