"""Where a run's energy goes: prefill against decode (`measurement.phase_split: true`).

Beside the full window the run measures a prefill-only window: the same batches, each
request generating one token (prefill plus its first token), passes repeated until it
lasts measurement.min_window_s, with the same energy meter. Then, per pass over the
dataset (the unit both windows share):

    prefill_energy_per_input_token_j  = E_prefill / input tokens of the prefill window
    decode_energy_per_output_token_j  = (E_full/pass - E_prefill/pass) / decode tokens per pass

where decode tokens per pass = output tokens per full pass - requests per pass (the
first token of each request is the prefill window's). The decode figure is a difference
of two measured quantities, so it is only as good as both: one run gives a point
estimate, and the study summary (orchestrator/analysis/phase_split.py) gives its 95%
interval propagated from both windows across cycles and flags one that spans zero.

Offered for static-batching backends only (the config refuses it elsewhere): a
continuous-batching engine runs one request's prefill in the same step as others'
decode, so no prefill-only window measures the prefill inside a full one.

Token and time figures are always real; energy figures are null with the reason when
the run has no energy (a CPU run without readable RAPL).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from llenergymeasure.backends.config import MeasurementConfig
from llenergymeasure.backends.harness.energy import EnergyMeter, EnergyReading, measured
from llenergymeasure.backends.harness.heartbeat import beat
from llenergymeasure.backends.registry import RequestRecord

PHASE = "prefill_window"  # the sampler's phase tag for the prefill-only window


class PrefillCapable(Protocol):
    def generate_prefill(self, prepared: Any) -> list[RequestRecord]:
        """The workload's batches, each request generating exactly one token."""
        ...

    def synchronize(self) -> None: ...


class PhaseSplit(BaseModel):
    """Both windows of one run, per pass, and the split they give (units in the names)."""

    model_config = ConfigDict(extra="forbid")

    full_passes: int
    full_time_per_pass_s: float
    full_energy_per_pass_j: float | None
    prefill_passes: int
    prefill_duration_s: float
    prefill_time_per_pass_s: float
    prefill_energy_j: float | None
    prefill_energy_per_pass_j: float | None
    input_tokens_per_pass: float
    decode_tokens_per_pass: float  # output tokens per full pass minus the first token of each request
    prefill_time_per_input_token_s: float | None
    decode_time_per_output_token_s: float | None  # (full - prefill time per pass) / decode tokens per pass
    prefill_energy_per_input_token_j: float | None
    decode_energy_per_output_token_j: float | None  # one run's point estimate; the summary gives its interval
    energy_unavailable_reason: str | None  # why the energy figures are null


def _usable(energy: float | None) -> float | None:
    return energy if energy is not None and energy > 0 else None


def _div(a: float | None, b: float) -> float | None:
    return a / b if a is not None and b > 0 else None


def prefill_window(backend: PrefillCapable, prepared: Any, m: MeasurementConfig,
                   meter: EnergyMeter, clock: Callable[[], float] = time.perf_counter,
                   ) -> tuple[list[list[RequestRecord]], EnergyReading]:
    """Prefill-only passes until the window lasts min_window_s (or max_passes), measured."""
    passes: list[list[RequestRecord]] = []
    with measured(meter) as out:
        t0 = clock()
        while True:
            passes.append(backend.generate_prefill(prepared))
            beat(PHASE)
            if clock() - t0 >= m.min_window_s or len(passes) >= m.max_passes:
                break
        backend.synchronize()
    return passes, out[0]


def split(full: list[list[RequestRecord]], full_reading: EnergyReading, prefill: list[list[RequestRecord]],
          prefill_reading: EnergyReading, energy_unavailable_reason: str | None) -> PhaseSplit:
    """The split from both windows' passes and readings (see the module docstring)."""
    nf, np_ = len(full), len(prefill)
    requests = sum(len(p) for p in full) / nf
    out_per_pass = sum(r.output_tokens for p in full for r in p) / nf
    in_prefill = sum(r.input_tokens for p in prefill for r in p)
    decode_tokens = out_per_pass - requests
    ef, ep = _usable(full_reading.energy_j), _usable(prefill_reading.energy_j)
    ef_pass, ep_pass = _div(ef, nf), _div(ep, np_)
    tf_pass, tp_pass = full_reading.duration_s / nf, prefill_reading.duration_s / np_
    reason = energy_unavailable_reason
    if (ef is None or ep is None) and reason is None:
        reason = "a window's energy reading is missing, zero or negative (see the run's warnings)"
    return PhaseSplit(
        full_passes=nf, full_time_per_pass_s=tf_pass, full_energy_per_pass_j=ef_pass,
        prefill_passes=np_, prefill_duration_s=prefill_reading.duration_s, prefill_time_per_pass_s=tp_pass,
        prefill_energy_j=prefill_reading.energy_j, prefill_energy_per_pass_j=ep_pass,
        input_tokens_per_pass=in_prefill / np_, decode_tokens_per_pass=decode_tokens,
        prefill_time_per_input_token_s=_div(prefill_reading.duration_s, in_prefill),
        decode_time_per_output_token_s=_div(tf_pass - tp_pass, decode_tokens),
        prefill_energy_per_input_token_j=_div(ep, in_prefill),
        decode_energy_per_output_token_j=(_div(ef_pass - ep_pass, decode_tokens)
                                          if ef_pass is not None and ep_pass is not None else None),
        energy_unavailable_reason=None if ef is not None and ep is not None else reason,
    )


def measure_phase_split(backend: Any, prepared: Any, m: MeasurementConfig, meter: EnergyMeter,
                        full: list[list[RequestRecord]], full_reading: EnergyReading, sampler: Any) -> PhaseSplit:
    """The one call the protocol makes, right after the full window closed: the prefill-only
    window (tagged `prefill_window` in timeseries.parquet) and the split."""
    if not hasattr(backend, "generate_prefill"):
        raise TypeError(f"{type(backend).__name__} has no prefill-only pass (generate_prefill); "
                        "measurement.phase_split is offered for static-batching backends only")
    sampler.mark(PHASE)
    passes, reading = prefill_window(backend, prepared, m, meter)
    sampler.mark(PHASE)  # closing edge sample
    return split(full, full_reading, passes, reading, meter.unavailable_reason)
