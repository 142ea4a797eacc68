"""Which columns exist only because energy was measured. A publication that
declares `execution.publication.energy_required: false` publishes throughput and
latency only: its tables carry none of these columns."""

from __future__ import annotations

from typing import Any

from llenergymeasure.orchestrator.analysis.costs import CO2, TOTAL_COST


def is_energy_column(name: str) -> bool:
    return ("energy" in name or "power_w" in name or name.startswith((CO2, TOTAL_COST))
            or name.startswith("pareto_"))


def energy_published(manifest_data: dict[str, Any]) -> bool:
    pub = (manifest_data.get("execution") or {}).get("publication")
    return not (isinstance(pub, dict) and pub.get("energy_required") is False)
