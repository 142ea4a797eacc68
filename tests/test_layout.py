"""The tree is the architecture: the rules it obeys, checked on the real tree and, to
show the checks can fail, on a small planted tree that breaks each of them.

- Dependencies point one way: entry points -> publication -> analysis -> execution ->
  build -> study -> (errors, notify) -> backends. So execution never imports analysis,
  and backends/ imports nothing from orchestrator/ (the images carry backends/ alone).
- Nothing but the CLI imports api.py.
- No import cycles, counting imports inside functions and under TYPE_CHECKING.
- One import root: a wheel of the project installs `llenergymeasure` and nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.support.helpers import REPO
from tests.support.import_graph import cycles, edges, upward

ROOTS = {"llenergymeasure.orchestrator": REPO / "orchestrator", "llenergymeasure.backends": REPO / "backends"}
O = "llenergymeasure.orchestrator"
LAYERS = [  # top first
    ("entry points", (f"{O}.api", f"{O}.cli", f"{O}.terminal")),
    ("archive", (f"{O}.archive",)),
    ("publication", (f"{O}.publication",)),
    ("analysis", (f"{O}.analysis",)),
    ("execution", (f"{O}.execution",)),
    ("build", (f"{O}.build",)),
    ("study", (f"{O}.study",)),
    ("foundation", (f"{O}.errors", f"{O}.notify", O)),
    ("backends", ("llenergymeasure.backends",)),
]


def test_dependencies_point_one_way():
    assert upward(edges(ROOTS), LAYERS) == []


def test_no_import_cycles_even_inside_functions():
    assert cycles(edges(ROOTS)) == []


def test_only_the_cli_imports_the_api():
    bad = [e for e in edges(ROOTS) if e.target == f"{O}.api" and not e.source.startswith(f"{O}.cli")]
    assert bad == []


def test_nothing_imports_the_old_top_level_names():
    """`llenergymeasure.backends` is the only way in: no `import backends` / `orchestrator`."""
    bad = []
    for folder in (REPO / "orchestrator", REPO / "backends", REPO / "llenergymeasure", REPO / "tests", REPO / "benchmarks"):
        for path in folder.rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                words = line.split()
                if len(words) > 1 and words[0] in ("import", "from") and words[1].split(".")[0] in ("backends",
                                                                                                    "orchestrator"):
                    bad.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert bad == []


PLANTED = {
    "top/__init__.py": "",
    "top/entry.py": "from app.low import helper\n",
    "low/__init__.py": "",
    "low/helper.py": "def f():\n    from app.top import entry  # an upward import hidden in a function\n",
    "low/a.py": "from app.low import b\n",
    "low/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.low import a\n",
    "low/c.py": "import app.low.d\n",
    "low/d.py": "def g():\n    from . import c\n",
}


def _planted(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    return {"app.top": tmp_path / "top", "app.low": tmp_path / "low"}


def test_the_checks_catch_a_planted_upward_import_and_cycles(tmp_path):
    roots = _planted(tmp_path, PLANTED)
    layers = [("top", ("app.top",)), ("low", ("app.low",))]
    found = upward(edges(roots), layers)
    assert len(found) == 1 and found[0].startswith("app.low.helper:2 (low) imports app.top.entry (top)")
    assert cycles(edges(roots)) == [["app.low.a", "app.low.b"], ["app.low.c", "app.low.d"],
                                    ["app.low.helper", "app.top.entry"]]  # (the upward import closes a loop too)
    clean = {k: v for k, v in PLANTED.items() if k not in ("low/helper.py", "low/b.py", "low/d.py")}
    clean_roots = _planted(tmp_path / "clean", clean)
    assert upward(edges(clean_roots), layers) == [] and cycles(edges(clean_roots)) == []


@pytest.mark.slow
def test_the_wheel_installs_one_package_under_one_name(tmp_path):
    """A wheel of the project, installed into a fresh venv: only `llenergymeasure` (with the
    run side, the host side, the shipped datasets and the report template) and its console
    script land there, and it imports from there, not from this checkout."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("llenergymeasure-*.whl"))
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"llenergymeasure", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    before = set(os.listdir(site))
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    added = set(os.listdir(site)) - before
    assert {a for a in added if not a.endswith(".dist-info")} == {"llenergymeasure"}, added
    for rel in ("backends/__main__.py", "backends/table.py", "orchestrator/cli/__init__.py", "datasets/aienergyscore.json",
                "datasets/synthetic/words.txt", "orchestrator/analysis/templates/report.html.j2",
                "orchestrator/archive/templates/site.html.j2", "orchestrator/archive/templates/site.js"):
        assert (site / "llenergymeasure" / rel).is_file(), rel
    assert (venv / "bin" / "llem").is_file()
    # dependencies from this project's environment, the package itself from the fresh venv
    deps = subprocess.run([sys.executable, "-c", "import pydantic, os; print(os.path.dirname(os.path.dirname(pydantic.__file__)))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": deps}
    r = subprocess.run([venv / "bin" / "python", "-c", "import llenergymeasure.backends.config as c, "
                        "llenergymeasure.orchestrator.study.load as l; print(c.__file__); print(l.__file__)"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(site)) for line in r.stdout.split()), r.stdout
    r = subprocess.run([venv / "bin" / "llem", "--version"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "llem" in r.stdout, r.stderr


def test_every_backend_is_one_row_one_package_one_image_folder():
    """The README's "Adding a backend": each row of the backend table has exactly its package
    and its image folder, and every package and image folder has its row."""
    from llenergymeasure.backends.section import BackendSection
    from llenergymeasure.backends.table import BACKENDS, TABLE

    packages = {p.parent.name for p in (REPO / "backends").glob("*/backend.py")}
    images = {p.parent.name for p in (REPO / "images").glob("*/Dockerfile")}
    assert packages == set(BACKENDS) and images == set(BACKENDS)
    for row in TABLE:
        assert issubclass(row.section, BackendSection)
        for rel in ("__init__.py", "config.py", "backend.py"):
            assert (REPO / "backends" / row.name / rel).is_file(), (row.name, rel)
        assert (REPO / "images" / row.name / "requirements.lock").is_file()
        dockerfile = (REPO / "images" / row.name / "Dockerfile").read_text()
        assert "COPY backends/ /opt/llem/llenergymeasure/backends/" in dockerfile
        assert 'ENTRYPOINT ["python3", "-m", "llenergymeasure.backends"]' in dockerfile
        assert f'@register_backend("{row.name}")' in (REPO / "backends" / row.name / "backend.py").read_text()
