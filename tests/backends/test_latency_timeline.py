"""Latencies recovered from known timelines: TTFT, ITL, TPOT and E2E within 1 ms.

First from records of a known schedule (the metric definitions alone), then from the
PyTorch adapter running the real tiny model on a scripted clock: time moves only when
the model runs a forward pass, by a known prefill or decode-step cost, so every token's
true time is known. The adapter's streamer, the harness's arrival stamp (run_pass), the
window's passes, compute_metrics and requests.parquet all read that clock. A real clock
would turn these into timing claims (DESIGN: those live in benchmarks/); what is under
test is what the code does with the times it reads.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig, MeasurementConfig
from llenergymeasure.backends.harness import protocol
from llenergymeasure.backends.harness.energy import EnergyReading
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.harness.result import REQUEST_COLUMNS, write_requests
from llenergymeasure.backends.pytorch import backend as pytorch_backend
from llenergymeasure.backends.registry import RequestRecord
from tests.support.helpers import latency_percentiles

PREFILL_S, STEP_S = 0.050, 0.010  # the scripted cost of a prefill and of a decode step
N_TOKENS, BATCH, N_PROMPTS = 5, 4, 6  # two static batches per pass: 4 requests, then 2
BATCH_S = PREFILL_S + (N_TOKENS - 1) * STEP_S  # one static batch, start to last token
TOLERANCE_MS = 1.0


def known_token_times(n_prompts: int = N_PROMPTS) -> list[list[float]]:
    """Each request's token times after its pass's arrival: static batches one after
    another, each a prefill (first token) then a decode step per further token."""
    return [[(i // BATCH) * BATCH_S + PREFILL_S + k * STEP_S for k in range(N_TOKENS)] for i in range(n_prompts)]


def known_latencies_ms(n_prompts: int = N_PROMPTS) -> dict[str, list[float]]:
    """The true per-request latencies of the schedule, from its parameters alone."""
    batch = [i // BATCH for i in range(n_prompts)]
    return {
        "ttft_ms": [1000 * (b * BATCH_S + PREFILL_S) for b in batch],  # a later batch waits for earlier ones
        "e2e_ms": [1000 * (b + 1) * BATCH_S for b in batch],
        "tpot_ms": [1000 * STEP_S] * n_prompts,
        "itl_ms": [1000 * STEP_S] * (n_prompts * (N_TOKENS - 1)),
    }


def assert_metrics_recover(m, n_passes: int = 1) -> None:
    for name, values in known_latencies_ms().items():
        for p in (50, 90, 99):
            want = float(np.percentile(values * n_passes, p))
            assert getattr(m, f"{name}_p{p}") == pytest.approx(want, abs=TOLERANCE_MS), f"{name}_p{p}"


def metrics(records: list[RequestRecord]):
    return compute_metrics(records, EnergyReading(duration_s=1.0), model_load_s=0, peak_memory_mb=None,
                           n_parameters=1, baseline_power_w=None)


def test_metrics_recover_a_known_static_batch_timeline():
    arrival = 1234.5  # any perf_counter origin
    records = [RequestRecord(input_tokens=8, submitted_s=arrival + (i // BATCH) * BATCH_S,
                             token_times_s=[arrival + t for t in times], arrival_s=arrival)
               for i, times in enumerate(known_token_times())]
    m = metrics(records)
    assert_metrics_recover(m)
    # counted from submission, the second batch's TTFT would be one prefill, like the first's
    assert m.ttft_ms_p99 > 1000 * (BATCH_S + PREFILL_S) - TOLERANCE_MS


class ScriptedClock:
    """`time.perf_counter` for the code under test; advanced by the model's forward passes."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def perf_counter(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """The real PyTorch adapter with the tiny model on the CPU, loaded once."""
    cfg = ExperimentConfig(model="llem/tiny-llama", n_prompts=N_PROMPTS, max_input_tokens=16,
                           max_output_tokens=N_TOKENS, device="cpu", pytorch={"batch_size": BATCH})
    backend = pytorch_backend.PyTorchBackend(cfg)
    backend.load()
    prepared = backend.prepare([f"prompt number {i} about measuring energy" for i in range(N_PROMPTS)])
    return backend, prepared


@pytest.fixture
def clock(loaded, monkeypatch) -> ScriptedClock:
    """Every forward pass costs PREFILL_S (the prompt) or STEP_S (one new token)."""
    backend, _ = loaded
    clock = ScriptedClock()
    forward = backend.model.forward

    def timed_forward(*args, **kwargs):
        clock.t += PREFILL_S if kwargs["input_ids"].shape[-1] > 1 else STEP_S
        return forward(*args, **kwargs)

    monkeypatch.setattr(backend.model, "forward", timed_forward)
    fake_time = SimpleNamespace(perf_counter=clock.perf_counter)
    monkeypatch.setattr(pytorch_backend, "time", fake_time)
    monkeypatch.setattr(protocol, "time", fake_time)
    return clock


def test_pytorch_static_batches_recover_the_known_timeline(loaded, clock):
    backend, prepared = loaded
    start = clock.t
    one = protocol.run_pass(backend, prepared)
    assert one.arrival_s == start and all(r.arrival_s == start for r in one.records)
    for r, want in zip(one.records, known_token_times(), strict=True):
        assert r.output_tokens == N_TOKENS
        assert [t - start for t in r.token_times_s] == pytest.approx(want, abs=TOLERANCE_MS / 1000)
    # submission stays the adapter's diagnostic: the second batch went in when the first ended
    assert [r.submitted_s - start for r in one.records] == pytest.approx([0.0] * BATCH + [BATCH_S] * 2)
    m = metrics(one.records)
    assert_metrics_recover(m)
    # the point of counting from arrival: the second batch's TTFT includes the first batch
    second = one.records[BATCH]
    assert (second.token_times_s[0] - second.arrival_s) == pytest.approx(BATCH_S + PREFILL_S,
                                                                         abs=TOLERANCE_MS / 1000)


def test_window_requests_parquet_recovers_the_known_timeline(loaded, clock, tmp_path):
    backend, prepared = loaded
    pass_s = 2 * BATCH_S
    passes = protocol._window(backend, prepared, MeasurementConfig(min_window_s=1.5 * pass_s))
    assert len(passes) == 2  # the first pass alone was shorter than min_window_s
    records = [r for p in passes for r in p.records]
    m = metrics(records)
    assert_metrics_recover(m, n_passes=2)  # each pass's requests arrive at its own start

    path = tmp_path / contract.REQUESTS_FILE
    write_requests(path, [p.records for p in passes], passes[0].arrival_s)
    df = pd.read_parquet(path)
    assert list(df.columns) == [name for name, _ in REQUEST_COLUMNS]
    assert df["pass_index"].tolist() == [0] * N_PROMPTS + [1] * N_PROMPTS
    assert df["request_index"].tolist() == list(range(N_PROMPTS)) * 2
    assert df["arrival_s"].tolist() == pytest.approx([0.0] * N_PROMPTS + [pass_s] * N_PROMPTS)
    ttft = (df["first_token_s"] - df["arrival_s"]) * 1000
    assert ttft.tolist() == pytest.approx(known_latencies_ms()["ttft_ms"] * 2, abs=TOLERANCE_MS)
    assert (df["output_tokens"] == N_TOKENS).all() and df["input_tokens"].sum() == m.input_tokens
    # and a reader recovers the result's percentiles from the file alone
    for name, value in latency_percentiles(df).items():
        assert getattr(m, name) == pytest.approx(value, abs=1e-6), name
