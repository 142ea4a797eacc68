"""Archive scale: 1,000 synthetic studies generated from one recorded study, added to a
new archive; prints the add time per study, the archive's size, a typical query's time,
and the static site's build time and page weight.

    python benchmarks/archive_scale.py [--studies 1000] [--full-adds 20] [--batch 50] [--study DIR] [--keep DIR]

Two costs make up an add, and they are measured apart:
- a full `llem archive add` of one study directory (reading it through `llem results`'
  code, validating, stripping identity, committing), on --full-adds copies of the study
  (each a new study: its manifest's creation time changed), one add per study;
- the commit alone (Parquet files written and fsync'ed, index replaced) for the rest,
  whose tables are the recorded study's with a new study id, hardware and scaled
  figures, committed --batch studies at a time.
The study is the recorded multi-backend fixture (tests/support/recorded_study.py: 6
configurations x 3 cycles, no measurement behind it) unless --study names a real one.
"""

from __future__ import annotations

import argparse
import copy
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llenergymeasure.orchestrator.archive.add import add_studies, add_tables  # noqa: E402
from llenergymeasure.orchestrator.archive.layout import ArchiveLayout  # noqa: E402
from llenergymeasure.orchestrator.archive.query import query  # noqa: E402
from llenergymeasure.orchestrator.archive.schema import RUN_METRICS  # noqa: E402
from llenergymeasure.orchestrator.archive.site import build_site  # noqa: E402
from llenergymeasure.orchestrator.archive.tables import StudyTables, study_tables  # noqa: E402
from llenergymeasure.orchestrator.execution.manifest import Manifest  # noqa: E402

GPUS = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "NVIDIA RTX 4090"]
MODELS = ["llem/tiny-llama", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"]
TYPICAL = ("select hardware, batch_size, avg(mean) energy_j_per_token, count(distinct study_id) studies "
           "from summary where metric = 'energy_per_output_token_j' and runs_done > 0 "
           "group by all order by hardware, batch_size")
SCALED = {m for m, kind in RUN_METRICS if kind is float}


def recorded_study(root: Path) -> Path:
    from tests.support.recorded_study import build, template_result

    return build(root, template_result(), requests=False)


def copy_as_new_study(study: Path, dest: Path, i: int) -> Path:
    """The study, copied, as another study (its id covers the manifest's creation time)."""
    shutil.copytree(study, dest)
    m = Manifest.load(dest)
    m.created_at = f"2027-01-01T00:00:{i % 60:02d}.{i:03d}+00:00"
    m.save()
    return dest


def synthetic(base: StudyTables, i: int, rng: random.Random) -> StudyTables:
    """`base` as study number i: a new id, another GPU and model, figures scaled."""
    rows = copy.deepcopy(base.rows)
    sid = f"20270101T{i // 3600 % 24:02d}{i // 60 % 60:02d}{i % 60:02d}Z-{rng.getrandbits(48):012x}"
    gpu, model, k = GPUS[i % len(GPUS)], MODELS[i % len(MODELS)], rng.uniform(0.5, 2.0)
    for table, items in rows.items():
        for r in items:
            r["study_id"] = sid
            if "hardware" in r and r["hardware"] and not r["hardware"].startswith("CPU"):
                r["hardware"] = gpu
            if "gpu_model" in r and r["gpu_model"]:
                r["gpu_model"] = gpu
            if "model" in r:
                r["model"] = model
            if table == "runs":
                for m in SCALED & set(r):
                    if r[m] is not None:
                        r[m] *= k
            if table == "summary":
                for m in ("mean", "std", "ci95_low", "ci95_high"):
                    if r[m] is not None:
                        r[m] *= k
    rows["studies"][0]["study_name"] = f"synthetic-{i:04d}"
    return StudyTables(sid, rows, base.run_ids, base.runs_done, base.partial)


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--full-adds", type=int, default=20, help="studies added as directories (the whole add path)")
    ap.add_argument("--batch", type=int, default=50, help="studies per commit for the rest")
    ap.add_argument("--study", type=Path, default=None, help="a real study directory to generate from")
    ap.add_argument("--keep", type=Path, default=None, help="leave the archive and site here")
    args = ap.parse_args()
    rng = random.Random(0)

    with tempfile.TemporaryDirectory(prefix="llem-archive-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        study = args.study or recorded_study(work)
        archive, site = work / "archive", work / "site"
        layout = ArchiveLayout(archive)

        full = []
        for i in range(args.full_adds):
            d = copy_as_new_study(study, work / "copies" / f"s{i:04d}", i)
            t0 = time.perf_counter()
            add_studies([d], archive)
            full.append(time.perf_counter() - t0)
        base = study_tables(study, partial=False, keep_identity=False)
        commits, n = [], args.full_adds
        while n < args.studies:
            batch = [synthetic(base, n + j, rng) for j in range(min(args.batch, args.studies - n))]
            t0 = time.perf_counter()
            add_tables(batch, layout)
            commits.append((time.perf_counter() - t0) / len(batch))
            n += len(batch)

        t0 = time.perf_counter()
        again = add_studies([work / "copies" / "s0000"], archive) if args.full_adds else None
        readd = time.perf_counter() - t0
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            result = query(archive, TYPICAL)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        build_site(archive, site)
        site_s = time.perf_counter() - t0

        print(f"studies: {n} ({args.full_adds} added as directories, {n - args.full_adds} committed as tables)")
        if full:
            print(f"add, whole path (read + validate + strip + commit): median {statistics.median(full):.2f} s/study, "
                  f"range {min(full):.2f}-{max(full):.2f} s (n={len(full)})")
            print(f"adding an archived study again: {readd:.2f} s, unchanged: {bool(again and again.unchanged)}")
        if commits:
            print(f"add, commit alone at {args.batch}/commit: median {statistics.median(commits) * 1000:.1f} ms/study; "
                  f"first {commits[0] * 1000:.1f}, last {commits[-1] * 1000:.1f} ms/study (the index grows)")
        size = folder_bytes(archive)
        print(f"archive: {size / 2**20:.1f} MiB, {size / n / 1024:.1f} KiB/study, "
              f"index {(archive / 'archive.json').stat().st_size / 2**20:.2f} MiB")
        print(f"typical query ({len(result)} rows over {n} studies): median {statistics.median(times):.2f} s "
              f"(first {times[0]:.2f} s)")
        weight = {p.name: p.stat().st_size for p in site.iterdir()}
        print(f"site: built in {site_s:.1f} s; page weight {sum(weight.values()) / 2**20:.1f} MiB "
              + "(" + ", ".join(f"{k} {v / 2**20:.2f}" for k, v in sorted(weight.items())) + ")")


if __name__ == "__main__":
    main()
