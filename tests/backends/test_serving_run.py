"""The serving run (harness/serving.py) end to end, in this process, against the stub server
(tests/support/stub_openai.py) started as the backend's server command: what a finished
run leaves behind, and a server that never becomes ready, exits, dies mid-load or answers
errors, each failing the run with the server's own log lines in error.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness import entrypoint
from llenergymeasure.backends.harness import serving as serving_run
from llenergymeasure.backends.harness.result import RunResult
from llenergymeasure.backends.serving.spec import ServerLauncher

STUB = Path(__file__).resolve().parents[1] / "support" / "stub_openai.py"


def stub_launcher(*args: str) -> ServerLauncher:
    return ServerLauncher(command=lambda launch: [sys.executable, str(STUB), "--port", str(launch.port), *args],
                          request_fields=lambda config, decoding: {}, exact_length="the stub streams max_tokens tokens")


@pytest.fixture
def run(monkeypatch, tmp_path):
    """Run one serving experiment with the stub in place of the pytorch backend's server; returns the
    run directory and the exit code of the harness's entry point."""

    def go(*stub_args: str, **serving) -> tuple[Path, int]:
        monkeypatch.setattr(serving_run, "launcher", lambda spec: stub_launcher(*stub_args))
        config = ExperimentConfig.model_validate({
            "model": "llem/tiny-llama", "device": "cpu", "n_prompts": 4, "max_input_tokens": 8,
            "max_output_tokens": 3, "scenario": "serving",
            "serving": {"request_rate": 50, "n_requests": 6, "warmup_requests": 1, **serving}})
        run_dir = tmp_path / "run"
        monkeypatch.setenv(contract.ENV_EXPERIMENT, config.canonical_json())
        monkeypatch.setenv(contract.ENV_RUN_DIR, str(run_dir))
        return run_dir, entrypoint.main()

    yield go
    stubs = [p for p in psutil.Process().children(recursive=True) if str(STUB) in " ".join(p.cmdline())]
    assert not stubs, "the server outlived its run"


def error_of(run_dir: Path) -> str:
    return json.loads((run_dir / contract.ERROR_FILE).read_text())["message"]


def test_a_serving_run_leaves_its_result_requests_schedule_and_server_log(run):
    run_dir, code = run("--ttft-s", "0.01", "--itl-s", "0.005",
                        slo={"ttft_ms": 5000, "e2e_ms": 10000}, max_concurrency=2)
    assert code == contract.EXIT_OK, (run_dir / contract.ERROR_FILE).read_text() if code else ""
    result = RunResult.model_validate_json((run_dir / contract.RESULT_FILE).read_text())
    m = result.metrics
    assert m.n_requests == 6 and m.output_tokens == 18 and m.input_tokens == 6 * 3  # the stub's usage
    assert m.offered_request_rate_rps is not None and m.achieved_request_rate_rps is not None
    assert m.slo_met_share == 1.0 and m.goodput_rps == pytest.approx(6 / m.duration_s)
    assert m.saturated in (True, False) and m.ttft_ms_p50 >= 10
    assert result.serving.token_counting == {"token_ids": 6} and result.serving.n_requests == 6
    assert result.serving.server_command[1] == str(STUB)
    schedule = json.loads((run_dir / "schedule.json").read_text())
    assert schedule["sha256"] == result.serving.schedule_sha256 and len(schedule["arrivals_s"]) == 6
    table = pq.read_table(run_dir / contract.REQUESTS_FILE).to_pylist()
    assert [r["request_index"] for r in table] == list(range(6))
    assert all(r["output_token_ids"] == [0, 1, 2] and r["slo_met"] for r in table)
    assert table[0]["arrival_s"] == 0.0 and all(r["first_token_s"] > r["arrival_s"] for r in table)
    assert "stub: listening" in (run_dir / "server.log").read_text()


def test_a_server_that_never_becomes_ready_fails_the_run_with_its_log(run):
    run_dir, code = run("--never-ready", server_start_timeout_s=2)
    assert code == contract.EXIT_FAILED
    msg = error_of(run_dir)
    assert "did not answer /v1/models within serving.server_start_timeout_s (2 s)" in msg
    assert "HTTP 503" in msg and "stub: listening" in msg


def test_a_server_that_exits_at_start_fails_the_run_with_its_log(run):
    run_dir, code = run("--style", "nonsense")
    assert code == contract.EXIT_FAILED
    msg = error_of(run_dir)
    assert "the server exited with code 2 before it answered" in msg and "invalid choice: 'nonsense'" in msg


def test_a_server_that_dies_mid_load_fails_the_run_with_its_log(run):
    run_dir, code = run("--die-after", "3", warmup_requests=0)
    assert code == contract.EXIT_FAILED
    msg = error_of(run_dir)
    assert "the load failed" in msg and "the server exited with code 3" in msg
    assert "stub: dying at completion 4 (die_after=3)" in msg


def test_a_server_answering_errors_fails_the_run(run):
    run_dir, code = run("--fail-status", "500")
    assert code == contract.EXIT_FAILED
    msg = error_of(run_dir)
    assert "warm-up failed" in msg and "HTTP 500" in msg and "stub refuses" in msg


def test_the_offline_protocol_refuses_a_serving_config(tmp_path):
    """Only the entry point's dispatch runs a serving config (harness/serving.py): the offline
    protocol never measures one as if it were offline."""
    from llenergymeasure.backends.harness.protocol import run_experiment

    config = ExperimentConfig.model_validate({"model": "llem/tiny-llama", "device": "cpu", "scenario": "serving",
                                              "serving": {"request_rate": 2, "n_requests": 2}})
    with pytest.raises(ValueError, match="scenario: serving runs through harness.serving.run_serving"):
        run_experiment(config, tmp_path)


def test_a_serving_run_records_the_gpu_settings_as_enforced(monkeypatch, tmp_path):
    """Serving results read back gpu: settings like offline ones (protocol.instrument_warnings):
    the limit the driver enforced, a mismatch warned, and running at the study's own cap is
    not `power_capping`."""
    from tests.support.fakes import FakeGpu, FakeGpuInventory
    from llenergymeasure.backends.harness.energy import UnavailableMeter

    inv = FakeGpuInventory([FakeGpu("GPU-a", power_limit_w=300.0, throttle=("sw_power_cap",))])
    monkeypatch.setattr(serving_run, "launcher", lambda spec: stub_launcher("--ttft-s", "0.01", "--itl-s", "0.005"))
    monkeypatch.setattr(serving_run, "run_device", lambda device: "cuda:0")
    monkeypatch.setattr(serving_run, "run_gpus", lambda device, n: (inv.visible()[:n], inv.discover(inv.visible()[:n])))
    monkeypatch.setattr(serving_run, "snapshot", lambda gpus: {"gpus": [{"uuid": g.uuid} for g in gpus.devices]})
    monkeypatch.setattr(serving_run, "select_cpu_meter", lambda: UnavailableMeter("no RAPL in this test"))
    config = ExperimentConfig.model_validate({
        "model": "llem/tiny-llama", "device": "cuda:0", "n_prompts": 4, "max_input_tokens": 8, "max_output_tokens": 3,
        "scenario": "serving", "gpu": {"power_limit_w": 250},
        "measurement": {"stabilisation_max_s": 0, "sample_interval_s": 0.05},
        "serving": {"request_rate": 50, "n_requests": 6, "warmup_requests": 1}})
    result = serving_run.run_serving(config, tmp_path)
    (rb,) = result.gpu_readback
    assert rb.uuid == "GPU-a" and rb.power_limit_w == 300.0
    assert "gpu_setting_mismatch: GPU-a: power limit 250 W requested, 300 W enforced" in result.warnings
    assert not [w for w in result.warnings if w.startswith("power_capping")]  # the cap is the study's own
