"""Property-based tests of study files (hypothesis), on real YAML files through the
real `llem run` command (in-process, for speed):

- every malformed file exits 2 with one message naming the offending key (or, for a
  YAML syntax error, its line), never a traceback, and creates nothing;
- every valid file expands deterministically (the same experiments, ids and plan,
  every time).

Examples per run come from a settings profile: `ci` (default, 150) or `thorough`
(1,000): HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest tests/study/test_study_properties.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llenergymeasure.orchestrator.cli import main
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.plan import order_runs
from llenergymeasure.orchestrator.study.load import load_study
from tests.support.helpers import REPO

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# -- valid study files ------------------------------------------------------------

AXES: dict[str, st.SearchStrategy] = {
    "pytorch.batch_size": st.lists(st.integers(1, 64), min_size=1, max_size=4, unique=True),
    "pytorch.dtype": st.lists(st.sampled_from(["float32", "bfloat16", "float16"]), min_size=1, max_size=3, unique=True),
    "measurement.warmup_batches": st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True),
    "n_prompts": st.lists(st.integers(1, 32), min_size=1, max_size=3, unique=True),
    "seed": st.lists(st.integers(0, 2**31), min_size=1, max_size=3, unique=True),
    "max_output_tokens": st.lists(st.integers(1, 64), min_size=1, max_size=3, unique=True),
    "sampling.temperature": st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=1, max_size=3, unique=True),
}
GROUP = st.lists(
    st.fixed_dictionaries({"pytorch.dtype": st.sampled_from(["float32", "bfloat16"])},
                          optional={"pytorch.attn_implementation": st.sampled_from(["eager", "sdpa"])}),
    min_size=1, max_size=3, unique_by=lambda d: json.dumps(d, sort_keys=True))


@st.composite
def valid_studies(draw: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "model": "llem/tiny-llama",
        "n_prompts": draw(st.integers(1, 16)),
        "max_input_tokens": draw(st.integers(1, 64)),
        "max_output_tokens": draw(st.integers(1, 32)),
    }
    if draw(st.booleans()):
        study["seed"] = draw(st.integers(0, 10**6))
    if draw(st.booleans()):
        study["device"] = draw(st.sampled_from(["auto", "cpu"]))
    if draw(st.booleans()):
        study["measurement"] = {"min_window_s": draw(st.sampled_from([0, 0.5, 5])),
                                "warmup_batches": draw(st.integers(0, 2))}
    if draw(st.booleans()):
        study["pytorch"] = {"batch_size": draw(st.integers(1, 8))}
    keys = draw(st.lists(st.sampled_from(sorted(AXES)), max_size=3, unique=True))
    sweep: dict[str, Any] = {k: draw(AXES[k]) for k in keys}
    if draw(st.booleans()):
        sweep["precision"] = draw(GROUP)
    if sweep:
        study["sweep"] = sweep
    if draw(st.booleans()):
        study["experiments"] = draw(st.lists(
            st.fixed_dictionaries({}, optional={
                "pytorch": st.fixed_dictionaries({"batch_size": st.integers(1, 128)}),
                "n_prompts": st.integers(1, 32), "seed": st.integers(0, 99)}),
            min_size=1, max_size=3))
    if draw(st.booleans()):
        study["execution"] = draw(st.fixed_dictionaries({}, optional={
            "n_cycles": st.integers(1, 4), "order": st.sampled_from(["sequential", "interleaved", "shuffled"]),
            "shuffle_seed": st.integers(0, 99), "run_timeout_s": st.sampled_from([None, 30, 600.5]),
            "stall_timeout_s": st.sampled_from([None, 60]), "max_consecutive_failures": st.sampled_from([None, 1, 5]),
        }))
    return study


# -- malformed study files: a valid one, broken in one place ----------------------

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
FIELDS = ["n_prompts", "max_input_tokens", "max_output_tokens", "seed", "device", "dataset", "backend",
          "model_revision", "measurement.warmup_batches", "measurement.min_window_s",
          "measurement.energy_source", "pytorch.batch_size", "pytorch.dtype", "sampling.top_p",
          "execution.n_cycles", "execution.order", "execution.run_timeout_s", "execution.stall_timeout_s",
          "execution.max_consecutive_failures", "execution.gap_between_runs_s"]
IDENT = st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True)


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if not isinstance(d.get(head), dict):
            d[head] = {}
        _set(d[head], rest, value)
    else:
        d[head] = value


@st.composite
def malformed_studies(draw: Any) -> tuple[str, list[str], bool]:
    """(file text, substrings one of which the message must contain, whether the
    file may turn out valid after all: for arbitrary values at a known key)."""
    study = draw(valid_studies())
    kind = draw(st.sampled_from([  # hypothesis favours the first: the open-ended fuzz
        "junk_value", "junk_sweep", "unknown_top", "unknown_section", "wrong_type", "junk_value", "sweep_not_list", "sweep_empty_list",
        "sweep_duplicates", "sweep_bad_value", "sweep_unknown_key", "sweep_shape", "experiments_shape",
        "experiment_unknown", "yaml_syntax", "duplicate_key", "not_mapping", "empty_file",
        "other_backend_key",
    ]))
    maybe_valid = False
    event(kind)
    if kind == "unknown_top":
        key = draw(IDENT.filter(lambda k: k not in {*FIELDS, "sweep", "experiments", "execution", "name",
                                                    "measurement", "pytorch", "vllm", "tensorrt", "sampling",
                                                    "model", "lora_adapter", "ignore_eos", "seed"}))
        study[key] = draw(JUNK)
        expected = [f"{key}: unknown key"]
    elif kind == "unknown_section":
        section = draw(st.sampled_from(["measurement", "pytorch", "execution", "sampling"]))
        key = draw(IDENT.filter(lambda k: k not in {"batch_size", "dtype", "order", "seed", "top_p", "top_k",
                                                    "temperature", "steady_state", "baseline_s"}))
        _set(study, f"{section}.{key}", 1)
        expected = [f"{section}.{key}: unknown key"]
    elif kind == "wrong_type":
        field = draw(st.sampled_from(["n_prompts", "max_output_tokens", "execution.n_cycles", "pytorch.batch_size"]))
        _set(study, field, draw(st.sampled_from(["many", [1, 2], {"a": 1}, -5, 0, None, "1e9x"])))
        study.pop("sweep", None), study.pop("experiments", None)
        expected = [field]
    elif kind == "junk_value":
        field = draw(st.sampled_from(FIELDS))
        _set(study, field, draw(JUNK))
        study.pop("sweep", None), study.pop("experiments", None)
        expected, maybe_valid = [field, field.split(".")[0]], True
    elif kind == "junk_sweep":
        axis = draw(st.sampled_from(sorted(AXES) + ["pytorch", "precision", "execution.n_cycles"]))
        study["sweep"] = {axis: draw(JUNK)}
        study.pop("experiments", None)
        expected, maybe_valid = [axis, "sweep"], True
    elif kind == "sweep_not_list":
        study["sweep"] = {"pytorch.batch_size": draw(st.integers(1, 8))}
        expected = ["sweep.pytorch.batch_size: must be a list"]
    elif kind == "sweep_empty_list":
        study["sweep"] = {draw(st.sampled_from(sorted(AXES))): []}
        expected = ["is an empty list"]
    elif kind == "sweep_duplicates":
        v = draw(st.integers(1, 8))
        study["sweep"] = {"pytorch.batch_size": [v, v]}
        expected = ["sweep.pytorch.batch_size: lists a value twice"]
    elif kind == "sweep_bad_value":
        bad = draw(st.sampled_from([-1, 0, "two", 2.5, None, [3]]))
        study["sweep"] = {"pytorch.batch_size": [1, bad]}
        expected = ["pytorch.batch_size"]
    elif kind == "sweep_unknown_key":
        key = draw(IDENT.filter(lambda k: k not in {"batch_size", "dtype"}))
        study["sweep"] = {f"pytorch.{key}": [1, 2]}
        expected = [f"pytorch.{key}"]
    elif kind == "sweep_shape":
        study["sweep"] = draw(st.sampled_from([[], "x", {}, 3, None, [{"a": 1}]]))
        expected = ["sweep"]
    elif kind == "experiments_shape":
        study["experiments"] = draw(st.sampled_from([[], "x", {}, 3, [1, 2], ["x"]]))
        expected = ["experiments"]
    elif kind == "experiment_unknown":
        key = draw(IDENT.filter(lambda k: k not in FIELDS and k not in {"model", "sweep", "name", "seed"}))
        study["experiments"] = [{key: 1}]
        expected = [f"{key}: unknown key"]
    elif kind == "other_backend_key":
        study["pytorch"] = {"max_num_seqs": draw(st.integers(1, 8))}
        expected = ["pytorch.max_num_seqs: unknown key for backend pytorch (it is a setting of vllm"]
    elif kind == "duplicate_key":
        text = yaml.safe_dump(study, sort_keys=False) + f"n_prompts: {draw(st.integers(1, 9))}\n"
        return text, ["key 'n_prompts' appears twice"], False
    elif kind == "yaml_syntax":
        text = yaml.safe_dump(study, sort_keys=False)
        broken = draw(st.sampled_from(["model: [unclosed\n", "\tmodel: x\n", "a: b: c\n", "- x\ny: 1\n",
                                       "x: 'open\n", "? [a, b]\n: c\n"]))
        return broken + text, ["not valid YAML at line"], False  # first: nothing can absorb it
    elif kind == "not_mapping":
        text = draw(st.sampled_from(["- a\n- b\n", "just a string\n", "42\n", "[1, 2]\n"]))
        return text, ["must be a YAML mapping"], False
    else:  # empty_file
        return draw(st.sampled_from(["", "\n\n", "# only a comment\n", "   \n"])), ["is empty", "mapping"], False
    return yaml.safe_dump(study, sort_keys=False), expected, maybe_valid


# -- the properties -----------------------------------------------------------------

def _expansion(path: Path) -> list[tuple]:
    s = load_study(path)
    ex = s.execution
    plan = order_runs(len(s.experiments), ex.n_cycles, ex.order, ex.shuffle_seed)
    return [(e.id, e.label, e.origin, json.dumps(e.swept, sort_keys=True, default=str)) for e in s.experiments] + \
        [(r.run_id, r.experiment_index, r.cycle, r.position) for r in plan]


@given(valid_studies())
def test_valid_study_files_expand_deterministically(study):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        first = _expansion(path)
        assert first and first == _expansion(path)


@given(malformed_studies())
def test_malformed_study_files_exit_2_naming_the_key(case):
    text, expected, maybe_valid = case
    with tempfile.TemporaryDirectory() as d:
        path, out = Path(d) / "bad.yaml", Path(d) / "out"
        path.write_text(text)
        try:
            load_study(path)
        except UserError:
            pass
        else:
            assert maybe_valid, f"accepted a malformed file:\n{text}"
            event("junk value turned out valid")
            return
        r = CliRunner().invoke(main, ["run", str(path), "--runner", "local", "-o", str(out)])
        assert r.exit_code == 2, (r.exit_code, r.output, text)
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
        assert "Traceback" not in r.output
        assert any(e in r.output for e in expected), (expected, r.output, text)
        assert not out.exists()  # nothing half-written


def test_expansion_does_not_depend_on_the_hash_seed(tmp_path):
    """Two fresh interpreters with different hash seeds expand a study identically."""
    f = tmp_path / "s.yaml"
    f.write_text("""
model: llem/tiny-llama
sweep:
  pytorch.batch_size: [1, 2, 4]
  precision: [{pytorch.dtype: float32}, {pytorch.dtype: bfloat16, pytorch.attn_implementation: eager}]
  seed: [1, 2]
experiments: [{n_prompts: 3}, {pytorch: {batch_size: 16}}]
execution: {order: shuffled, shuffle_seed: 7, n_cycles: 2}
""")
    code = ("import json, sys; from pathlib import Path; from tests.study.test_study_properties import _expansion; "
            "print(json.dumps(_expansion(Path(sys.argv[1]))))")
    outs = {subprocess.run([sys.executable, "-c", code, str(f)], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("0", "4242")}
    assert len(outs) == 1 and json.loads(outs.pop())


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
