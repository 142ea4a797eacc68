"""What a serving run records beside its metrics (result.json `serving`): the server, the
load and how its figures were obtained."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ServingReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: str  # which server (ServerSpec.name)
    server_command: list[str]  # the argv it was started with
    server_log: str  # its stdout and stderr, in the run directory
    server_ready_s: float  # start until /v1/models answered (= metrics.model_load_s)
    exact_length: str  # how every request was made to generate max_output_tokens (ignore_eos)
    schedule_file: str
    schedule_sha256: str  # equal digests: the same arrivals and prompts (schedule.py)
    n_requests: int  # in the load (warm-up excluded from every figure)
    warmup_requests: int
    max_concurrency: int | None
    requests_waited_for_slot: int  # sent later than scheduled because max_concurrency was reached
    # tokens per chunk, by method (client.py), and the tokens no chunk carried (stamped at
    # the stream's last chunk: ITL approximate where > 0)
    token_counting: dict[str, int]
    tokens_without_chunk: int
    slo: dict[str, float] | None  # the targets goodput counts against
    saturation: str  # the assessment, with its figures (serving/metrics.py)
    cache_reset: str | None  # the prefix-cache reset after warm-up, or None where the server has none
    notes: list[str] = []
