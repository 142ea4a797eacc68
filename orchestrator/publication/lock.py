"""The reproducibility bundle of a publication study: `study.lock.yaml`,
`environment.json` and `REPRODUCE.md`, written into the study directory before
the first run.

`study.lock.yaml` is the study file as given (so labels and the sweep stay
readable) plus a `lock:` section pinning what it resolved to: every experiment's
id and full config, the run order, model revisions (commits, or content hashes of
local and built-in models), dataset hashes, images by id and digest, the tool's
version and commit. Loading it is loading a study; running it first checks that
the study still resolves to exactly the locked plan and pins (`verify_lock`).
With `n_cycles: auto` the lock pins the rule (target_ci_pct, max_cycles) and the first
cycles' order; once the study has run, `record_cycles_run` adds the cycles each
configuration actually ran.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import yaml

from llenergymeasure.backends import __version__
from llenergymeasure.backends.hashing import sha256_file
from llenergymeasure.backends.harness.environment import snapshot, tool_commit
from llenergymeasure.backends.harness.gpu import GpuDiscovery, nvml_inventory
from llenergymeasure.backends.prompts import dataset_path
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.layout import StudyLayout
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.study.spec import Study
from llenergymeasure.orchestrator.study.yaml_file import read_yaml

TOOL_ROOT = Path(__file__).resolve().parents[2]


def model_pins(study: Study) -> dict[str, str]:
    """model -> the revision it resolved to: its pinned commit, or sha256:<content> of a local/built-in model."""
    from llenergymeasure.orchestrator.build.engine_keys import revision_of

    pins = {}
    for e in study.experiments:
        c = e.config
        if c.model not in pins:
            pins[c.model] = c.model_revision or revision_of(c.model)
    return pins


def dataset_pins(study: Study) -> dict[str, str]:
    pins = {}
    for e in study.experiments:
        path = dataset_path(e.config.dataset)
        pins[e.config.dataset] = ("generated from each experiment's seed (no file)" if path is None
                                  else "sha256:" + sha256_file(path))
    return pins


def image_pins(study: Study) -> dict[str, dict[str, Any]]:
    """The image each backend's runs use, as the Docker runner resolves it (the current
    content on whatever base it was built: the local CPU base here, the pinned upstream
    base on a GPU machine), not the default base's tag, which may name no image at all."""
    from llenergymeasure.orchestrator.build.images import docker_client, host_has_gpus, resolve_image

    client = docker_client(timeout=5)
    gpus = host_has_gpus()
    out = {}
    for backend in sorted({e.config.backend for e in study.experiments}):
        r = resolve_image(client, backend, gpus)
        image = r.image
        out[backend] = {"tag": r.ref if image is not None else r.tag, "id": image.id if image else None,
                        "base": r.base if image is not None else r.choice.base,
                        "digests": list(image.attrs.get("RepoDigests") or []) if image else []}
    return out


def pins(study: Study, plan: list[PlannedRun], runner: str) -> dict[str, Any]:
    return {
        "tool_version": __version__,
        "tool_commit": tool_commit(),
        "requirements_lock_sha256": sha256_file(TOOL_ROOT / "requirements.lock"),
        "runner": runner,
        "experiments": [{"index": e.index, "id": e.id, "label": e.label,
                         "config": e.config.model_dump(mode="json", exclude_none=True)} for e in study.experiments],
        "run_order": [r.run_id for r in plan],
        "models": model_pins(study),
        "datasets": dataset_pins(study),
        "images": image_pins(study) if runner == "docker" else None,
    }


def host_environment(runner: str) -> dict[str, Any]:
    """What the study ran on, from the host: GPUs (model, UUID), driver, CUDA, kernel, CPU, runtime."""
    from llenergymeasure.orchestrator.execution.machine import as_dicts, collect

    env: dict[str, Any] = {
        "host": snapshot(GpuDiscovery([], unavailable_reason="host snapshot: GPUs are listed under gpus")),
        "gpus": [{"index": i, "uuid": u, "name": n} for i, u, n in nvml_inventory()],
        "kernel": platform.release(),
        "runner": runner,
        "checks": as_dicts(collect()),
    }
    env["host"].pop("env", None)  # environment variables stay out of published files
    return env


def _cycles_text(study: Study) -> str:
    ex = study.execution
    if not ex.auto:
        return f"{ex.n_cycles} cycle(s)"
    return (f"{ex.describe_cycles()}: the first cycles in the order, then one more cycle at a time of the "
            "configurations whose 95% CI was still wider than the target (`cycles_run` in the lock says how many "
            "each ran; a re-run decides its added cycles from its own runs)")


def reproduce_text(study: Study, lock: dict[str, Any], study_dir: Path) -> str:
    commit = lock["tool_commit"] or "(unknown)"
    layout = StudyLayout(study_dir)
    fetch = "".join(f".venv/bin/llem datasets fetch {d}\n" for d in lock["datasets"] if d in ("aienergyscore",))
    images = "" if lock["runner"] != "docker" else (
        "\nBuild the images (their tags are content hashes; the ids must match the lock):\n\n"
        "```bash\n" + "\n".join(f".venv/bin/llem images build {b}" for b in lock["images"]) + "\n```\n")
    return f"""# Reproducing {study.name}

Run by llem {lock['tool_version']} at commit `{commit}` with the {lock['runner']} runner:
{len(lock['experiments'])} configuration(s) x {_cycles_text(study)}, in the order
recorded in `{layout.study_lock.name}` (which also pins models, datasets{' and images' if lock['runner'] == 'docker' else ''}).
The machine it ran on is described in `{layout.environment.name}`; differences in GPU, driver or
CPU explain most differences in the numbers.

```bash
git clone <the llenergymeasure repository> llem && cd llem
git checkout {commit}
make setup
{fetch}```
{images}
Then re-run the locked study and compare it with the original, configuration by
configuration (writes a new study directory with a comparison table and report):

```bash
.venv/bin/llem reproduce path/to/{study_dir.name} -o results/ --runner {lock['runner']}
```

`.venv/bin/llem run path/to/{study_dir.name}/{layout.study_lock.name}` runs the same plan without the comparison.
"""


def write_bundle(study_dir: Path, study: Study, lock: dict[str, Any]) -> None:
    """Write the bundle for pins computed (and so checked) before the study directory existed."""
    from llenergymeasure.backends.atomic import write_bytes_atomic, write_json_atomic

    runner = lock["runner"]
    data = {k: v for k, v in read_yaml(study.path).items() if k != "lock"}
    execution = dict(data.get("execution") or {})
    execution["publication"] = study.execution.publication.model_dump(mode="json")  # type: ignore[union-attr]
    execution["n_cycles"] = study.execution.n_cycles  # --cycles on the command line is part of the plan
    if study.execution.auto:  # the rule the added cycles follow, defaults resolved
        execution["target_ci_pct"] = study.execution.target_ci_pct
        execution["max_cycles"] = study.execution.max_cycles
    data["execution"] = execution
    data["lock"] = lock
    header = (f"# llem study lock for {study.name}, written {study_dir.name}. A valid study file:\n"
              f"# `llem run` on it re-runs exactly this plan, after checking every pin in `lock:`.\n")
    layout = StudyLayout(study_dir)
    write_bytes_atomic(layout.study_lock, (header + yaml.safe_dump(data, sort_keys=False)).encode("utf-8"))
    write_json_atomic(layout.environment, host_environment(runner))
    write_bytes_atomic(layout.reproduce_md, reproduce_text(study, lock, study_dir).encode("utf-8"))


def record_cycles_run(manifest: Manifest) -> None:
    """n_cycles: auto, after the study: the cycles each configuration actually ran (finished or
    failed), as `lock.cycles_run` (experiment index -> cycles) in study.lock.yaml, and the
    runs the study added to its locked `run_order` as `lock.runs_added`. Rewritten whole,
    atomically, each time a session of the study ends."""
    from llenergymeasure.backends.atomic import write_bytes_atomic

    path = manifest.layout.study_lock
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    header = "".join(lines[:next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))])
    data = yaml.safe_load(text)
    ran = {e.index: 0 for e in manifest.experiments}
    for run in manifest.runs:
        if run.state in ("done", "failed"):
            ran[run.experiment_index] += 1
    locked = set(data["lock"].get("run_order") or [])
    data["lock"]["cycles_run"] = ran
    data["lock"]["runs_added"] = [r.run_id for r in manifest.in_order() if r.run_id not in locked]
    write_bytes_atomic(path, (header + yaml.safe_dump(data, sort_keys=False)).encode("utf-8"))


def verify_lock(study: Study, plan: list[PlannedRun], runner: str) -> None:
    """A lock file must still resolve to its locked plan and pins; else exit 2 naming what changed."""
    lock = study.lock
    assert lock is not None
    problems = []
    ids = [e.id for e in study.experiments]
    locked_ids = [x["id"] for x in lock.get("experiments", [])]
    if ids != locked_ids:
        problems.append("experiments: the study now expands to other configurations than it locked "
                        f"({len(ids)} vs {len(locked_ids)} experiments, ids differ); this llem version resolves "
                        f"defaults differently: check out the locked commit {lock.get('tool_commit')}")
    if [r.run_id for r in plan] != lock.get("run_order"):
        problems.append("execution: the run order differs from the locked order; keep execution as locked")
    for model, rev in model_pins(study).items():
        if lock.get("models", {}).get(model) != rev:
            problems.append(f"model: {model} is now {rev}, locked {lock.get('models', {}).get(model)}; "
                            "use the locked weights")
    for ds, pin in dataset_pins(study).items():
        if lock.get("datasets", {}).get(ds) != pin:
            problems.append(f"dataset: {ds} is now {pin}, locked {lock.get('datasets', {}).get(ds)}; "
                            "use the locked prompt file")
    if lock.get("runner") == "docker" and runner == "docker":
        for backend, now in image_pins(study).items():
            was = (lock.get("images") or {}).get(backend, {})
            if now["id"] != was.get("id"):
                problems.append(f"image: {backend} is {now['id'] or 'not built'} ({now['tag']}), locked "
                                f"{was.get('id')}; build it from the locked commit")
    if problems:
        raise UserError(f"{study.path}: does not match its lock:\n  " + "\n  ".join(problems))
