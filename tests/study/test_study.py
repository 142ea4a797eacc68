"""Study files: expansion grammar and validation, on real YAML files."""

from pathlib import Path

import pytest

from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.load import load_study
from tests.support.helpers import write

BASE = """
model: llem/tiny-llama
n_prompts: 4
max_input_tokens: 16
max_output_tokens: 4
"""


def study(tmp_path: Path, body: str, name: str = "s.yaml"):
    return load_study(write(tmp_path / name, BASE + body))


def settings(s):
    return [e.swept for e in s.experiments]


def test_axes_are_crossed(tmp_path):
    s = study(tmp_path, """
sweep:
  pytorch.batch_size: [1, 2, 4]
  pytorch.dtype: [float32, bfloat16]
""")
    assert len(s.experiments) == 6
    combos = {(e.config.pytorch.batch_size, e.config.pytorch.dtype) for e in s.experiments}
    assert combos == {(b, d) for b in (1, 2, 4) for d in ("float32", "bfloat16")}
    assert s.is_study and s.execution.n_cycles == 3  # study default


def test_nested_mapping_is_the_same_as_dotted_keys(tmp_path):
    a = study(tmp_path, "sweep:\n  pytorch:\n    batch_size: [1, 2]\n", "a.yaml")
    b = study(tmp_path, "sweep:\n  pytorch.batch_size: [1, 2]\n", "b.yaml")
    assert [e.id for e in a.experiments] == [e.id for e in b.experiments]


def test_dotted_key_addresses_non_backend_section(tmp_path):
    s = study(tmp_path, "sweep:\n  measurement.warmup_batches: [0, 2]\n")
    assert [e.config.measurement.warmup_batches for e in s.experiments] == [0, 2]


def test_backend_scoped_keys_apply_only_to_their_backend(tmp_path):
    s = study(tmp_path, """
pytorch:
  dtype: float32
sweep:
  backend: [pytorch, vllm]
  pytorch.batch_size: [1, 2]
  vllm.max_num_seqs: [8, 16, 32]
""")
    by_backend = {}
    for e in s.experiments:
        by_backend.setdefault(e.config.backend, []).append(e)
    assert len(by_backend["pytorch"]) == 2 and len(by_backend["vllm"]) == 3
    for e in by_backend["vllm"]:
        assert e.config.pytorch is None and "pytorch.batch_size" not in e.swept
    # the shared pytorch section configures pytorch points only
    assert all(e.config.pytorch.dtype == "float32" for e in by_backend["pytorch"])


def test_group_of_dependent_settings(tmp_path):
    s = study(tmp_path, """
sweep:
  pytorch.batch_size: [1, 4]
  precision:
    - {pytorch.dtype: float32}
    - {pytorch.dtype: bfloat16, pytorch.attn_implementation: eager}
""")
    assert len(s.experiments) == 4
    eager = [e for e in s.experiments if e.config.pytorch.attn_implementation == "eager"]
    assert {e.config.pytorch.dtype for e in eager} == {"bfloat16"}


def test_group_under_a_section_is_relative_to_it(tmp_path):
    s = study(tmp_path, """
sweep:
  pytorch:
    - {batch_size: 2, dtype: float32}
    - {batch_size: 8, torch_compile: true}
""")
    assert [(e.config.pytorch.batch_size, e.config.pytorch.torch_compile) for e in s.experiments] == [
        (2, False), (8, True)]


def test_explicit_experiments_are_added_to_the_sweep(tmp_path):
    s = study(tmp_path, """
sweep:
  pytorch.batch_size: [1, 2]
experiments:
  - {n_prompts: 8, pytorch: {batch_size: 4}}
  - {pytorch: {batch_size: 1}}   # same as a sweep point: run once
""")
    assert len(s.experiments) == 3
    assert s.experiments[2].config.n_prompts == 8
    assert any("duplicates experiment 1" in n for n in s.notes)


def test_single_experiment_file(tmp_path):
    s = study(tmp_path, "pytorch: {batch_size: 2}\n")
    assert not s.is_study and len(s.experiments) == 1 and s.execution.n_cycles == 1


def test_cycles_override(tmp_path):
    s = load_study(write(tmp_path / "x.yaml", BASE + "sweep: {pytorch.batch_size: [1]}\n"), cycles=5)
    assert s.execution.n_cycles == 5


@pytest.mark.parametrize("body, expected", [
    ("sweep:\n  pytorch.batch_size: [1, 0, 2]\n",
     "pytorch.batch_size: must be an integer from 1 to 1000000 (got 0) (from pytorch.batch_size=0)"),
    ("sweep:\n  pytorch.dtype: [float32, float8]\n", "(from pytorch.dtype=float8)"),
    ("sweep:\n  pytorch.batchsize: [1, 2]\n",
     "pytorch.batchsize: unknown key (did you mean 'batch_size'?)"),
    ("sweep:\n  pytorch.batch_size: 4\n", "sweep.pytorch.batch_size: must be a list of values"),
    ("pytorch: {max_num_seqs: 8}\n",
     "pytorch.max_num_seqs: unknown key for backend pytorch (it is a setting of vllm; put it in that section)"),
    ("backend: tensorrt\nlora_adapter: /a\n", "a LoRA adapter must be merged first"),
    ("sweep:\n  pytorch.batch_size: []\n", "sweep.pytorch.batch_size: is an empty list"),
    ("sweep:\n  pytorch.batch_size: [1, 1]\n", "lists a value twice"),
    ("sweep:\n  vllm.max_num_seqs: [8]\n", "sweep.vllm.max_num_seqs: applies to a backend that no experiment uses"),
    ("sweep: {}\n", "sweep: must be a mapping"),
    ("seed: many\nsweep:\n  pytorch.batch_size: [1, 2]\n", "seed: must be an integer, not a string (got 'many')"),
    ("n_prompts: 8\n", "key 'n_prompts' appears twice (first at line 3)"),  # BASE sets it too
    ("sweep: {" + ", ".join(f"x{i}: [1, 2]" for i in range(17)) + "}\n", "the limit is 100,000"),  # 2^17 points
    ("batch_size: 3\n", "batch_size: unknown key"),
    ("execution: {n_cycles: 0}\nsweep: {pytorch.batch_size: [1]}\n", "execution.n_cycles"),
    ("execution: {order: random}\nsweep: {pytorch.batch_size: [1]}\n", "execution.order"),
    ("experiments: []\n", "experiments: must be a non-empty list"),
    ("experiments:\n  - {pytorch: {batch_size: -1}}\n", "(from experiments[0])"),
    ("name: 'bad name!'\nsweep: {pytorch.batch_size: [1]}\n", "name: must be letters"),
])
def test_invalid_points_are_named(tmp_path, body, expected):
    with pytest.raises(UserError) as e:
        study(tmp_path, body)
    assert expected in str(e.value)


def test_shared_field_error_is_reported_once(tmp_path):
    with pytest.raises(UserError) as e:
        study(tmp_path, "sampling: {top_k: -1}\nsweep:\n  pytorch.batch_size: [1, 2, 4]\n")
    msg = str(e.value)
    assert msg.count("sampling.top_k") == 1 and "(in every experiment)" in msg


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(UserError, match="not valid YAML at line 3"):
        load_study(write(tmp_path / "bad.yaml", "model: x\nseed: 1\n  n_prompts: 3\n"))


def test_non_mapping_yaml(tmp_path):
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_study(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
