"""The arrival schedule of a serving load: when each request arrives and which prompt it
carries, drawn from the experiment's seed before anything runs.

Inter-arrival times are gamma-distributed with shape `burstiness` and mean 1/request_rate
(shape 1: exponential, a Poisson process; below 1 burstier, above 1 more even), as vLLM's
serving benchmark draws them. The first request arrives at 0 (the load's start, which is
the measured window's start); `inf` puts every arrival at 0. Load request i carries prompt
i mod n_prompts; warm-up request j carries prompt n_prompts - 1 - j (mod n_prompts), from
the other end, so warm-up shares no prompt with the load when the dataset has room for both.

The schedule depends on nothing but the seed and these settings: the same on every
backend and in every cycle. It is saved with the run (schedule.json) with its digest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.serving.config import INF, ServingConfig

SCHEDULE_FILE = "schedule.json"
# a stream of its own: the seed's other uses (synthetic prompts, engine seeds) never
# shift the arrivals, nor the arrivals them
_STREAM = 0x5E7A1
_DRAW = 4096  # gaps drawn at a time for a duration-bounded load


class Schedule(BaseModel):
    """schedule.json: the arrivals of one run's load, and what they were drawn from."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    request_rate: float | str  # requests/s, or "inf"
    burstiness: float
    n_prompts: int
    arrivals_s: list[float]  # seconds from the load's start, non-decreasing
    prompt_indices: list[int]  # load request i carries prompt prompt_indices[i]
    warmup_prompt_indices: list[int]
    sha256: str  # of the arrivals and prompt indices: equal digests, equal schedules

    @property
    def n_requests(self) -> int:
        return len(self.arrivals_s)


def _gaps(rng: np.random.Generator, rate: float, shape: float, n: int) -> np.ndarray:
    return rng.gamma(shape=shape, scale=1.0 / (rate * shape), size=n)


def arrival_times(serving: ServingConfig, seed: int) -> list[float]:
    """Arrival times in seconds from the load's start (see the module docstring)."""
    if serving.request_rate == INF:
        return [0.0] * int(serving.n_requests or 0)
    rate = float(serving.request_rate)
    rng = np.random.default_rng([seed, _STREAM])
    if serving.n_requests is not None:
        gaps = _gaps(rng, rate, serving.burstiness, serving.n_requests - 1)
        return [0.0, *np.cumsum(gaps).tolist()]
    times, t = [0.0], 0.0
    duration = float(serving.duration_s or 0.0)
    while True:
        for gap in _gaps(rng, rate, serving.burstiness, _DRAW).tolist():
            t += gap
            if t >= duration:
                return times
            times.append(t)


def _digest(arrivals: list[float], prompts: list[int], warmup: list[int]) -> str:
    text = json.dumps([arrivals, prompts, warmup], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def build_schedule(serving: ServingConfig, seed: int, n_prompts: int) -> Schedule:
    arrivals = arrival_times(serving, seed)
    prompts = [i % n_prompts for i in range(len(arrivals))]
    warmup = [(n_prompts - 1 - j) % n_prompts for j in range(serving.warmup_requests)]
    return Schedule(seed=seed, request_rate=serving.request_rate, burstiness=serving.burstiness,
                    n_prompts=n_prompts, arrivals_s=arrivals, prompt_indices=prompts,
                    warmup_prompt_indices=warmup, sha256=_digest(arrivals, prompts, warmup))


def write_schedule(schedule: Schedule, run_dir: Path) -> Path:
    path = run_dir / SCHEDULE_FILE
    write_json_atomic(path, schedule.model_dump(mode="json"))
    return path
