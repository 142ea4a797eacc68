"""The README's archive section: its read-only commands run as written against an
archive (LLEM_ARCHIVE points at it), so the docs cannot drift from the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from llenergymeasure.orchestrator.archive.add import add_studies
from tests.support.helpers import REPO, llem

SECTION = (REPO / "README.md").read_text().split("## A results archive", 1)[1].split("\n## ", 1)[0]


def test_the_readme_archive_commands_run(recorded_study: Path, tmp_path: Path):
    archive = tmp_path / "archive"
    add_studies([recorded_study], archive)
    block = re.search(r"```bash\n(.*?)```", SECTION, re.S).group(1)
    commands = [line.split("  #")[0].strip() for line in block.splitlines()]
    runnable = [c for c in commands if c.startswith(("llem archive list", "llem archive query"))]
    assert len(runnable) == 2
    for command in runnable:
        args = [a for a in shlex.split(command)[1:] if not a.startswith("[")]
        args = [a for a in args if a not in ("--format", "table|csv|json]")]
        r = llem(*args, env={"LLEM_ARCHIVE": str(archive)})
        assert r.returncode == 0, (command, r.stderr)
        assert "recorded-multi-backend" in r.stdout or "ci95_low" in r.stdout
    assert "docs/archive-site.png" in SECTION and (REPO / "docs" / "archive-site.png").is_file()
    assert "[`docs/archive-schema.json`](docs/archive-schema.json)" in SECTION
