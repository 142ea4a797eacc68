"""The `serving:` section of an experiment (scenario: serving): the load offered to the
backend's own OpenAI-compatible server.

The arrival rate accepts `inf` (every request at once), written `inf` or `.inf` in YAML.
A config model refuses non-finite floats (limits.STRICT), so `inf` is kept as the string
"inf": the value hashes, prints and sweeps (`serving.request_rate: [1, 2, inf]`) as written.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from llenergymeasure.backends.limits import MAX_COUNT, MAX_SECONDS, STRICT

MAX_RATE = 1_000_000.0  # requests per second: far above what one server answers
MAX_BURSTINESS = 1000.0  # gamma shape; above ~100 the arrivals are already almost evenly spaced
MAX_MS = MAX_SECONDS * 1000.0
INF = "inf"
RATE_HELP = (f"must be a number of requests per second greater than 0 and at most {MAX_RATE:g}, "
             "or inf (every request at once)")


class SloConfig(BaseModel):
    """Per-request latency targets; a request meets the SLO when it meets every one set.
    Units and definitions are the metrics' own (harness/metrics.py): TTFT and E2E count from
    the request's scheduled arrival, TPOT is its mean decode step, ITL its largest gap
    between consecutive output tokens."""

    model_config = STRICT

    ttft_ms: float | None = Field(None, gt=0, le=MAX_MS)
    tpot_ms: float | None = Field(None, gt=0, le=MAX_MS)
    itl_ms: float | None = Field(None, gt=0, le=MAX_MS)
    e2e_ms: float | None = Field(None, gt=0, le=MAX_MS)

    def targets(self) -> dict[str, float]:
        """The targets set, by metric name (ttft_ms ...)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ServingConfig(BaseModel):
    """The load: seeded arrivals at request_rate (gamma inter-arrival times of shape
    burstiness, mean 1/request_rate), at most max_concurrency requests in flight, for
    n_requests requests or the arrivals of duration_s seconds (exactly one of them)."""

    model_config = STRICT

    request_rate: Annotated[float, Field(gt=0, le=MAX_RATE)] | Literal["inf"] = Field(
        description="Requests per second offered, or inf: every request arrives at once.")
    burstiness: float = Field(1.0, gt=0, le=MAX_BURSTINESS,
                              description="Gamma shape of inter-arrival times: 1 = Poisson, <1 burstier, >1 more even.")
    max_concurrency: int | None = Field(None, ge=1, le=MAX_COUNT,
                                        description="Requests in flight at most (the client waits for a slot); None = no cap.")
    n_requests: int | None = Field(None, ge=1, le=MAX_COUNT, description="Requests in the measured load.")
    duration_s: float | None = Field(None, gt=0, le=MAX_SECONDS, validate_default=True,
                                     description="Or: the load is the arrivals of this many seconds.")
    warmup_requests: int = Field(4, ge=0, le=MAX_COUNT,
                                 description="Sent before the load, at most max_concurrency at once; in no figure.")
    slo: SloConfig | None = Field(None, description="Latency targets for goodput (requests/s meeting every one).")
    server_start_timeout_s: float = Field(600.0, gt=0, le=MAX_SECONDS,
                                          description="The server must answer /v1/models within this; else the run fails.")
    request_timeout_s: float = Field(600.0, gt=0, le=MAX_SECONDS,
                                     description="A request that has not finished streaming by then fails the run.")

    @field_validator("request_rate", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> Any:
        """One message for every wrong rate (a union's own errors name each member instead)."""
        if isinstance(v, str) and v.strip().lower() in ("inf", ".inf", "infinity"):
            return INF
        if isinstance(v, float) and math.isinf(v) and v > 0:
            return INF  # YAML's .inf
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= MAX_RATE:
            return float(v)
        raise ValueError(RATE_HELP)

    @field_validator("slo")
    @classmethod
    def _some_target(cls, v: SloConfig | None) -> SloConfig | None:
        if v is not None and not v.targets():
            raise ValueError("sets no target; give at least one of ttft_ms, tpot_ms, itl_ms, e2e_ms, or remove it")
        return v

    @field_validator("duration_s")
    @classmethod
    def _one_length(cls, v: float | None, info: ValidationInfo) -> float | None:
        """Checked on duration_s (validated even when unset), so the message names a key.
        request_rate and n_requests come before it, so their values are known here."""
        if "n_requests" not in info.data or "request_rate" not in info.data:
            return v  # reported under its own key already
        if (info.data["n_requests"] is None) == (v is None):
            raise ValueError("set exactly one of serving.n_requests (requests in the load) and serving.duration_s "
                             "(seconds of arrivals)")
        rate = info.data["request_rate"]
        if v is not None and rate == INF:
            raise ValueError("needs a finite serving.request_rate (inf sends every request at once, so no "
                             "duration bounds them); use serving.n_requests with request_rate: inf")
        if v is not None and v * float(rate) > MAX_COUNT:
            raise ValueError(f"{v:g} s at {rate:g} requests/s is about {v * float(rate):,.0f} requests, more "
                             f"than {MAX_COUNT:,}; shorten it")
        return v

    @property
    def all_at_once(self) -> bool:
        return self.request_rate == INF
