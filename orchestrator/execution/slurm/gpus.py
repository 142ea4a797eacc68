"""Which GPUs a Slurm task was allocated, as NVML UUIDs.

Slurm hands a task GPU *indices* (SLURM_JOB_GPUS: the node's physical indices;
CUDA_VISIBLE_DEVICES: indices as the task sees them, which cgroup device limits
renumber). Indices are ambiguous between those views, UUIDs are not: the task
resolves them once, pins CUDA to the UUIDs, and the harness then measures
exactly those devices (it maps CUDA devices to NVML by UUID).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class GpuInventory(Protocol):
    def gpus(self) -> list[tuple[int, str]]:
        """(NVML index, UUID) of every GPU NVML shows on this node."""
        ...


class NvmlInventory:
    def gpus(self) -> list[tuple[int, str]]:
        from llenergymeasure.backends.harness.gpu import nvml_inventory

        return [(i, uuid) for i, uuid, _ in nvml_inventory()]


def allocated_uuids(env: Mapping[str, str], inventory: GpuInventory) -> list[str]:
    """The UUIDs of the task's GPUs; [] when it has none (or no NVML to name them)."""
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and all(v.startswith(("GPU-", "MIG-")) for v in visible):
        return visible
    physical = [int(v) for v in env.get("SLURM_JOB_GPUS", env.get("SLURM_STEP_GPUS", "")).split(",") if v.strip().isdigit()]
    if not physical and not visible:
        return []
    gpus = inventory.gpus()
    if not gpus:
        return []
    n_alloc = len(physical or visible)
    if len(gpus) == n_alloc:  # cgroup-constrained: NVML sees the allocation only
        return [uuid for _, uuid in gpus]
    by_index = dict(gpus)
    wanted = physical or [int(v) for v in visible if v.isdigit()]
    return [by_index[i] for i in wanted if i in by_index]
