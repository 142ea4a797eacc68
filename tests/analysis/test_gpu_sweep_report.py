"""The report of a study that sweeps a gpu.* setting (analysis/gpu_settings.py): its headline
says what the setting did to energy per token and latency, with intervals, and which settings
are on the energy-latency Pareto frontier; charts show both against the setting; runs carry
the enforced values read back; the prefill/decode table says how decode was derived and flags
an interval spanning zero. A study directory built from a hand-built result (no GPU here):
nothing in it is a measurement, it exercises the analysis and the report."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from llenergymeasure.backends.contract import RESULT_FILE
from llenergymeasure.backends.harness.phase_split import PhaseSplit
from llenergymeasure.backends.harness.readback import GpuReadback
from llenergymeasure.orchestrator.analysis.finish import finish_study
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.plan import order_runs
from tests.support.recorded_study import GPU, template_result

STUDY = """\
name: power-cap-recorded
model: llem/tiny-llama
device: cuda
max_output_tokens: 128
measurement: {phase_split: true}
sweep: {gpu.power_limit_w: [250, 450, 700]}
execution: {n_cycles: 3}
"""
# cap -> (J per output token, E2E p50 ms): capping saves energy and costs latency; 450 W is
# dominated by neither end, so every setting is on the frontier
MODEL = {250.0: (0.30, 1300.0), 450.0: (0.36, 1150.0), 700.0: (0.40, 1100.0)}


def build(root: Path) -> Path:
    rng = random.Random(1)
    (root / "s.yaml").write_text(STUDY)
    study = load_study(root / "s.yaml")
    plan = order_runs(3, 3, "interleaved", 0)
    d = root / "power-cap-recorded_20260101T000000Z"
    d.mkdir()
    (d / "s.yaml").write_text(STUDY)
    manifest = Manifest.create(d, study, plan, "local")
    template = template_result()
    for run in plan:
        c = study.experiments[run.experiment_index - 1].config
        j_tok, e2e = MODEL[c.gpu.power_limit_w]
        j_tok *= rng.gauss(1.0, 0.01)
        out = 10_000
        energy = j_tok * out
        decode_noise = 0.2 if c.gpu.power_limit_w == 450.0 else 0.0  # one configuration's decode is noise
        split = PhaseSplit(full_passes=4, full_time_per_pass_s=2.0, full_energy_per_pass_j=energy / 4,
                           prefill_passes=20, prefill_duration_s=8.0, prefill_time_per_pass_s=0.4,
                           prefill_energy_j=energy * 0.8, prefill_energy_per_pass_j=energy * 0.04
                           + rng.gauss(0, energy * decode_noise),
                           input_tokens_per_pass=8192.0, decode_tokens_per_pass=2500.0,
                           prefill_time_per_input_token_s=5e-5, decode_time_per_output_token_s=6e-4,
                           prefill_energy_per_input_token_j=energy * 0.04 / 8192, decode_energy_per_output_token_j=None,
                           energy_unavailable_reason=None)
        metrics = template.metrics.model_copy(update={
            "output_tokens": out, "energy_j": energy, "energy_per_output_token_j": energy / out,
            "e2e_ms_p50": e2e * rng.gauss(1.0, 0.01), "ttft_ms_p50": 100.0, "avg_power_w": c.gpu.power_limit_w * 0.9,
            "energy_delay_product_js": energy / 80 * e2e / 1000, "output_tokens_per_joule": out / energy})
        result = template.model_copy(update={
            "experiment_id": c.config_hash(), "config": c.model_dump(mode="json"), "metrics": metrics,
            "energy_source": "nvml_counter", "energy_unavailable_reason": None, "energy_per_device_j": {GPU["uuid"]: energy},
            "environment": {**template.environment, "gpus": [GPU]}, "phase_split": split,
            "gpu_readback": [GpuReadback(uuid=GPU["uuid"], power_limit_w=c.gpu.power_limit_w, sm_clock_mhz_median=1755.0,
                                         sm_clock_mhz_min=1700.0, sm_clock_mhz_max=1980.0,
                                         memory_clock_mhz_median=2619.0, memory_clock_mhz_min=2619.0,
                                         memory_clock_mhz_max=2619.0)]})
        run_dir = d / "runs" / run.run_id
        run_dir.mkdir(parents=True)
        (run_dir / RESULT_FILE).write_text(result.model_dump_json())
        manifest.update(run.run_id, "done", exit_code=0)
    return d


def test_a_power_cap_sweep_reads_as_a_trade_off(tmp_path):
    d = build(tmp_path)
    finished = finish_study(Manifest.load(d), print)
    runs, summary = finished.results.runs, finished.results.summary
    assert sorted(runs["enforced.power_limit_w"].unique()) == [250.0, 450.0, 700.0]
    assert runs["enforced.sm_clock_mhz"].eq(1755.0).all()
    assert summary["energy_delay_product_js_mean"].notna().all() and summary["output_tokens_per_joule_mean"].notna().all()
    html = (d / "report.html").read_text()
    assert "Setting gpu.power_limit_w to 250 instead of 700 gives 0.75x the energy per output token (95% CI" in html
    assert "x the median end-to-end latency (95% CI" in html
    assert "settings on the energy-latency Pareto frontier: 250, 450, 700." in html
    assert 'alt="Energy per output token and latency by gpu.power_limit_w"' in html
    assert 'alt="End-to-end latency against energy per token"' in html
    # prefill and decode: how it was derived, and the noisy configuration flagged, not printed bare
    assert 'id="phase-split-table"' in html and "propagated from both windows across cycles" in html
    noisy = summary[summary["gpu.power_limit_w"] == 450].iloc[0]
    assert bool(noisy["decode_energy_ci_spans_zero"]) and "decode_energy_ci_spans_zero" in noisy["flags"]
    assert "flagged decode_energy_ci_spans_zero, the interval includes 0" in html
    clean = summary[summary["gpu.power_limit_w"] == 250].iloc[0]
    assert not bool(clean["decode_energy_ci_spans_zero"]) and clean["decode_energy_per_output_token_j_mean"] > 0
    assert isinstance(pd.read_parquet(d / "summary.parquet"), pd.DataFrame)
