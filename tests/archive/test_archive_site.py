"""`llem site`: the static explorer of an archive holding a GPU study and a CPU study.
Its files and sentences checked directly, and the page in a real headless Chromium:
a filter change redraws the charts, the CPU selection says energy was not measured,
flags and provenance open with one click, no console error, and no request leaves the
page (every URL it loads is a file beside it). Screenshots go to test-artifacts/."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from llenergymeasure.backends.contract import RESULT_FILE
from llenergymeasure.orchestrator.archive.add import add_studies
from llenergymeasure.orchestrator.archive.site import build_site, plotly_js
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest
from tests.archive.site_page import open_page
from tests.support.browser import chromium_path
from tests.support.helpers import REPO, llem
from tests.support.recorded_study import build, template_result

ARTIFACTS = REPO / "test-artifacts"
CPU_REASON = "CPU energy (RAPL) cannot be read: hand-built fixture"


def _as_cpu_study(study_dir: Path) -> Path:
    """The recorded study as a CPU one: no GPU in any run's environment, no energy."""
    m = Manifest.load(study_dir)
    m.study_name = "recorded-on-cpu"
    m.created_at = "2026-03-03T00:00:00.000+00:00"
    m.save()
    for run in m.runs:
        path = study_dir / run.run_dir / RESULT_FILE
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        r["environment"] = {**r["environment"], "gpus": [], "gpu_driver": None, "cpu_model": "Hand-built CPU 8-core"}
        r["metrics"] = {k: (None if k.startswith(("energy", "avg_power")) else v) for k, v in r["metrics"].items()}
        r.update(energy_source=None, energy_unavailable_reason=CPU_REASON, energy_per_device_j={})
        path.write_text(json.dumps(r))
    return study_dir


@pytest.fixture(scope="module")
def archive(recorded_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cpu = _as_cpu_study(build(tmp_path_factory.mktemp("cpu"), template_result(), seed=1))
    root = tmp_path_factory.mktemp("site-archive") / "archive"
    add_studies([recorded_study, cpu], root)
    return root


@pytest.fixture(scope="module")
def site(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    build_site(archive, out)
    return out


def _data(site: Path) -> dict:
    text = (site / "data.js").read_text(encoding="utf-8")
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def test_one_folder_with_plotly_from_the_pinned_wheel(site: Path):
    assert sorted(p.name for p in site.iterdir()) == ["data.js", "index.html", "plotly.min.js", "site.js"]
    assert (site / "plotly.min.js").read_bytes() == plotly_js()
    html = (site / "index.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs == ["data.js", "plotly.min.js", "site.js"]  # nothing but the files beside it
    assert not re.search(r"https?://", html + (site / "site.js").read_text() + (site / "data.js").read_text())


def test_the_sentences_say_the_effect_with_its_interval(site: Path):
    data = _data(site)
    lines = [h for e in data["effects"] for h in e["headlines"]]
    gpu = next(h for h in lines if h.startswith("On NVIDIA H100 80GB HBM3, batch 8 uses")
               and h.endswith("[recorded-multi-backend; pytorch]"))
    assert re.match(r"On NVIDIA H100 80GB HBM3, batch 8 uses 0\.\d\dx the energy per output token of batch 1 "
                    r"\(95% CI 0\.\d\d–0\.\d\d\), and gives \d\.\d\dx the output throughput \(95% CI", gpu), gpu
    cpu = next(h for h in lines if h.startswith("On CPU: Hand-built CPU 8-core"))
    assert f"energy was not measured ({CPU_REASON}), so throughput stands in" in cpu
    backends = [h for h in lines if "the energy per output token of pytorch" in h]
    assert len(backends) == 4  # vllm and tensorrt against pytorch, at batch 1 and at batch 8
    assert {s["study_name"] for s in data["studies"]} == {"recorded-multi-backend", "recorded-on-cpu"}


def test_bad_input_exits_2(archive: Path, tmp_path: Path):
    r = llem("site", str(tmp_path / "nothing"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "no archive there" in r.stderr
    with pytest.raises(UserError, match="inside the archive"):
        build_site(archive, archive / "site")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my own page")
    with pytest.raises(UserError, match="a folder with other files in it"):
        build_site(archive, mine)
    assert (mine / "index.html").read_text() == "my own page"


def _state(page) -> dict:
    return page.eval("""({
        model: document.getElementById('pick-model').value,
        hardware: document.getElementById('pick-hardware').value,
        setting: document.getElementById('pick-setting').value,
        energyX: (document.getElementById('chart-energy').data || []).map(t => t.x.join(',')),
        traces: (document.getElementById('chart-throughput').data || []).map(t => t.name),
        energyHidden: document.getElementById('chart-energy').hidden,
        note: document.getElementById('energy-note').hidden ? '' : document.getElementById('energy-note').textContent,
        headlines: Array.from(document.querySelectorAll('#headlines li')).map(li => li.textContent),
        rows: document.querySelectorAll('#configs tbody tr').length,
        studies: document.querySelectorAll('#studies tbody tr').length,
        svgs: document.querySelectorAll('.chart svg.main-svg').length,
    })""")


def _choose(page, select: str, value: str, renders: int) -> dict:
    page.eval(f"""(() => {{ const s = document.getElementById('{select}'); s.value = {json.dumps(value)};
                   s.dispatchEvent(new Event('change')); }})()""")
    page.wait_until(f"Number(document.body.dataset.renders || 0) >= {renders}")
    return _state(page)


def _not_blank(png: bytes) -> int:
    from PIL import Image

    return len(Image.open(io.BytesIO(png)).convert("RGB").getcolors(maxcolors=1 << 24) or [])


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason="no chromium installed (.ci/run installs Debian's)")
def test_the_explorer_in_chromium(site: Path):
    with open_page((site / "index.html").as_uri()) as page:
        page.wait_until("Number(document.body.dataset.renders || 0) >= 1")
        batch = _state(page)  # a GPU and the batch size first
        assert batch["hardware"] == "NVIDIA H100 80GB HBM3" and batch["setting"] == "batch_size"
        assert batch["energyX"] == ["1,8"] * 3 and not batch["energyHidden"] and batch["note"] == ""
        assert batch["traces"] == [f"recorded-multi-backend · {b}" for b in ("pytorch", "vllm", "tensorrt")]
        assert any(h.startswith("On NVIDIA H100 80GB HBM3, batch 8 uses 0.") for h in batch["headlines"])
        assert batch["rows"] == 6 and batch["studies"] == 2 and batch["svgs"] >= 3
        assert _not_blank(page.screenshot(ARTIFACTS / "site-gpu-batch.png")) > 50

        backend = _choose(page, "pick-setting", "backend", 2)
        assert backend["energyX"] == ["pytorch,vllm,tensorrt"] * 2 and backend["energyX"] != batch["energyX"]
        assert len(backend["headlines"]) == 4 and backend["headlines"] != batch["headlines"]
        assert _not_blank(page.screenshot(ARTIFACTS / "site-gpu-backend.png")) > 50

        cpu = _choose(page, "pick-hardware", "CPU: Hand-built CPU 8-core", 3)
        assert cpu["setting"] == "backend" and cpu["energyHidden"] and CPU_REASON in cpu["note"]
        assert all("energy was not measured" in h for h in cpu["headlines"])
        assert _not_blank(page.screenshot(ARTIFACTS / "site-cpu.png")) > 50
        _choose(page, "pick-hardware", "NVIDIA H100 80GB HBM3", 4)

        # flags and provenance: one click on a row's summary opens them
        opened = page.eval("""(() => { const d = document.querySelector('#configs details');
            d.querySelector('summary').click(); return {open: d.open, text: d.innerText}; })()""")
        assert opened["open"] and "validity warning" in opened["text"] and "llem\n0.1.0 at " in opened["text"]
        assert "NVIDIA H100 80GB HBM3" in opened["text"] and "baseline" in opened["text"]

        assert page.errors() == []
        urls = page.requests()
        assert urls and all(u.startswith(site.as_uri()) for u in urls), urls  # no request leaves the page
        assert {u.rsplit("/", 1)[1] for u in urls} == {"index.html", "data.js", "plotly.min.js", "site.js"}
