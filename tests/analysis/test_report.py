"""The HTML report in a real headless Chromium: a real CPU study and a recorded
multi-backend GPU study render without console errors, with every chart drawn and
nothing fetched; a screenshot of each is saved under test-artifacts/."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.support.browser import check_page, chromium_path
from tests.support.helpers import REPO, llem
from llenergymeasure.orchestrator.analysis.results import open_study
from tests.support.recorded_study import build, recorded_result, template_result

ARTIFACTS = REPO / "test-artifacts"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(chromium_path() is None,
                                                   reason="no chromium installed (.ci/run installs Debian's)")]


def _not_blank(png: bytes) -> int:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 24) or []
    return len(colours)


def _render(html: Path, name: str):
    page = check_page(html.resolve().as_uri())
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.png").write_bytes(page.screenshot)
    assert page.errors == [], page.errors
    assert page.dom["external"] == 0, "the report must not reference anything on the network"
    assert page.dom["images"] >= 2 and page.dom["imagesRendered"] == page.dom["images"]
    assert _not_blank(page.screenshot) > 50, f"screenshot {name}.png looks blank"
    return page


def test_the_page_checker_catches_errors(tmp_path: Path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img src='missing.png'><script>undefinedFunction()</script></body></html>")
    page = check_page(bad.as_uri())
    assert any("exception" in e for e in page.errors) and any("network" in e for e in page.errors)


def test_report_of_a_cpu_study_says_energy_was_unavailable(cpu_study: Path, tmp_path: Path):
    out = tmp_path / "cpu-report.html"
    r = llem("report", str(cpu_study), "-o", str(out), "--runs", "e01-c2,e04-c3")
    assert r.returncode == 0, r.stderr
    page = _render(out, "report-cpu-study")
    text = page.dom["text"]
    assert "Energy was not measured" in text and "intel-rapl" in text
    assert "Changing pytorch.batch_size from 1 (the reference) to 8 gives" in text
    assert "CPU use of the run process" in text  # no power samples: says what is shown instead
    assert "e01-c2 (pytorch.batch_size=1); e04-c3 (pytorch.batch_size=8)" in text  # the chosen runs
    assert {"summary-table", "latency-table", "environment", "study-file"} <= set(page.dom["ids"])
    assert "cost-table" not in page.dom["ids"]  # no prices set
    assert "name: batch-sweep" in text  # the study file is shown


def test_report_of_a_recorded_multi_backend_study(cpu_study: Path, tmp_path: Path):
    study_dir = build(tmp_path, recorded_result(cpu_study),
                      "analysis:\n  costs: {electricity_price_per_kwh: 0.2, gpu_hour_price: 2.5, pue: 1.2,"
                      " grid_carbon_intensity_g_per_kwh: 400}\n")
    r = llem("report", str(study_dir))
    assert r.returncode == 0, r.stderr
    page = _render(study_dir / "report.html", "report-multi-backend")
    text = page.dom["text"]
    # throughput + energy charts for the shared batch axis, two Pareto plots, latency, power
    assert page.dom["svgImages"] >= 6
    assert "pytorch.batch_size / vllm.max_num_seqs / tensorrt.max_batch_size" in text
    assert "Comparing backends by their lowest energy per output token" in text
    assert "OutOfMemoryError" in text and "thermal_throttling" in text
    assert "NVIDIA H100 80GB HBM3" in text and "GPU power" in text
    assert {"cost-table", "failures-table", "warnings-table"} <= set(page.dom["ids"])
    assert "GPU-time cost per million output tokens" in text and "CO2, g per million output tokens" in text


def test_report_of_a_cross_backend_study_sets_the_backends_side_by_side(tmp_path: Path):
    """The side-by-side and "Same output?" tables render in a browser (a hand-built template:
    no real study needed), with the counts of requests that generated the reference's tokens."""
    study_dir = build(tmp_path, template_result())
    r = llem("report", str(study_dir))
    assert r.returncode == 0, r.stderr
    page = _render(study_dir / "report.html", "report-cross-backend")
    text = page.dom["text"]
    assert {"side-by-side-table", "same-output-table"} <= set(page.dom["ids"])
    assert "Backends side by side" in text and "Same output?" in text
    s = open_study(study_dir).summary.set_index("experiment_index")
    for idx in s.index:
        n, share = s.loc[idx, "same_output_requests_compared"], s.loc[idx, "same_tokens_as_reference_share"]
        assert f"{round(share * n)}/{n}" in text
