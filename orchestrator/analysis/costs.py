"""The cost and carbon view: per-run columns derived from measured energy and
throughput and the prices the user gave. Each is computed per run and then
summarised across cycles like any other metric.

Per million output tokens:
  energy_kwh            = energy_per_output_token_j * 1e6 / 3.6e6   (the devices' energy, as measured)
  facility_energy_kwh   = energy_kwh * pue                          (only when pue is set)
  energy_cost           = energy_kwh * (pue, else 1) * electricity_price_per_kwh
  gpu_time_cost         = gpu_hour_price * n_gpus * 1e6 / output_tokens_per_s / 3600
  cost                  = energy_cost + gpu_time_cost               (only when both prices are set)
  co2_g                 = energy_kwh * (pue, else 1) * grid_carbon_intensity_g_per_kwh
A column exists only when what it needs was set; a run without measured energy
(or without a GPU, for GPU time) has a null there, never an estimate.
"""

from __future__ import annotations

import pandas as pd

from llenergymeasure.orchestrator.study.analysis_section import Costs

J_PER_KWH = 3.6e6
PER = 1e6  # tokens

ENERGY_KWH = "energy_kwh_per_million_output_tokens"
FACILITY_KWH = "facility_energy_kwh_per_million_output_tokens"
ENERGY_COST = "energy_cost_per_million_output_tokens"
GPU_TIME_COST = "gpu_time_cost_per_million_output_tokens"
TOTAL_COST = "cost_per_million_output_tokens"
CO2 = "co2_g_per_million_output_tokens"


def add_cost_columns(runs: pd.DataFrame, costs: Costs) -> list[str]:
    """Add the cost/carbon columns `costs` allows to `runs` in place; return their names."""
    if not costs.any_set:
        return []
    e_tok = pd.to_numeric(runs["energy_per_output_token_j"], errors="coerce")
    kwh = e_tok * PER / J_PER_KWH
    pue = costs.pue if costs.pue is not None else 1.0
    added = [ENERGY_KWH]
    runs[ENERGY_KWH] = kwh
    if costs.pue is not None:
        runs[FACILITY_KWH] = kwh * pue
        added.append(FACILITY_KWH)
    if costs.electricity_price_per_kwh is not None:
        runs[ENERGY_COST] = kwh * pue * costs.electricity_price_per_kwh
        added.append(ENERGY_COST)
    if costs.gpu_hour_price is not None:
        tps = pd.to_numeric(runs["output_tokens_per_s"], errors="coerce")
        n_gpus = (pd.to_numeric(runs["n_gpus"], errors="coerce") if "n_gpus" in runs
                  else pd.Series(float("nan"), index=runs.index))
        hours_per_mtok = PER / tps / 3600
        runs[GPU_TIME_COST] = (costs.gpu_hour_price * n_gpus * hours_per_mtok).where(n_gpus > 0)
        added.append(GPU_TIME_COST)
    if costs.electricity_price_per_kwh is not None and costs.gpu_hour_price is not None:
        runs[TOTAL_COST] = runs[ENERGY_COST] + runs[GPU_TIME_COST]
        added.append(TOTAL_COST)
    if costs.grid_carbon_intensity_g_per_kwh is not None:
        runs[CO2] = kwh * pue * costs.grid_carbon_intensity_g_per_kwh
        added.append(CO2)
    return added
