"""The serving scenario's parts on their own: settings, the seeded schedule, the client's
reading of recorded streams, the metrics against hand-computed values, and the client
against a stub server (tests/support/stub_openai.py) for saturation."""

from __future__ import annotations

import json
from typing import Annotated, get_args, get_origin

import pytest
from annotated_types import Le, Lt

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.metrics import e2e_s, itl_s, tpot_s, ttft_s
from llenergymeasure.backends.registry import RequestRecord
from llenergymeasure.backends.serving.client import (
    EventStream, Outcome, PlannedRequest, Target, apply_event, completion_body, run_load, LoadFailed,
)
from llenergymeasure.backends.serving.config import ServingConfig, SloConfig
from llenergymeasure.backends.serving.metrics import mann_kendall, meets_slo, saturation, serving_fields
from llenergymeasure.backends.serving.schedule import build_schedule
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.load import load_study
from tests.support.helpers import llem, write
from tests.support.stub_openai import StubServer

BASE = ("model: llem/tiny-llama\nn_prompts: 4\nmax_input_tokens: 16\nmax_output_tokens: 4\ndevice: cpu\n"
        "scenario: serving\n")


def serving(**kw) -> ServingConfig:
    return ServingConfig.model_validate({"request_rate": 2, "n_requests": 10, **kw})


# -- settings ----------------------------------------------------------------------------

@pytest.mark.parametrize("model", [ServingConfig, SloConfig])
def test_serving_settings_are_strict_and_bounded(model):
    assert model.model_config.get("strict") is True and model.model_config.get("extra") == "forbid"
    assert model.model_config.get("allow_inf_nan") is False
    for name, f in model.model_fields.items():
        args = get_args(f.annotation) or (f.annotation,)
        if int in args or float in args:
            assert any(isinstance(m, (Le, Lt)) for m in f.metadata), name
        for arg in args:
            if get_origin(arg) is Annotated and get_args(arg)[0] in (int, float):
                assert any(isinstance(m, (Le, Lt)) for x in get_args(arg)[1:] for m in x.metadata), name


@pytest.mark.parametrize("body, expected", [
    ("serving: {request_rate: -1, n_requests: 4}\n",
     "serving.request_rate: must be a number of requests per second greater than 0"),
    ("serving: {request_rate: 0, n_requests: 4}\n", "serving.request_rate: must be a number"),
    ("serving: {request_rate: fast, n_requests: 4}\n", "or inf (every request at once) (got 'fast')"),
    ("serving: {request_rate: 2, n_requests: 4, max_concurrency: 0}\n",
     "serving.max_concurrency: must be an integer from 1 to 1000000"),
    ("serving: {request_rate: 2, n_requests: 4, slo: {ttft: 100}}\n",
     "serving.slo.ttft: unknown key (did you mean 'ttft_ms'?)"),
    ("serving: {request_rate: 2, n_requests: 4, slo: {throughput_ms: 100}}\n", "serving.slo.throughput_ms: unknown key"),
    ("serving: {request_rate: 2, n_requests: 4, slo: {ttft_ms: -5}}\n", "serving.slo.ttft_ms: must be a number"),
    ("serving: {request_rate: 2}\n", "serving.duration_s: set exactly one of serving.n_requests"),
    ("serving: {request_rate: 2, n_requests: 4, duration_s: 3}\n", "set exactly one of serving.n_requests"),
    ("serving: {request_rate: inf, duration_s: 3}\n", "serving.duration_s: needs a finite serving.request_rate"),
    ("serving: {request_rate: 2, n_requests: 4, burstiness: 0}\n", "serving.burstiness: must be a number"),
    ("serving: {request_rate: 2, n_requests: 4, rate: 3}\n", "serving.rate: unknown key"),
    ("", "scenario: serving needs a serving: section"),
    ("pytorch: {batch_size: 4}\nserving: {request_rate: 2, n_requests: 4}\n",
     "pytorch.batch_size: transformers serve batches continuously"),
])
def test_bad_serving_settings_are_refused_naming_the_key(tmp_path, body, expected):
    with pytest.raises(UserError) as e:
        load_study(write(tmp_path / "s.yaml", BASE + body))
    assert expected in str(e.value)


def test_a_serving_section_without_the_scenario_is_refused(tmp_path):
    text = BASE.replace("scenario: serving\n", "") + "serving: {request_rate: 2, n_requests: 4}\n"
    with pytest.raises(UserError) as e:
        load_study(write(tmp_path / "s.yaml", text))
    assert "serving: is set but scenario is offline" in str(e.value)


def test_bad_settings_exit_2_on_the_command_line(tmp_path):
    f = write(tmp_path / "s.yaml", BASE + "serving: {request_rate: 2, n_requests: 4, max_concurrency: 0}\n")
    r = llem("run", str(f), "--runner", "local", "-o", str(tmp_path / "out"), "--dry-run")
    assert r.returncode == 2 and "serving.max_concurrency" in r.stderr and "Traceback" not in r.stderr


def test_request_rate_sweeps_with_inf(tmp_path):
    s = load_study(write(tmp_path / "s.yaml", BASE + "serving: {n_requests: 4}\n"
                                                     "sweep: {serving.request_rate: [1, 2.5, inf, .inf]}\n"))
    rates = [e.config.serving.request_rate for e in s.experiments]
    assert rates[:3] == [1.0, 2.5, "inf"]
    assert len({e.config.config_hash() for e in s.experiments}) == 3  # inf and .inf: one configuration


def test_a_grouped_sweep_under_serving_sets_dependent_load_settings(tmp_path):
    """`serving` is a section name in sweep groups, like a backend's: rate and cap move together."""
    s = load_study(write(tmp_path / "s.yaml", BASE + "serving: {n_requests: 4}\n"
                         "sweep: {serving: [{request_rate: 1, max_concurrency: 1}, {request_rate: inf, max_concurrency: 4}]}\n"))
    assert [(e.config.serving.request_rate, e.config.serving.max_concurrency) for e in s.experiments] == [
        (1.0, 1), ("inf", 4)]


def test_offline_configs_keep_their_hash():
    """scenario is left out of the canonical JSON at its default."""
    c = ExperimentConfig(model="llem/tiny-llama")
    assert "scenario" not in json.loads(c.canonical_json())
    assert c.scenario == "offline"


# -- the schedule ------------------------------------------------------------------------

def test_the_seeded_schedule_is_identical_across_two_runs_and_changes_with_the_seed():
    s = serving(request_rate=4, n_requests=200, burstiness=0.5)
    a, b = build_schedule(s, 7, 16), build_schedule(s, 7, 16)
    assert a == b and a.sha256 == b.sha256
    assert build_schedule(s, 8, 16).arrivals_s != a.arrivals_s
    assert a.arrivals_s[0] == 0.0 and a.arrivals_s == sorted(a.arrivals_s)
    gaps = [y - x for x, y in zip(a.arrivals_s, a.arrivals_s[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(0.25, rel=0.25)  # mean 1/rate
    assert a.prompt_indices[:18] == [*range(16), 0, 1]
    assert a.warmup_prompt_indices == [15, 14, 13, 12]


def test_burstiness_shapes_the_gaps_and_inf_sends_all_at_once():
    def cv(shape: float) -> float:
        t = build_schedule(serving(request_rate=10, n_requests=2000, burstiness=shape), 1, 4).arrivals_s
        gaps = [y - x for x, y in zip(t, t[1:])]
        mean = sum(gaps) / len(gaps)
        return (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean

    assert cv(0.25) > 1.5 > cv(1.0) > 0.8 > 0.3 > cv(16.0)  # gamma: CV = 1/sqrt(shape)
    assert build_schedule(serving(request_rate="inf", n_requests=5), 1, 4).arrivals_s == [0.0] * 5


def test_a_duration_bounded_load_takes_the_arrivals_of_that_duration():
    t = build_schedule(ServingConfig(request_rate=50, duration_s=4), 3, 8).arrivals_s
    assert max(t) < 4 and 150 < len(t) < 250


# -- recorded streams: how the client counts tokens --------------------------------------

def _read(events: list[tuple[float, bytes]]) -> Outcome:
    """Feed a recorded stream, piece by piece with its read time, as stream_request does."""
    o, parser = Outcome(0, 10.0, 5), EventStream()
    o.sent_s = 10.001
    for t, piece in events:
        for payload in parser.feed(piece):
            apply_event(o, payload, t)
    return o


def sse(obj) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def test_a_vllm_stream_with_token_ids_gives_exact_token_times():
    usage = {"prompt_tokens": 7, "completion_tokens": 0}
    o = _read([
        (10.2, sse({"choices": [{"text": "a", "token_ids": [5]}], "usage": {**usage, "completion_tokens": 1}})),
        # two events in one read share its stamp; the second chunk carries two tokens
        (10.3, sse({"choices": [{"text": "b", "token_ids": [6]}], "usage": {**usage, "completion_tokens": 2}})
         + sse({"choices": [{"text": "cd", "token_ids": [7, 8], "finish_reason": "length"}],
                "usage": {**usage, "completion_tokens": 4}})[:20]),
        (10.5, sse({"choices": [{"text": "cd", "token_ids": [7, 8], "finish_reason": "length"}],
                    "usage": {**usage, "completion_tokens": 4}})[20:] + sse({"choices": [], "usage": {**usage, "completion_tokens": 4}})
         + sse("[DONE]")),
    ])
    record, method, surplus = o.to_record()
    assert method == "token_ids" and surplus == 0
    assert record.token_times_s == [10.2, 10.3, 10.5, 10.5] and record.token_ids == [5, 6, 7, 8]
    assert record.arrival_s == 10.0 and record.submitted_s == 10.001 and record.input_tokens == 7


def test_a_text_stream_is_counted_from_the_final_usage():
    """transformers serve: text events, the total in the last one; a token with no text
    event of its own (held back UTF-8) is stamped at the stream's last event."""
    o = _read([(10.1, sse({"choices": [{"text": "a"}]})), (10.2, sse({"choices": [{"text": "b"}]})),
               (10.4, sse({"choices": [{"text": "c"}]})),
               (10.41, sse({"choices": [{"text": "", "finish_reason": "length"}],
                            "usage": {"prompt_tokens": 4, "completion_tokens": 4}}))])
    record, method, surplus = o.to_record()
    assert method == "text_events+usage_total" and surplus == 1
    assert record.token_times_s == [10.1, 10.2, 10.4, 10.41] and record.token_ids == []
    assert o.finish_reason == "length"


def test_a_text_stream_whose_text_was_all_held_back_is_stamped_at_its_end():
    """A random-weight model can generate only special tokens and partial UTF-8: no text
    event at all, only the final total. Its tokens are stamped at the stream's end, and
    counted as having no chunk of their own, never passed off as a running usage."""
    o = _read([(10.5, sse({"choices": [{"text": "", "finish_reason": "length"}],
                           "usage": {"prompt_tokens": 4, "completion_tokens": 3}}))])
    record, method, surplus = o.to_record()
    assert method == "text_events+usage_total" and surplus == 3 and record.token_times_s == [10.5] * 3


def test_a_running_usage_without_ids_counts_each_chunks_growth():
    o = _read([(10.1, sse({"choices": [{"text": "ab"}], "usage": {"completion_tokens": 2}})),
               (10.3, sse({"choices": [{"text": "c", "finish_reason": "length"}], "usage": {"completion_tokens": 3}}))])
    record, method, surplus = o.to_record()
    assert method == "usage_per_chunk" and surplus == 0 and record.token_times_s == [10.1, 10.1, 10.3]


def test_an_error_event_is_an_error():
    o = _read([(10.1, sse({"error": {"message": "out of memory"}}))])
    assert o.error == "server error event: out of memory"


# -- metrics against hand-computed values ---------------------------------------------------

def rec(arrival: float, times: list[float], sent: float | None = None) -> RequestRecord:
    return RequestRecord(input_tokens=3, submitted_s=sent if sent is not None else arrival, token_times_s=times,
                         arrival_s=arrival)


def test_latencies_count_from_the_scheduled_arrival():
    r = rec(1.0, [1.1, 1.15, 1.2, 1.3], sent=1.05)  # waited 50 ms for a slot
    assert ttft_s(r) == pytest.approx(0.1) and e2e_s(r) == pytest.approx(0.3)
    assert tpot_s(r) == pytest.approx(0.2 / 3) and itl_s(r) == pytest.approx([0.05, 0.05, 0.1])


def test_goodput_and_slo_share_by_hand():
    records = [rec(0.0, [0.1, 0.15, 0.2, 0.3]),    # ttft 100, tpot 66.7, max itl 100, e2e 300
               rec(0.5, [0.55, 0.6, 0.65, 0.7]),   # ttft 50, tpot 50, itl 50, e2e 200
               rec(1.0, [1.4, 1.45, 1.5, 1.55])]   # ttft 400: misses ttft
    slo = SloConfig(ttft_ms=150, tpot_ms=70)
    assert [meets_slo(r, slo) for r in records] == [True, True, False]
    assert [meets_slo(r, SloConfig(itl_ms=60)) for r in records] == [False, True, True]
    assert [meets_slo(r, SloConfig(e2e_ms=250)) for r in records] == [False, True, False]  # 550 ms
    s = serving(request_rate=2, n_requests=3, slo={"ttft_ms": 150, "tpot_ms": 70})
    fields, sat = serving_fields(records, s, duration_s=1.55, slot_waits=[False] * 3)
    assert fields["goodput_rps"] == pytest.approx(2 / 1.55)
    assert fields["slo_met_share"] == pytest.approx(2 / 3)
    assert fields["offered_request_rate_rps"] == pytest.approx(2 / 1.0)  # (n - 1) / arrival span
    assert fields["achieved_request_rate_rps"] == pytest.approx(2 / (1.55 - 0.3))  # (n - 1) / completion span
    assert fields["client_send_lag_ms_p99"] == pytest.approx(0.0)


def test_no_slo_means_no_goodput():
    fields, _ = serving_fields([rec(0.0, [0.1])], serving(), 1.0, [False])
    assert fields["goodput_rps"] is None and fields["slo_met_share"] is None


def test_mann_kendall_by_hand():
    # y strictly increasing over 5 points: S = 10, var = 5*4*15/18 = 16.67, z = 9/4.08 = 2.20, p = 0.0139
    t = mann_kendall([0, 1, 2, 3, 4], [1, 2, 3, 4, 5])
    assert t.p_value == pytest.approx(0.0139, abs=0.0005) and t.slope == pytest.approx(1.0)
    flat = mann_kendall([0, 1, 2, 3, 4, 5], [3, 1, 4, 1, 5, 2])
    assert flat.p_value > 0.2


def test_saturation_from_a_growing_queue_but_not_from_a_steady_one():
    arrivals = [i * 0.1 for i in range(40)]  # 10 requests/s offered
    queue = [rec(a, [0.05 + i * 0.25, 0.06 + i * 0.25]) for i, a in enumerate(arrivals)]  # served at 4/s
    steady = [rec(a, [a + 0.05 + 0.01 * (i % 3), a + 0.07]) for i, a in enumerate(arrivals)]
    s = serving(request_rate=10, n_requests=40)
    hot, cool = saturation(queue, s), saturation(steady, s)
    assert hot.saturated is True and "achieved" in hot.detail and "TTFT grew" in hot.detail
    assert cool.saturated is False and cool.achieved_rps == pytest.approx(10, rel=0.05)
    assert saturation(queue, serving(request_rate="inf", n_requests=40)).saturated is None


# -- the client against the stub server ---------------------------------------------------

def planned(n: int, rate: float, max_tokens: int = 4) -> list[PlannedRequest]:
    body = completion_body("stub", "hello", max_tokens, 0.0, 1.0, {})
    return [PlannedRequest(i, i / rate, body, 3) for i in range(n)]


@pytest.mark.parametrize("style", ["token_ids", "usage", "text"])
def test_client_times_against_a_stub_with_known_delays(style):
    with StubServer(ttft_s=0.05, itl_s=0.02, style=style) as stub:
        origin, outcomes = run_load(Target("127.0.0.1", stub.port), planned(4, 20.0, 5), None, 30)
    for o, served in zip(outcomes, sorted(stub.served, key=lambda s: s.received_s)):
        r, _, surplus = o.to_record()
        assert r.output_tokens == 5 and surplus == 0
        assert 0.05 <= ttft_s(r) < 0.05 + 0.25  # the stub's first token, plus loopback and scheduling
        assert (r.token_times_s[-1] - r.token_times_s[0]) == pytest.approx(
            served.chunk_times_s[-1] - served.chunk_times_s[0], abs=0.05)  # what the server wrote, as read
        assert r.arrival_s == pytest.approx(origin + o.index / 20.0)


def test_max_concurrency_holds_requests_until_a_slot_frees():
    with StubServer(ttft_s=0.05, itl_s=0.0) as stub:
        _, outcomes = run_load(Target("127.0.0.1", stub.port), planned(4, 1000.0, 1), 1, 30)
    sends = sorted(o.sent_s for o in outcomes)
    done = sorted(o.done_s for o in outcomes)
    assert all(s >= d for s, d in zip(sends[1:], done))  # each send after the previous request ended
    assert sum(o.waited_for_slot for o in outcomes) >= 2


def test_an_overloaded_stub_saturates_and_an_unloaded_one_does_not():
    s_hot = serving(request_rate=60, n_requests=30)
    s_cool = serving(request_rate=20, n_requests=30)
    with StubServer(ttft_s=0.04, itl_s=0.0, capacity=1) as stub:  # serves 25 requests/s at most
        _, hot = run_load(Target("127.0.0.1", stub.port), planned(30, 60.0, 1), None, 60)
    with StubServer(ttft_s=0.005, itl_s=0.0, capacity=64) as stub:
        _, cool = run_load(Target("127.0.0.1", stub.port), planned(30, 20.0, 1), None, 60)
    hot_sat = saturation([o.to_record()[0] for o in hot], s_hot)
    cool_sat = saturation([o.to_record()[0] for o in cool], s_cool)
    assert hot_sat.saturated is True, hot_sat.detail
    assert cool_sat.saturated is False, cool_sat.detail


def test_an_error_status_stops_the_load():
    with StubServer(fail_status=500) as stub, pytest.raises(LoadFailed, match="HTTP 500.*stub refuses"):
        run_load(Target("127.0.0.1", stub.port), planned(3, 100.0), None, 30)


def test_an_error_event_stops_the_load():
    with StubServer(error_event=True) as stub, pytest.raises(LoadFailed, match="stub error event"):
        run_load(Target("127.0.0.1", stub.port), planned(3, 100.0), None, 30)


def test_nothing_listening_fails_the_load():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LoadFailed, match="ConnectionRefusedError"):
        run_load(Target("127.0.0.1", port), planned(2, 100.0), None, 30)



def test_events_split_anywhere_over_reads_parse_the_same():
    raw = b"data: {\"choices\": [{\"text\": \"a\"}]}\r\n\r\ndata: [DONE]\r\n\r\n"
    for cut in range(1, len(raw)):
        parser = EventStream()
        assert parser.feed(raw[:cut]) + parser.feed(raw[cut:]) == ['{"choices": [{"text": "a"}]}', "[DONE]"], cut
