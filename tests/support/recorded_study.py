"""A multi-backend GPU study directory constructed from a recorded result, for
report tests on a machine with no GPU (and no vLLM or TensorRT-LLM).

The plan comes from a real study file through the real loader, planner and
manifest; every result.json is the recorded CPU result re-labelled with the
experiment's config and GPU environment, with throughput, latency and energy set
from a simple, seeded model of the three backends. Nothing here is a measurement:
it exercises the analysis and the report, never the harness."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pandas as pd

from llenergymeasure.backends.contract import ERROR_FILE, RESULT_FILE, TIMESERIES_FILE
from llenergymeasure.backends.harness.result import RunResult
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


def build(root: Path, template: RunResult, analysis_yaml: str = "", seed: int = 0) -> Path:
    """Write the study directory under `root`; one run fails, one carries a warning."""
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
        manifest.update(run.run_id, "done", exit_code=0)
    write_runs_table(manifest)
    return study_dir


def recorded_result(study_dir: Path) -> RunResult:
    """The first finished run's result of a real study directory."""
    m = Manifest.load(study_dir)
    run = next(r for r in m.runs if r.state == "done")
    return RunResult.model_validate_json((study_dir / run.run_dir / RESULT_FILE).read_text())
