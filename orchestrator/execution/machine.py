"""`llem config`: what this machine offers, and why something is missing."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

from llenergymeasure.backends import __version__
from llenergymeasure.backends.paths import cache_dir, data_dir
from llenergymeasure.backends.prompts import BUILTIN_DATASETS, installed_path
from llenergymeasure.backends.table import TABLE, BackendRow
from llenergymeasure.orchestrator.execution.environments import environment_for


@dataclass
class Check:
    area: str
    item: str
    ok: bool
    detail: str


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> list[Check]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001
        return [Check("gpu", "NVIDIA GPUs", False, f"NVML unavailable: {e}")]
    out = []
    driver = pynvml.nvmlSystemGetDriverVersion()
    n = pynvml.nvmlDeviceGetCount()
    if n == 0:
        out.append(Check("gpu", "NVIDIA GPUs", False, f"driver {driver}, no GPU"))
    for i in range(n):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        name = pynvml.nvmlDeviceGetName(h)
        out.append(Check("gpu", f"GPU {i}", True, f"{name} (driver {driver})"))
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            out.append(Check("energy", f"NVML energy counter, GPU {i}", True, "total-energy counter readable"))
        except pynvml.NVMLError as e:
            out.append(Check("energy", f"NVML energy counter, GPU {i}", False, str(e)))
    return out


def _rapl() -> Check:
    from llenergymeasure.backends.harness.energy import select_cpu_meter

    meter = select_cpu_meter()
    if meter.source:
        return Check("energy", "CPU RAPL", True, "package/DRAM energy counters readable")
    return Check("energy", "CPU RAPL", False, str(meter.unavailable_reason))


def _docker() -> Check:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        v = client.version().get("Version", "?")
        return Check("runtime", "Docker engine", True, f"reachable, version {v}")
    except ImportError:
        return Check("runtime", "Docker engine", False, "docker SDK not installed")
    except Exception as e:  # noqa: BLE001 - any failure means unreachable
        return Check("runtime", "Docker engine", False, f"not reachable ({type(e).__name__})")


def _backend(row: BackendRow) -> Check:
    """Whether the backend's engine imports where the local runner would run it."""
    env = environment_for(row.name)
    if env.own:
        ok, detail = env.probe()
        return Check("backend", row.name, ok, detail)
    pkg = row.engine_package
    v = _version(pkg) if importlib.util.find_spec(pkg) else None
    return Check("backend", row.name, bool(v), f"{pkg} {v} ({sys.executable})" if v else f"{pkg} not installed")


def collect() -> list[Check]:
    checks = [
        Check("llem", "version", True, f"{__version__} (Python {sys.version.split()[0]}, {platform.platform()})"),
    ]
    checks += _gpus()
    try:
        import torch

        cuda = torch.cuda.is_available()
        checks.append(
            Check("gpu", "CUDA (torch)", cuda, f"torch {torch.__version__}, "
                  + (f"{torch.cuda.device_count()} device(s)" if cuda else "no CUDA device; runs use the CPU"))
        )
    except ImportError:
        checks.append(Check("gpu", "CUDA (torch)", False, "torch not installed"))
    checks.append(_rapl())
    zeus = _version("zeus")
    checks.append(Check("energy", "Zeus", zeus is not None,
                        f"zeus {zeus} installed (select with measurement.energy_source: zeus)"
                        if zeus else "not installed (optional: measurement.energy_source: zeus)"))
    checks.append(_docker())
    checks += [_backend(row) for row in TABLE]
    checks.append(Check("paths", "results", True, os.path.abspath("results")))
    checks.append(Check("paths", "cache (built-in models)", True, str(cache_dir())))
    checks.append(Check("paths", "datasets", True, str(data_dir())))
    for name in BUILTIN_DATASETS:
        if name == "synthetic":
            checks.append(Check("dataset", name, True, "generated, always available"))
            continue
        p = installed_path(name)
        checks.append(Check("dataset", name, p.exists(),
                            str(p) if p.exists() else f"not installed: llem datasets fetch {name}"))
    return checks


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
