"""Property-based tests of study files (hypothesis), on real YAML files through the
real `llem run` command (in-process, for speed):

- every malformed file exits 2 with one message naming the offending key (or, for a
  YAML syntax error, its line), never a traceback, and creates nothing;
- every valid file expands deterministically (the same experiments, ids and plan,
  every time);
- relative paths in a file mean the same files whatever directory llem runs from;
- booleans in integer fields, strings in boolean fields, integers no consumer accepts
  and plans too big to run are refused when the file loads, naming the key or the limit.

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
INT_FIELDS = ["n_prompts", "max_input_tokens", "max_output_tokens", "seed", "measurement.warmup_batches",
              "measurement.max_passes", "pytorch.batch_size", "sampling.top_k", "execution.n_cycles",
              "execution.shuffle_seed", "execution.max_consecutive_failures", "execution.parallel_gpus"]
BOOL_FIELDS = ["ignore_eos", "pytorch.torch_compile", "pytorch.load_in_8bit", "measurement.steady_state"]
STR_FIELDS = ["model_revision", "device", "dataset", "pytorch.dtype", "measurement.energy_source"]
HUGE = st.integers(2**32, 10**40) | st.integers(-10**40, -1)


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if not isinstance(d.get(head), dict):
            d[head] = {}
        _set(d[head], rest, value)
    else:
        d[head] = value


KINDS = [  # hypothesis favours the first: the open-ended fuzz
    "junk_value", "junk_sweep", "unknown_top", "unknown_section", "wrong_type", "junk_value", "sweep_not_list", "sweep_empty_list",
    "sweep_duplicates", "sweep_bad_value", "sweep_unknown_key", "sweep_shape", "experiments_shape",
    "experiment_unknown", "yaml_syntax", "duplicate_key", "not_mapping", "empty_file",
    "other_backend_key", "bool_in_int", "huge_int", "not_a_bool", "number_in_str", "oversized_plan",
    "missing_relative_path",
]
# values that validated once and broke later (issue 17): a test of their own, so that each is drawn every run
LATE_BREAKERS = ["bool_in_int", "huge_int", "not_a_bool", "number_in_str", "oversized_plan", "missing_relative_path"]


@st.composite
def malformed_studies(draw: Any, kinds: list[str] = KINDS) -> tuple[str, list[str], bool]:
    """(file text, substrings one of which the message must contain, whether the
    file may turn out valid after all: for arbitrary values at a known key)."""
    study = draw(valid_studies())
    kind = draw(st.sampled_from(kinds))
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
    elif kind.startswith("sweep_"):
        study["sweep"], expected = _broken_sweep(draw, kind)
    elif kind == "experiments_shape":
        study["experiments"] = draw(st.sampled_from([[], "x", {}, 3, [1, 2], ["x"]]))
        expected = ["experiments"]
    elif kind == "experiment_unknown":
        key = draw(IDENT.filter(lambda k: k not in FIELDS and k not in {"model", "sweep", "name", "seed"}))
        study["experiments"] = [{key: 1}]
        expected = [f"{key}: unknown key"]
    elif kind in ("bool_in_int", "huge_int", "not_a_bool", "number_in_str"):
        field, value, expected = draw(_strict_type_case(kind))
        _set(study, field, value)
        study.pop("sweep", None), study.pop("experiments", None)
    elif kind == "oversized_plan":
        return _oversized(draw, study)
    elif kind == "missing_relative_path":
        name = draw(st.sampled_from(["", "./", "data/", "../"])) + draw(IDENT) + ".jsonl"
        study["dataset"] = name
        expected = [f"dataset: '{name}' is neither a built-in set"]
    elif kind == "other_backend_key":
        study["pytorch"] = {"max_num_seqs": draw(st.integers(1, 8))}
        expected = ["pytorch.max_num_seqs: unknown key for backend pytorch (it is a setting of vllm"]
    else:
        return _broken_text(draw, study, kind)
    return yaml.safe_dump(study, sort_keys=False), expected, maybe_valid


def _broken_sweep(draw: Any, kind: str) -> tuple[Any, list[str]]:
    """(a `sweep:` broken in the way `kind` names, what the message must say)."""
    if kind == "sweep_not_list":
        return {"pytorch.batch_size": draw(st.integers(1, 8))}, ["sweep.pytorch.batch_size: must be a list"]
    if kind == "sweep_empty_list":
        return {draw(st.sampled_from(sorted(AXES))): []}, ["is an empty list"]
    if kind == "sweep_duplicates":
        v = draw(st.integers(1, 8))
        return {"pytorch.batch_size": [v, v]}, ["sweep.pytorch.batch_size: lists a value twice"]
    if kind == "sweep_bad_value":
        return {"pytorch.batch_size": [1, draw(st.sampled_from([-1, 0, "two", 2.5, None, [3], True]))]}, \
            ["pytorch.batch_size"]
    if kind == "sweep_unknown_key":
        key = draw(IDENT.filter(lambda k: k not in {"batch_size", "dtype"}))
        return {f"pytorch.{key}": [1, 2]}, [f"pytorch.{key}"]
    return draw(st.sampled_from([[], "x", {}, 3, None, [{"a": 1}]])), ["sweep"]  # sweep_shape


def _broken_text(draw: Any, study: dict[str, Any], kind: str) -> tuple[str, list[str], bool]:
    """A file broken below the settings: its YAML, its shape, or nothing in it."""
    if kind == "duplicate_key":
        text = yaml.safe_dump(study, sort_keys=False) + f"n_prompts: {draw(st.integers(1, 9))}\n"
        return text, ["key 'n_prompts' appears twice"], False
    if kind == "yaml_syntax":
        text = yaml.safe_dump(study, sort_keys=False)
        broken = draw(st.sampled_from(["model: [unclosed\n", "\tmodel: x\n", "a: b: c\n", "- x\ny: 1\n",
                                       "x: 'open\n", "? [a, b]\n: c\n"]))
        return broken + text, ["not valid YAML at line"], False  # first: nothing can absorb it
    if kind == "not_mapping":
        text = draw(st.sampled_from(["- a\n- b\n", "just a string\n", "42\n", "[1, 2]\n"]))
        return text, ["must be a YAML mapping"], False
    return draw(st.sampled_from(["", "\n\n", "# only a comment\n", "   \n"])), ["is empty", "mapping"], False


@st.composite
def _strict_type_case(draw: Any, kind: str) -> tuple[str, Any, list[str]]:
    """(key, a value of the wrong type or range for it, what the message must say)."""
    if kind == "bool_in_int":
        field = draw(st.sampled_from(INT_FIELDS))
        return field, draw(st.booleans()), [f"{field}: must be an integer, not a boolean"]
    if kind == "huge_int":
        field = draw(st.sampled_from(INT_FIELDS))
        return field, draw(HUGE), [f"{field}: must be an integer from"]
    if kind == "not_a_bool":
        field = draw(st.sampled_from(BOOL_FIELDS))
        value = draw(st.sampled_from(["yes", "no", "true", "on", 1, 0, 1.0, None]))
        return field, value, [f"{field}: must be true or false, not"]
    field = draw(st.sampled_from(STR_FIELDS))
    return field, draw(st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.booleans()), [f"{field}: "]


def _oversized(draw: Any, study: dict[str, Any]) -> tuple[str, list[str], bool]:
    """A plan above a hard limit: too many cycles, sweep points or runs."""
    how = draw(st.sampled_from(["cycles", "points", "runs"]))
    study.pop("experiments", None)
    study["execution"] = {"n_cycles": 1}
    if how == "cycles":
        study["execution"]["n_cycles"] = draw(st.integers(10_001, 10**12))
        return yaml.safe_dump(study, sort_keys=False), ["execution.n_cycles: must be an integer from 1 to 10000"], False
    n = draw(st.integers(47, 80)) if how == "points" else draw(st.integers(22, 46))  # 3 axes: n**3 points
    study["sweep"] = {"seed": list(range(n)), "n_prompts": list(range(1, n + 1)), "max_output_tokens": list(range(1, n + 1))}
    study["execution"]["n_cycles"] = 1 if how == "points" else -(-100_001 // n**3)  # just over the run limit
    expected = "sweep: expands to" if how == "points" else f"runs ({n**3:,} experiments x"
    return yaml.safe_dump(study, sort_keys=False), [expected], False


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
    _exits_2_naming_the_key(case)


@given(malformed_studies(LATE_BREAKERS))
def test_values_that_used_to_break_later_exit_2_at_load(case):
    _exits_2_naming_the_key(case)


def _exits_2_naming_the_key(case: tuple[str, list[str], bool]) -> None:
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


@st.composite
def relative_layouts(draw: Any) -> tuple[str, str, str]:
    """(the study file's folder, its dataset path as written, where llem runs from)."""
    study_dir = draw(st.sampled_from(["", "a", "a/b"]))
    data = draw(st.sampled_from(["p.jsonl", "./p.jsonl", "data/p.jsonl", "./data/../p.jsonl", "../up.jsonl"]))
    if data.startswith("..") and not study_dir:
        study_dir = "a"
    return study_dir, data, draw(st.sampled_from(["root", "study", "elsewhere"]))


@given(relative_layouts())
def test_relative_paths_mean_the_same_files_from_any_directory(layout):
    study_dir, data, run_from = layout
    with tempfile.TemporaryDirectory() as d:
        root = Path(d).resolve()
        folder = root / study_dir
        dataset = (folder / data).resolve()
        for made in (folder, dataset.parent, root / "elsewhere"):
            made.mkdir(parents=True, exist_ok=True)
        dataset.write_text('{"prompt": "x"}\n')
        (folder / "s.yaml").write_text(yaml.safe_dump({"model": "llem/tiny-llama", "dataset": data, "n_prompts": 1}))
        cwd = {"root": root, "study": folder, "elsewhere": root / "elsewhere"}[run_from]
        given = os.path.relpath(folder / "s.yaml", cwd)
        before = os.getcwd()
        try:
            os.chdir(cwd)
            (exp,) = load_study(Path(given)).experiments
        finally:
            os.chdir(before)
        assert exp.config.dataset == str(dataset) and exp.config.dataset_sha256 is not None
        assert exp.id == load_study(folder / "s.yaml").experiments[0].id


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
