"""`llem site ARCHIVE -o DIR`: a static explorer of an archive for readers who will
never run a study: pick a model, hardware and a setting, and see what the setting does
to energy per token, throughput and latency, with 95% intervals, validity flags and
provenance one click away, and every study listed with its environment.

One folder: index.html, site.js (the page's code), data.js (the archive's figures) and
plotly.min.js, copied from the pinned `plotly` wheel at build time. It opens from
file:// or any static host and fetches nothing from the network.

All figures and sentences are computed here, in Python, with the same statistics as
`llem results` (analysis/stats.py): the page only filters and draws them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from llenergymeasure.backends import __version__
from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.analysis import stats
from llenergymeasure.orchestrator.analysis.summary import ENERGY, LATENCY, THROUGHPUT
from llenergymeasure.orchestrator.archive.layout import existing_archive, is_remote
from llenergymeasure.orchestrator.archive.query import open_archive
from llenergymeasure.orchestrator.archive.schema import SCHEMA_VERSION
from llenergymeasure.orchestrator.archive.tables import BATCH_KEYS
from llenergymeasure.orchestrator.errors import UserError

TEMPLATES = Path(__file__).parent / "templates"
BATCH_AXIS = "batch_size"
# what the page charts: key -> (column, title, unit, higher is better)
METRICS = {
    "energy": (ENERGY, "Energy per output token", "J", False),
    "throughput": (THROUGHPUT, "Output throughput", "tokens/s", True),
    "latency": (LATENCY, "Time to first token (median)", "ms", False),
}
NOUNS = {"energy": "the energy per output token", "throughput": "the output throughput",
         "latency": "the median time to first token"}


def plotly_js() -> bytes:
    """plotly.js as the pinned `plotly` wheel ships it."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise UserError("llem site needs the plotly package (pinned in requirements.lock): run `make setup`") from None
    return get_plotlyjs().encode("utf-8")


# -- words ------------------------------------------------------------------------------

def axis_label(axis: str) -> str:
    """The setting's name for a reader (the batch size: each backend's own batching setting,
    BATCH_KEYS, which the configuration labels name)."""
    return "batch size" if axis == BATCH_AXIS else axis


def value_text(axis: str, value: Any) -> str:
    if axis == BATCH_AXIS:
        return f"batch {value}"
    if axis == "backend":
        return str(value)
    return f"{axis}={value}"


def _ci(r: stats.Interval) -> str:
    if r.low is None or r.high is None:
        return " (no interval: fewer than 2 finished cycles on one side)"
    text = f" (95% CI {r.low:.2f}–{r.high:.2f})"
    return text + (", not distinguishable from no change" if r.excludes(1.0) is False else "")


def headline(hardware: str, axis: str, base: Any, top: Any, ratios: dict[str, stats.Interval],
             energy_reason: str | None) -> str:
    """The effect of moving `axis` from `base` to `top`, in plain words."""
    e, t = ratios.get("energy"), ratios.get("throughput")
    x, b = value_text(axis, top), value_text(axis, base)
    if e is not None and e.estimate is not None:
        text = f"On {hardware}, {x} uses {e.estimate:.2f}x the energy per output token of {b}{_ci(e)}"
        if t is not None and t.estimate is not None:
            text += f", and gives {t.estimate:.2f}x the output throughput{_ci(t)}"
        return text + "."
    why = f" ({energy_reason})" if energy_reason else ""
    text = f"On {hardware}, energy was not measured{why}, so throughput stands in: "
    if t is None or t.estimate is None:
        return text + f"{x} and {b} have no comparable result."
    return text + f"{x} gives {t.estimate:.2f}x the output throughput of {b}{_ci(t)}."


# -- data --------------------------------------------------------------------------------

def _num(v: Any) -> Any:
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _records(con: Any, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [{k: _num(v) for k, v in zip(names, row, strict=True)} for row in cur.fetchall()]


CONFIG_SQL = f"""
select study_id, experiment_index,
       any_value(label) label, any_value(model) model, any_value(hardware) hardware, any_value(backend) backend,
       any_value(dtype) dtype, any_value(batch_size) batch_size, any_value(swept_json) swept_json,
       any_value(settings_json) settings_json, any_value(flags) flags, any_value(is_reference) is_reference,
       any_value(runs_done) runs_done, any_value(runs_planned) runs_planned, any_value(runs_failed) runs_failed,
       any_value(energy_source) energy_source, any_value(energy_unavailable_reason) energy_unavailable_reason,
       any_value(environment_id) environment_id,
       {", ".join(f"max({s}) filter (where metric = '{col}') {key}_{s}" for key, (col, *_) in METRICS.items()
                  for s in ("mean", "ci95_low", "ci95_high", "n", "ratio", "ratio_ci95_low", "ratio_ci95_high"))}
from summary group by study_id, experiment_index order by study_id, experiment_index
"""
RUNS_SQL = f"""
select study_id, experiment_index, {", ".join(f"list({col}) {key}" for key, (col, *_) in METRICS.items())}
from runs where status = 'done' group by study_id, experiment_index
"""


def _axes(study: dict[str, Any]) -> list[str]:
    """The study's swept settings, with each backend's batching setting as one axis."""
    keys = json.loads(study["swept_keys_json"])
    out = []
    for k in keys:
        k = BATCH_AXIS if k in BATCH_KEYS.values() else k
        if k not in out:
            out.append(k)
    return out


def _setting(config: dict[str, Any], axis: str) -> Any:
    if axis == BATCH_AXIS:
        return config["batch_size"]
    return json.loads(config["swept_json"]).get(axis)


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class _Group:
    study: str
    axis: str
    others: tuple
    configs: list[dict[str, Any]]


def _groups(configs: list[dict[str, Any]], studies: dict[str, dict[str, Any]]) -> list[_Group]:
    """Per study and axis: configurations that differ in that axis alone (the other axes equal)."""
    out = []
    by_study: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in configs:
        by_study[c["study_id"]].append(c)
    for sid, mine in by_study.items():
        axes = _axes(studies[sid])
        for axis in axes:
            buckets: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
            for c in mine:
                v = _setting(c, axis)
                if v is None:
                    continue
                others = tuple((a, _setting(c, a)) for a in axes if a != axis)
                buckets[(c["model"], c["hardware"], others)].append(c)
            for (_, _, others), group in buckets.items():
                values = {json.dumps(_setting(c, axis)) for c in group}
                if len(values) >= 2:  # numbers in order, anything else in the study's order
                    numbers = all(_numeric(_setting(c, axis)) for c in group)
                    key = ((lambda c, a=axis: (_setting(c, a), 0)) if numbers  # type: ignore[misc]
                           else (lambda c: (0, c["experiment_index"])))
                    out.append(_Group(sid, axis, others, sorted(group, key=key)))
    return out


RATIOS = ("energy", "throughput")  # the ratios the page states (latency is charted, not stated)


def _ratio(c: dict[str, Any], base: dict[str, Any], metric: str, per_run: dict[tuple, dict[str, list]],
           ) -> stats.Interval:
    """c's mean over base's, with its 95% interval: the study summary's own ratio when the
    base is the study's reference configuration, else the same statistic from the runs."""
    if base["is_reference"]:
        return stats.Interval(*(c[f"{metric}_{s}"] for s in ("ratio", "ratio_ci95_low", "ratio_ci95_high")))
    runs = [per_run.get((x["study_id"], x["experiment_index"]), {}).get(metric) or [] for x in (c, base)]
    return stats.ratio(*runs)


def _effects(groups: list[_Group], per_run: dict[tuple, dict[str, list]], studies: dict[str, dict[str, Any]],
             ) -> list[dict[str, Any]]:
    out = []
    for g in groups:
        ref = [c for c in g.configs if c["is_reference"]]
        base = ref[0] if ref else g.configs[0]
        # a number: its far end against the baseline; a category (backend): every other value
        ends = [c for c in g.configs if c is not base]
        tops = [ends[-1]] if all(_numeric(_setting(c, g.axis)) for c in g.configs) else ends
        ratios = {c["key"]: {m: _ratio(c, base, m, per_run) for m in RATIOS} for c in g.configs}
        energy_reason = next((c["energy_unavailable_reason"] for c in g.configs if c["energy_unavailable_reason"]), None)
        context = ", ".join(value_text(a, v) for a, v in g.others if v is not None)
        where = f" [{studies[g.study]['study_name']}{'; ' + context if context else ''}]"
        sentences = [headline(base["hardware"], g.axis, _setting(base, g.axis), _setting(top, g.axis),
                              ratios[top["key"]], energy_reason) + where for top in tops]
        out.append({
            "study": g.study, "axis": g.axis, "model": base["model"], "hardware": base["hardware"],
            "others": context, "base": base["key"], "configs": [c["key"] for c in g.configs],
            "x": [_setting(c, g.axis) for c in g.configs],
            "headlines": sentences,
            "ratios": {k: {m: [r.estimate, r.low, r.high] for m, r in v.items()} for k, v in ratios.items()},
        })
    return out


def _study_entry(s: dict[str, Any], envs: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    keep = ("study_id", "study_name", "source_dir_name", "created_at", "status", "partial", "publication",
            "lock_sha256", "reproduces", "runner", "tool_version", "tool_commit", "n_experiments", "n_cycles",
            "n_runs_planned", "n_runs_done", "n_runs_failed", "energy_measured")
    env_keep = ("environment_id", "hardware", "gpu_driver", "cuda_version", "cpu_model", "cpu_count", "memory_total_gb",
                "platform", "kernel", "python_version", "torch_version", "transformers_version", "vllm_version",
                "tensorrt_llm_version", "image_ref", "image_id", "image_digests", "tool_commit", "n_runs")
    hardware = [e["hardware"] + (f" (driver {e['gpu_driver']})" if e.get("gpu_driver") else "") for e in envs]
    return {**{k: s.get(k) for k in keep}, "hardware": list(dict.fromkeys(hardware)), "settings": settings,
            "environments": [{k: e.get(k) for k in env_keep} for e in envs]}


def site_data(con: Any) -> dict[str, Any]:
    """Everything the page shows, from the archive's views."""
    studies = {s["study_id"]: s for s in _records(con, "select * from studies order by created_at, study_id")}
    envs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in _records(con, "select * from environment order by study_id, n_runs desc"):
        envs[e["study_id"]].append(e)
    configs = _records(con, CONFIG_SQL)
    per_run = {(r["study_id"], r["experiment_index"]): r for r in _records(con, RUNS_SQL)}
    for c in configs:
        c["key"] = f"{c['study_id']}/{c['experiment_index']}"
        c["hardware"] = c["hardware"] or "unknown hardware"
    common = _common_settings(configs)
    groups = _groups(configs, studies)
    effects = _effects(groups, per_run, studies)
    axes = sorted({g.axis for g in groups})
    return {
        "generated_at": utc_now(), "tool_version": __version__, "schema_version": SCHEMA_VERSION,
        "metrics": {k: {"column": col, "title": title, "unit": unit, "higher_is_better": higher}
                    for k, (col, title, unit, higher) in METRICS.items()},
        "axes": {a: axis_label(a) for a in axes},
        "studies": [_study_entry(s, envs[sid], common.get(sid, {})) for sid, s in studies.items()],
        "configs": {c["key"]: _config_entry(c, common.get(c["study_id"], {})) for c in configs},
        "effects": effects,
    }


def _common_settings(configs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per study, the settings all its configurations share: shipped once, not per configuration."""
    out: dict[str, dict[str, Any]] = {}
    for c in configs:
        mine = json.loads(c["settings_json"])
        have = out.get(c["study_id"])
        out[c["study_id"]] = mine if have is None else {k: v for k, v in have.items() if k in mine and mine[k] == v}
    return out


def _config_entry(c: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    return {
        "study": c["study_id"], "label": c["label"], "model": c["model"], "hardware": c["hardware"],
        "backend": c["backend"], "dtype": c["dtype"], "is_reference": bool(c["is_reference"]),
        "runs": [c["runs_done"], c["runs_planned"], c["runs_failed"]], "energy_source": c["energy_source"],
        "energy_unavailable_reason": c["energy_unavailable_reason"], "environment": c["environment_id"],
        "flags": [f for f in (c["flags"] or "").split("; ") if f],
        "settings": {k: v for k, v in json.loads(c["settings_json"]).items() if k not in common},
        "metrics": {k: [c[f"{k}_mean"], c[f"{k}_ci95_low"], c[f"{k}_ci95_high"], c[f"{k}_n"]] for k in METRICS},
    }


# -- writing ------------------------------------------------------------------------------

def _page(data: dict[str, Any], studies: list[dict[str, Any]]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("site.html.j2").render(data=data, studies=studies)


def build_site(archive: str | Path | None, out: Path) -> Path:
    """Write the explorer of `archive` (local, or remote: hf://...) into `out`; the path of its index.html."""
    out = Path(out)
    if archive is None or not is_remote(archive):
        root = existing_archive(archive).root.resolve()
        if out.resolve() == root or root in out.resolve().parents:
            raise UserError(f"-o {out}: inside the archive; write the site somewhere else")
        archive = root
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "site.js").is_file():
        raise UserError(f"-o {out}: a folder with other files in it; give a new or empty folder "
                        "(or one an earlier `llem site` wrote, which is rewritten)")
    con = open_archive(archive)
    try:
        data = site_data(con)
    finally:
        con.close()
    if not data["studies"]:
        raise UserError(f"{archive}: the archive holds no study yet; add one with `llem archive add`")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "plotly.min.js", plotly_js())
    write_bytes_atomic(out / "site.js", (TEMPLATES / "site.js").read_bytes())
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    write_bytes_atomic(out / "data.js", f"window.LLEM_SITE = {payload};\n".encode("utf-8"))
    write_bytes_atomic(out / "index.html", _page(data, data["studies"]).encode("utf-8"))
    return out / "index.html"
