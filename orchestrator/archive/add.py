"""`llem archive add`: studies into the archive, atomically and once.

Every study is validated and turned into rows before anything is written, so bad input
(not a study, unfinished runs without --partial) changes nothing. Then, holding the
archive's lock: each new study's files are written and fsync'ed under .staging/,
renamed into studies/, and archive.json (the index, the one commit point) is replaced
atomically. A study is in the archive when the index lists it, so a crash or kill at
any moment leaves the archive as it was (unlisted files are ignored, and the next add
removes them), or as it is after the add.

De-duplication: a study is identified by its study id (schema.StudyRow.study_id), its
runs by run id within it. Adding a study already there changes nothing; a more complete
copy of it (a partial one since finished) replaces it, runs matched by run id.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.archive.layout import (
    INDEX_FILE, ArchiveLayout, check_current, fsync_dir, load_index, local_root, locked, looks_like_v0,
    table_file_name,
)
from llenergymeasure.orchestrator.archive.schema import (
    TABLES, ArchiveIndex, FileEntry, StudyEntry, arrow_schema, schema_fingerprint,
)
from llenergymeasure.orchestrator.archive.tables import UNFINISHED, StudyTables, study_id, study_tables
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.layout import StudyLayout
from llenergymeasure.orchestrator.execution.manifest import open_study_manifest

ENV_FAULT = "LLEM_TEST_ARCHIVE_FAULT"  # TEST HOOK only (tests/archive/test_add.py); llem never sets it
FAULT_POINTS = ("first-file", "staged", "committed")


@dataclass
class AddOutcome:
    archive: Path
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # a more complete copy replaced a partial one
    unchanged: list[tuple[str, str]] = field(default_factory=list)  # (study id, why)


def fault(point: str) -> None:
    """TEST HOOK: `LLEM_TEST_ARCHIVE_FAULT=<action>@<point>`, point one of FAULT_POINTS;
    `exit`: os._exit(70) there; `pause=<dir>`: create <dir>/reached-<point>, then wait
    until <dir>/go exists (a test kills the process in between). A no-op without it."""
    spec = os.environ.get(ENV_FAULT, "")
    action, _, at = spec.partition("@")
    if not spec or at != point:
        return
    print(f"llem: TEST HOOK {ENV_FAULT}: {action} at {point}", file=sys.stderr, flush=True)
    if action == "exit":
        os._exit(70)
    if action.startswith("pause="):
        where = Path(action.split("=", 1)[1])
        (where / f"reached-{point}").touch()
        while not (where / "go").exists():
            time.sleep(0.02)


# -- writing -----------------------------------------------------------------------------

def parquet_bytes(table: str, rows: list[dict]) -> bytes:
    """One table's Parquet file: the schema's columns and types, whatever the rows hold."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(TABLES[table])), buf, compression="zstd")
    return buf.getvalue()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_study_files(folder: Path, tables: StudyTables, on_first: Callable[[], None] = lambda: None,
                      ) -> dict[str, FileEntry]:
    """The study's four files in `folder` (created), each fsync'ed, then the folder."""
    folder.mkdir(parents=True)
    files = {}
    for i, (name, rows) in enumerate(tables.rows.items()):
        data = parquet_bytes(name, rows)
        _write_synced(folder / table_file_name(name), data)
        files[name] = FileEntry(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), rows=len(rows),
                                columns_sha256=schema_fingerprint(arrow_schema(TABLES[name])))
        if i == 0:
            on_first()
    fsync_dir(folder)
    return files


def write_index(layout: ArchiveLayout, index: ArchiveIndex) -> None:
    write_bytes_atomic(layout.index, (index.model_dump_json(indent=2) + "\n").encode())
    fsync_dir(layout.root)


# -- deciding ----------------------------------------------------------------------------

def _target(root: str | Path | None) -> ArchiveLayout:
    layout = ArchiveLayout(local_root(root, "added to"))
    r = layout.root
    if r.exists() and not r.is_dir():
        raise UserError(f"--archive {r}: is a file, not an archive directory")
    if StudyLayout(r).manifest.is_file():
        raise UserError(f"--archive {r}: is a study directory; give the archive's directory (a new or empty one "
                        "makes a new archive)")
    if r.is_dir() and not layout.index.exists() and not looks_like_v0(r):
        strangers = [p.name for p in r.iterdir() if p.name not in (".lock", ".staging", "studies")]
        if strangers:
            raise UserError(f"--archive {r}: not an llem archive (no {INDEX_FILE}) and not empty "
                            f"({', '.join(sorted(strangers)[:3])}); give a new or empty directory")
    check_current(layout)  # before any study is read: a newer or older archive is refused at once
    return layout


def _most_complete(found: list[StudyTables]) -> list[StudyTables]:
    """One copy per study id (the most complete) when a command names one study twice."""
    best: dict[str, StudyTables] = {}
    for t in found:
        if t.study_id not in best or t.runs_done > best[t.study_id].runs_done:
            best[t.study_id] = t
    return list(best.values())


def _decide(index: ArchiveIndex, t: StudyTables) -> str | None:
    """None to write the study; else why it is left as it is."""
    have = index.studies.get(t.study_id)
    if have is None:
        return None
    if t.runs_done > have.runs_done:
        return None
    if t.runs_done == have.runs_done:
        return "already in the archive"
    return f"the archive holds a more complete copy ({have.runs_done} finished runs, this one {t.runs_done})"


def _free_dir(layout: ArchiveLayout, study_id: str) -> str:
    rel = f"studies/{study_id}"
    n = 2
    while (layout.root / rel).exists():
        rel = f"studies/{study_id}~{n}"
        n += 1
    return rel


def collect_garbage(layout: ArchiveLayout, index: ArchiveIndex) -> None:
    """Remove what an interrupted add left: staging folders, study folders the index does not list."""
    shutil.rmtree(layout.staging, ignore_errors=True)
    listed = {e.dir for e in index.studies.values()}
    if layout.studies.is_dir():
        for d in layout.studies.iterdir():
            if f"studies/{d.name}" not in listed:
                shutil.rmtree(d, ignore_errors=True)


def _commit(layout: ArchiveLayout, index: ArchiveIndex, todo: list[StudyTables], outcome: AddOutcome) -> None:
    staging = layout.staging / f"add-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    try:
        entries, old_dirs = {}, []
        first = [True]

        def on_first() -> None:
            if first[0]:
                first[0] = False
                fault("first-file")

        written = {t.study_id: write_study_files(staging / t.study_id, t, on_first) for t in todo}
        layout.studies.mkdir(exist_ok=True)
        now = utc_now()
        for t in todo:
            rel = _free_dir(layout, t.study_id)
            os.rename(staging / t.study_id, layout.root / rel)
            entries[t.study_id] = StudyEntry(dir=rel, files=written[t.study_id], run_ids=t.run_ids,
                                             runs_done=t.runs_done, partial=t.partial, added_at=now)
            if t.study_id in index.studies:
                old_dirs.append(index.studies[t.study_id].dir)
                outcome.replaced.append(t.study_id)
            else:
                outcome.added.append(t.study_id)
        fsync_dir(layout.studies)
        fault("staged")
        write_index(layout, index.model_copy(update={"studies": {**index.studies, **entries}}))
        fault("committed")
        for rel in old_dirs:
            shutil.rmtree(layout.root / rel, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            layout.staging.rmdir()
        except OSError:
            pass


def add_studies(study_dirs: list[Path], archive: str | Path | None = None, partial: bool = False,
                keep_identity: bool = False) -> AddOutcome:
    """Add `study_dirs` to the archive (created when new); see the module docstring."""
    if not study_dirs:
        raise UserError("name at least one study directory to add")
    layout = _target(archive)
    index = load_index(layout)
    known = [_already_there(Path(d), index, partial) for d in study_dirs]
    tables = [study_tables(Path(d), partial, keep_identity) for d, k in zip(study_dirs, known, strict=True) if k is None]
    outcome = add_tables(tables, layout)  # with none: what an interrupted add left is still cleaned up
    said = {s for s, _ in outcome.unchanged}
    outcome.unchanged += list(dict.fromkeys(k for k in known if k is not None and k[0] not in said))
    return outcome


def _already_there(study_dir: Path, index: ArchiveIndex, partial: bool) -> tuple[str, str] | None:
    """(study id, why) when the archive already holds this study at least as complete, read
    from its manifest alone (adding an archived study again costs no more than that); None
    when it must be read and added, or refused (study_tables says why)."""
    m = open_study_manifest(study_dir)
    if any(r.state in UNFINISHED for r in m.runs) and not partial:
        return None
    sid = study_id(m)
    have = index.studies.get(sid)
    done = sum(r.state == "done" for r in m.runs)
    if have is None or done > have.runs_done or done == 0:
        return None
    return sid, _decide(index, StudyTables(sid, {}, [], done, False)) or "already in the archive"


def add_tables(tables: list[StudyTables], layout: ArchiveLayout) -> AddOutcome:
    """Commit studies already read and validated (tables.study_tables) into the archive."""
    found = _most_complete(tables)
    outcome = AddOutcome(layout.root)
    with locked(layout):
        index = load_index(layout)
        collect_garbage(layout, index)
        todo = []
        for t in found:
            why = _decide(index, t)
            if why is None:
                todo.append(t)
            else:
                outcome.unchanged.append((t.study_id, why))
        if todo:
            _commit(layout, index, todo, outcome)
    return outcome
