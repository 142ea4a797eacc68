"""Each backend's server description (backends/<name>/server.py) against the server itself:
the commands parse with the servers' own command lines, and a serving run against the real
server (transformers serve on the tiny model; vLLM's CPU build, slow) finishes with every
request at exactly max_output_tokens."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.result import RunResult
from llenergymeasure.backends.models import resolve_model
from llenergymeasure.backends.paths import import_root
from llenergymeasure.backends.serving.spec import ServerLaunch, launcher
from llenergymeasure.backends.table import backend_row

ROOT = import_root()
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def config(backend: str, **kw) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "model": "llem/tiny-llama", "backend": backend, "device": "cpu", "n_prompts": 8, "max_input_tokens": 16,
        "max_output_tokens": 8, "scenario": "serving",
        "serving": {"request_rate": 8, "n_requests": 8, "max_concurrency": 4, "warmup_requests": 2,
                    "slo": {"ttft_ms": 60000}}, **kw})


def launch(c: ExperimentConfig, python: str = sys.executable) -> ServerLaunch:
    return ServerLaunch(c, resolve_model("llem/tiny-llama"), "127.0.0.1", 8123, "cpu", python)


def test_transformers_serve_takes_every_flag_the_pytorch_server_passes():
    from transformers.cli.serve import Serve

    c = config("pytorch", pytorch={"attn_implementation": "sdpa", "torch_compile": True, "dtype": "float32"})
    argv = launcher(backend_row("pytorch").server).command(launch(c))
    params = set(inspect.signature(Serve.__init__).parameters)
    flags = [a[2:].replace("-", "_") for a in argv if a.startswith("--")]
    assert argv[argv.index("serve") + 1] == str(resolve_model("llem/tiny-llama"))
    assert set(flags) <= params, set(flags) - params
    assert "continuous_batching" in flags and "compile" in flags


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm (make setup BACKEND=vllm)")
def test_the_vllm_server_command_parses_with_vllms_own_parser():
    c = config("vllm", vllm={"max_num_seqs": 4, "enforce_eager": True, "enable_prefix_caching": False,
                             "dtype": "float32"})
    argv = launcher(backend_row("vllm").server).command(launch(c, str(VLLM_PYTHON)))
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    probe = ("import json, sys\n"
             "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
             "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
             "a = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])\n"
             "print(json.dumps({k: getattr(a, k) for k in ('model', 'port', 'max_num_seqs', 'enforce_eager',"
             " 'enable_prefix_caching', 'dtype', 'seed', 'kv_cache_memory_bytes', 'max_model_len')}))")
    r = subprocess.run([str(VLLM_PYTHON), "-c", probe, *argv[3:]], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    parsed = json.loads(r.stdout.strip().splitlines()[-1])
    assert parsed["max_num_seqs"] == 4 and parsed["enforce_eager"] is True and parsed["enable_prefix_caching"] is False
    assert parsed["dtype"] == "float32" and parsed["seed"] == 42 and parsed["port"] == 8123
    assert parsed["max_model_len"] == 16 + 8 and parsed["kv_cache_memory_bytes"] > 0  # sized as offline


def run_real(python: Path, c: ExperimentConfig, run_dir: Path, timeout: float) -> RunResult:
    env = {**os.environ, contract.ENV_EXPERIMENT: c.canonical_json(), contract.ENV_RUN_DIR: str(run_dir),
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([str(python), "-m", "llenergymeasure.backends"], env=env, capture_output=True, text=True,
                       timeout=timeout)
    error = run_dir / contract.ERROR_FILE
    assert r.returncode == 0, (error.read_text() if error.exists() else "") + r.stderr[-3000:]
    return RunResult.model_validate_json((run_dir / contract.RESULT_FILE).read_text())


def check_run(result: RunResult, run_dir: Path, c: ExperimentConfig) -> None:
    m = result.metrics
    assert m.n_requests == 8 and m.output_tokens == 8 * 8  # ignore_eos: exactly max_output_tokens each
    assert not [w for w in result.warnings if w.startswith("output_length")]
    assert m.ttft_ms_p50 > 0 and m.tpot_ms_p50 > 0 and m.slo_met_share == 1.0
    assert m.model_load_s == result.serving.server_ready_s > 0
    rows = pq.read_table(run_dir / contract.REQUESTS_FILE).to_pylist()
    assert [r["output_tokens"] for r in rows] == [8] * 8
    assert all(0 < r["input_tokens"] <= c.max_input_tokens + 1 for r in rows)


@pytest.mark.slow
def test_a_serving_run_against_transformers_serve(tmp_path):
    c = config("pytorch", pytorch={"dtype": "float32"})
    result = run_real(Path(sys.executable), c, tmp_path, timeout=600)
    check_run(result, tmp_path, c)
    assert result.serving.token_counting == {"text_events+usage_total": 8}
    assert "transformers serve" in result.serving.server


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm (make setup BACKEND=vllm)")
def test_a_serving_run_against_vllms_server(tmp_path):
    c = config("vllm", vllm={"dtype": "float32", "enforce_eager": True, "max_num_seqs": 4})
    result = run_real(VLLM_PYTHON, c, tmp_path, timeout=900)
    check_run(result, tmp_path, c)
    assert result.serving.token_counting == {"token_ids": 8}
    assert result.serving.cache_reset == "POST /reset_prefix_cache: emptied after warm-up"
    rows = pq.read_table(tmp_path / contract.REQUESTS_FILE).to_pylist()
    assert all(len(r["output_token_ids"]) == 8 for r in rows)
