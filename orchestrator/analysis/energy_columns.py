"""Which columns exist only because energy was measured. A publication that
declares `execution.publication.energy_required: false` publishes throughput and
latency only: its tables carry none of these columns."""

from __future__ import annotations

from llenergymeasure.orchestrator.analysis.costs import CO2, TOTAL_COST
from llenergymeasure.orchestrator.execution.manifest import Manifest


def is_energy_column(name: str) -> bool:
    return ("energy" in name or "joule" in name or "power_w" in name or name.startswith((CO2, TOTAL_COST))
            or name.startswith("pareto_"))


def energy_published(manifest: Manifest) -> bool:
    pub = manifest.execution.get("publication")
    return not (isinstance(pub, dict) and pub.get("energy_required") is False)
