"""A multi-backend GPU study directory constructed from a recorded result, for
report tests on a machine with no GPU (and no vLLM or TensorRT-LLM).

The plan comes from a real study file through the real loader, planner and
manifest; every result.json is the recorded CPU result re-labelled with the
experiment's config and GPU environment, with throughput, latency and energy set
from a simple, seeded model of the three backends. Each run also has a requests.parquet
(written by the harness's own writer) whose generated tokens are the same on every
backend except for the prompts in DIVERGING and SHORTER, so that output agreement with
the reference has known answers. Nothing here is a measurement: it exercises the
analysis and the report, never the harness. `template_result()` is a hand-built CPU
result for tests that should not wait for a real study; `recorded_result()` reads one."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pandas as pd
import yaml

from llenergymeasure.backends.contract import ERROR_FILE, REQUESTS_FILE, RESULT_FILE, TIMESERIES_FILE
from llenergymeasure.backends.harness.metrics import Metrics
from llenergymeasure.backends.harness.result import RunResult, write_requests
from llenergymeasure.backends.registry import RequestRecord
from llenergymeasure.orchestrator.execution.manifest import AnalysisRecord, Manifest
from llenergymeasure.orchestrator.study.plan import order_runs
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.analysis.tables import write_runs_table

STUDY = """\
name: recorded-multi-backend
model: llem/tiny-llama
dataset: synthetic
n_prompts: 64
max_output_tokens: 128
device: cuda
sweep:
  backend: [pytorch, vllm, tensorrt]
  pytorch.batch_size: [1, 8]
  vllm.max_num_seqs: [1, 8]
  tensorrt.max_batch_size: [1, 8]
execution: {n_cycles: 3, order: interleaved}
"""

# tokens/s at batch 1 and the gain at batch 8; watts at batch 1 and 8
MODEL = {"pytorch": (40.0, 5.0, 180.0, 260.0), "vllm": (60.0, 6.5, 200.0, 300.0), "tensorrt": (70.0, 7.0, 210.0, 310.0)}
GPU = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-00000000-recorded-fixture"}

N_PROMPTS, N_OUTPUT = (yaml.safe_load(STUDY)[k] for k in ("n_prompts", "max_output_tokens"))
# Output agreement with PyTorch, per backend: prompts whose tokens part from PyTorch's at a
# position (same length), and prompts that stop early (an EOS: a different length too)
DIVERGING: dict[str, dict[int, int]] = {"pytorch": {}, "vllm": {5: 100, 17: 64}, "tensorrt": {3: 10, 5: 100}}
SHORTER: dict[str, dict[int, int]] = {"pytorch": {}, "vllm": {}, "tensorrt": {60: 120}}


def output_tokens(backend: str, prompt: int) -> list[int]:
    """The tokens `backend` generates for `prompt` in this fixture (the same in every run)."""
    tokens = [(prompt * 31 + k * 7) % 32000 for k in range(SHORTER[backend].get(prompt, N_OUTPUT))]
    part = DIVERGING[backend].get(prompt)
    if part is not None:
        tokens[part:] = [t + 1 for t in tokens[part:]]
    return tokens


def write_recorded_requests(run_dir: Path, backend: str, n_passes: int = 2) -> None:
    """requests.parquet of `n_passes` passes over the prompts, as the harness writes it."""
    passes = []
    for p in range(n_passes):
        start = p * 10.0
        passes.append([RequestRecord(input_tokens=64, submitted_s=start, arrival_s=start,
                                     token_times_s=[start + 0.02 + 0.01 * k for k in range(len(ids))], token_ids=ids)
                       for ids in (output_tokens(backend, i) for i in range(N_PROMPTS))])
    write_requests(run_dir / REQUESTS_FILE, passes, 0.0)


def template_result() -> RunResult:
    """A hand-built CPU result of the tiny model (what `build` re-labels): every field a
    real one has, no measurement behind any of them."""
    metrics = {name: None for name in Metrics.model_fields} | {
        "n_requests": N_PROMPTS, "n_passes": 1, "input_tokens": 64 * N_PROMPTS, "output_tokens": N_OUTPUT * N_PROMPTS,
        "duration_s": 10.0, "output_tokens_per_s": 819.2, "requests_per_s": 6.4, "model_load_s": 0.5,
        "flops_estimate": 2.0 * 3_095_552 * (64 + N_OUTPUT) * N_PROMPTS}
    reason = "CPU energy (RAPL) cannot be read: hand-built fixture"
    return RunResult.model_validate({
        "experiment_id": "0" * 64, "config": {"model": "llem/tiny-llama"},
        "resolved": {"model_path": "llem--tiny-llama", "n_parameters": 3_095_552, "device": "cpu", "dtype": "float32"},
        "metrics": metrics, "energy_source": None, "energy_unavailable_reason": reason,
        "energy_fallback_reason": None, "energy_per_device_j": {},
        "cpu_energy": {"source": None, "unavailable_reason": reason, "per_domain_j": {}},
        "sampling_coverage": None, "warnings": [],
        "phases": {"baseline_s": 0.0, "warmup_s": 0.1, "stabilisation_s": 0.0},
        "stabilisation": {"waited_s": 0.0, "reached": None, "detail": "CPU run: no GPU temperature or power to wait on"},
        "baseline": None,
        "environment": {"tool_version": "0.1.0", "tool_commit": "0" * 40, "python": "3.11.7", "cpu_model": "hand-built",
                        "packages": {"torch": "2.0.0 (hand-built)", "transformers": "4.0.0 (hand-built)"}},
        "started_at": "2026-01-01T00:00:00.000+00:00", "finished_at": "2026-01-01T00:00:10.000+00:00",
    })


def build(root: Path, template: RunResult, analysis_yaml: str = "", seed: int = 0, requests: bool = True) -> Path:
    """Write the study directory under `root`; one run fails, one carries a warning.
    `analysis_yaml` is appended to the study file (any top-level keys); `requests=False`:
    no requests.parquet, as runs of an llem from before per-request records."""
    rng = random.Random(seed)
    study_file = root / "recorded-multi-backend.yaml"
    study_file.write_text(STUDY + analysis_yaml)
    study = load_study(study_file)
    plan = order_runs(len(study.experiments), 3, "interleaved", 0)
    study_dir = root / "recorded-multi-backend_20260101T000000Z"
    study_dir.mkdir()
    (study_dir / study_file.name).write_text(study_file.read_text())
    analysis = {"reference_index": study.reference_index, "costs": study.analysis.costs.model_dump(mode="json"),
                "cost_sources": {k: "study file" for k in study.analysis.costs.model_fields_set}}
    manifest = Manifest.create(study_dir, study, plan, "docker", analysis=AnalysisRecord(**analysis))
    for i, run in enumerate(plan):
        exp = study.experiments[run.experiment_index - 1]
        run_dir = study_dir / "runs" / run.run_id
        run_dir.mkdir(parents=True)
        if i == len(plan) - 1:  # the last run failed
            (run_dir / ERROR_FILE).write_text(json.dumps({"error_type": "OutOfMemoryError",
                                                          "message": "CUDA out of memory (recorded)"}))
            manifest.update(run.run_id, "failed", exit_code=1, error="OutOfMemoryError: CUDA out of memory (recorded)")
            continue
        c = exp.config
        batch = {"pytorch": lambda: c.pytorch.batch_size, "vllm": lambda: c.vllm.max_num_seqs,
                 "tensorrt": lambda: c.tensorrt.max_batch_size}[c.backend]()
        tps1, gain, w1, w8 = MODEL[c.backend]
        tps = tps1 * (gain if batch == 8 else 1.0) * rng.gauss(1.0, 0.02)
        watts = (w8 if batch == 8 else w1) * rng.gauss(1.0, 0.01)
        duration = 30.0
        out_tokens = int(tps * duration)
        energy = watts * duration
        metrics = template.metrics.model_copy(update={
            "output_tokens": out_tokens, "duration_s": duration, "output_tokens_per_s": tps,
            "requests_per_s": tps / 128, "n_requests": out_tokens // 128,
            "ttft_ms_p50": 20.0 * batch ** 0.5, "ttft_ms_p90": 26.0 * batch ** 0.5, "ttft_ms_p99": 30.0 * batch ** 0.5,
            "itl_ms_p50": 1000 / tps1 * 1.1, "itl_ms_p90": 1000 / tps1 * 1.3, "itl_ms_p99": 1000 / tps1 * 1.6,
            "tpot_ms_p50": 1000 / tps1 * 1.1, "tpot_ms_p90": 1000 / tps1 * 1.2, "tpot_ms_p99": 1000 / tps1 * 1.4,
            "e2e_ms_p50": 20.0 * batch ** 0.5 + 127 * 1000 / tps1 * 1.1,
            "e2e_ms_p90": 26.0 * batch ** 0.5 + 127 * 1000 / tps1 * 1.2,
            "e2e_ms_p99": 30.0 * batch ** 0.5 + 127 * 1000 / tps1 * 1.4,
            "energy_j": energy, "energy_per_output_token_j": energy / out_tokens,
            "energy_per_request_j": energy / max(1, out_tokens // 128), "avg_power_w": watts,
            "peak_memory_mb": 20000.0 + 500 * batch,
        })
        env = {**template.environment, "gpus": [GPU], "gpu_driver": "580.00 (recorded)",
               "image": {"ref": f"llem-{c.backend}:recorded", "id": f"sha256:{c.backend:0<12}"}}
        warnings = ["thermal_throttling: GPU-00000000-recorded-fixture: hw_thermal"] if i == 3 else []
        result = template.model_copy(update={
            "experiment_id": exp.id, "config": c.model_dump(mode="json"), "metrics": metrics,
            "energy_source": "nvml_counter", "energy_unavailable_reason": None, "warnings": warnings,
            "energy_per_device_j": {GPU["uuid"]: energy}, "environment": env,
        })
        (run_dir / RESULT_FILE).write_text(result.model_dump_json())
        t = [k * 0.1 for k in range(int(duration * 10))]
        ts = pd.DataFrame({"t_s": t, "phase": "window", "device": GPU["uuid"],
                           "power_w": [watts * (1 + 0.03 * ((k % 7) - 3) / 3) for k in range(len(t))],
                           "utilization_pct": 90.0})
        buf = io.BytesIO()
        ts.to_parquet(buf, index=False)
        (run_dir / TIMESERIES_FILE).write_bytes(buf.getvalue())
        if requests:
            write_recorded_requests(run_dir, c.backend)
        manifest.update(run.run_id, "done", exit_code=0)
    write_runs_table(manifest)
    return study_dir


def recorded_result(study_dir: Path) -> RunResult:
    """The first finished run's result of a real study directory."""
    m = Manifest.load(study_dir)
    run = next(r for r in m.runs if r.state == "done")
    return RunResult.model_validate_json((study_dir / run.run_dir / RESULT_FILE).read_text())
