"""`llem datasets`, `llem images`, `llem cache`: what studies are built from."""

from __future__ import annotations

from pathlib import Path

import click

from llenergymeasure.backends.table import BACKENDS
from llenergymeasure.orchestrator.cli.app import guard, main


@main.group("datasets")
def datasets_group() -> None:
    """Built-in prompt sets."""


@datasets_group.command("list")
@guard
def datasets_list() -> None:
    """Show the built-in prompt sets and whether each is installed."""
    from llenergymeasure.backends.prompts import BUILTIN_DATASETS, installed_path

    for name in BUILTIN_DATASETS:
        if name == "synthetic":
            click.echo(f"{name}: generated on the fly (always available)")
        else:
            p = installed_path(name)
            click.echo(f"{name}: " + (f"installed at {p}" if p.exists() else f"not installed (llem datasets fetch {name})"))


@datasets_group.command("fetch")
@click.argument("name")
@click.option("--from", "source", type=click.Path(path_type=Path), default=None,
              help="Install from a local copy (JSONL/CSV/Parquet) instead of downloading.")
@guard
def datasets_fetch(name: str, source: Path | None) -> None:
    """Download a built-in prompt set at its pinned revision and verify it."""
    from llenergymeasure.orchestrator.build.datasets import fetch_dataset

    dest = fetch_dataset(name, source, notify=lambda m: click.echo(m, err=True))
    click.echo(f"{name}: installed at {dest}")


@main.group("images")
def images_group() -> None:
    """Backend images (one per backend, tagged by content)."""


@images_group.command("build")
@click.argument("backend", required=False, type=click.Choice(BACKENDS))
@click.option("--base", default=None, help="Base image instead of the one this machine uses (the variant's "
              "Dockerfile default; the local CPU base where there is no GPU and the upstream base is absent).")
@click.option("--variant", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Which Dockerfile: cuda (the main image) or cpu (vLLM's CPU build). Default: cpu on a "
                   "machine without an NVIDIA GPU where the backend has one, else cuda.")
@guard
def images_build(backend: str | None, base: str | None, variant: str | None) -> None:
    """Build BACKEND's image (default: every backend's) for this machine."""
    from llenergymeasure.orchestrator.build.images import (
        IMAGES, build_image, docker_client, host_has_gpus, machine_choice, variants,
    )

    client = docker_client()
    gpus = host_has_gpus()
    names = [backend] if backend else list(IMAGES)
    if variant and not backend:  # every backend: the variant where a backend has it
        names = [n for n in names if variant in variants(n)]

    def log(message: str) -> None:
        click.echo(message, err=True)

    for name in names:
        choice = machine_choice(client, name, gpus, base, variant)
        if choice.why:
            log(choice.why)
        build_image(client, choice.spec, choice.base, log=log)


@images_group.command("list")
@guard
def images_list() -> None:
    """Each backend's image for this machine: its tag, whether it is here (found by content,
    whatever base it was built on), its base, and images left stale by newer content."""
    from llenergymeasure.orchestrator.build.images import (
        IMAGES, MAIN, REPO_ROOT, build_advice, docker_client, host_has_gpus, resolve_image, stale_images,
    )

    client = docker_client()
    gpus = host_has_gpus()
    for name in IMAGES:
        r = resolve_image(client, name, gpus)
        spec = r.choice.spec
        if r.image is None:
            click.echo(f"{name:9} {r.tag:40} missing; build: {build_advice(client, r.choice, gpus)}")
            click.echo(f"{'':9} base {r.choice.base}")
        else:
            digests = ", ".join(r.image.attrs.get("RepoDigests") or [])
            click.echo(f"{name:9} {r.ref:40} present {r.image.id[:19]}" + (f" {digests}" if digests else ""))
            click.echo(f"{'':9} base {r.base}" + (f" (found by content; {r.choice.base} has no image)"
                                                   if r.other_base else ""))
        if spec.variant != MAIN:
            click.echo(f"{'':9} variant {spec.variant} ({spec.dockerfile.relative_to(REPO_ROOT)})")
        for old in stale_images(client, spec):
            click.echo(f"{'':9} stale: {', '.join(old.tags) or old.id[:19]} (built from other harness content)")


@main.group("cache")
def cache_group() -> None:
    """The TensorRT-LLM engine cache ($LLEM_TRT_CACHE_DIR, else <llem cache>/trt-engines)."""


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@cache_group.command("list")
@guard
def cache_list() -> None:
    """Cached engines, most recently used first."""
    from llenergymeasure.orchestrator.build.engine_store import cache_root, list_engines
    from llenergymeasure.orchestrator.terminal import Terminal

    entries = list_engines()
    if not entries:
        click.echo(f"no cached engines in {cache_root()}")
        return
    rows = [[e.key[:12], e.model, e.settings_summary if e.material else "?", _gb(e.size_bytes),
             f"{e.build_seconds:.1f}" if e.build_seconds is not None else "-", e.created_at or "-",
             e.last_used_at or "-", f"damaged: {e.problem}" if e.problem else ("in use" if e.in_use else "ok")]
            for e in entries]
    Terminal().print_rows(["key", "model", "build settings", "size", "build s", "created", "last used", "state"],
                          rows, str(cache_root()))
    click.echo(f"{len(entries)} engine(s), {_gb(sum(e.size_bytes for e in entries))}")


@cache_group.command("prune")
@click.option("--older-than", "older_than", type=float, default=None, metavar="DAYS",
              help="Remove engines not used for DAYS days.")
@click.option("--max-size", "max_size", type=float, default=None, metavar="GB",
              help="Then remove least recently used engines until the cache is at most GB (10^9 bytes).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@guard
def cache_prune(older_than: float | None, max_size: float | None, dry_run: bool) -> None:
    """Remove damaged, old or least recently used engines; never one a run is using.

    Without --older-than or --max-size only damaged entries and leftovers of
    interrupted builds are removed.
    """
    from llenergymeasure.orchestrator.build.engine_store import prune

    removed = prune(older_than_days=older_than, max_total_gb=max_size, dry_run=dry_run,
                    notify=lambda m: click.echo(m, err=True))
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        why = f" (damaged: {e.problem})" if e.problem else f" (last used {e.last_used_at})"
        click.echo(f"{verb} {e.key[:12]} {e.model} {_gb(e.size_bytes)}{why}")
    click.echo(f"{verb} {len(removed)} engine(s), {_gb(sum(e.size_bytes for e in removed))}")
