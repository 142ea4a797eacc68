"""Study files that used to pass loading and break later (issue 17, "Reliability II"):
relative paths, values no consumer accepts, sizes refused only after printing them,
sections checked only by the runner that reads them, confusing names and dataset errors.
Each is refused (or made to work) when the file loads, with one message naming the key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
import yaml
from annotated_types import Le, Lt

from llenergymeasure.backends.config import ExperimentConfig, MeasurementConfig, SamplingConfig
from llenergymeasure.backends.gpu_settings import GpuSettings
from llenergymeasure.backends.hashing import sha256_file
from llenergymeasure.backends.table import TABLE
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.analysis_section import Analysis, Costs
from llenergymeasure.orchestrator.study.load import load_study
from llenergymeasure.orchestrator.study.slurm_section import SlurmSettings
from llenergymeasure.orchestrator.study.spec import Execution, Publication
from llenergymeasure.orchestrator.study.sweep import count_points, expand, parse_axes
from llenergymeasure.orchestrator.study.user_config import UserConfig
from tests.support.helpers import llem, write

BASE = "model: llem/tiny-llama\nn_prompts: 2\nmax_input_tokens: 16\nmax_output_tokens: 4\n"
PROMPTS = "".join(json.dumps({"prompt": f"prompt number {i}"}) + "\n" for i in range(4))


def refused(tmp_path: Path, name: str, text: str | bytes, *args: str) -> str:
    """Run `llem run FILE --runner local` on a bad file: exit 2, no traceback, nothing written."""
    f = tmp_path / name
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "results"
    r = llem("run", str(f), "--runner", "local", "-o", str(out), *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not out.exists()
    return r.stderr


# -- 1. relative paths are relative to the study file ---------------------------------

def _sub_layout(tmp_path: Path, model_dir: Path | None = None) -> Path:
    """tmp/sub/{rel.yaml, prompts.jsonl, mymodel/}: the study names both relatively."""
    sub = tmp_path / "sub"
    write(sub / "prompts.jsonl", PROMPTS)
    if model_dir is None:
        write(sub / "mymodel" / "config.json", "{}")
    else:
        (sub / "mymodel").symlink_to(model_dir, target_is_directory=True)
    return write(sub / "rel.yaml", """\
model: mymodel
dataset: prompts.jsonl
n_prompts: 2
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0, warmup_batches: 0}
execution: {n_cycles: 1}
""")


def test_relative_paths_are_read_from_the_study_files_directory(tmp_path, monkeypatch):
    study = _sub_layout(tmp_path)
    sub = study.parent
    write(sub / "more" / "other.jsonl", PROMPTS + json.dumps({"prompt": "one more"}) + "\n")
    write(sub / "adapter" / "adapter_config.json", "{}")
    study.write_text(study.read_text() + """\
sweep: {dataset: [prompts.jsonl, more/other.jsonl]}
experiments:
  - {dataset: ./more/../prompts.jsonl, n_prompts: 3}
  - {backend: vllm, lora_adapter: adapter}
""")
    loaded = []
    for cwd, given in ((tmp_path, Path("sub/rel.yaml")), (sub, Path("rel.yaml")), (tmp_path.parent, study)):
        monkeypatch.chdir(cwd)
        loaded.append(load_study(given))
    assert [[e.id for e in s.experiments] for s in loaded] == [[e.id for e in loaded[0].experiments]] * 3
    cfgs = [e.config for e in loaded[0].experiments]
    assert {c.model for c in cfgs} == {str((sub / "mymodel").resolve())}
    assert [c.dataset for c in cfgs] == [str((sub / p).resolve()) for p in
                                          ("prompts.jsonl", "more/other.jsonl", "prompts.jsonl", "prompts.jsonl")]
    assert [c.dataset_sha256 for c in cfgs] == [sha256_file(Path(c.dataset)) for c in cfgs]
    assert cfgs[3].lora_adapter == str((sub / "adapter").resolve())
    assert loaded[0].experiments[0].label == "dataset=prompts.jsonl"  # labels keep what was written


def test_the_dataset_files_content_is_part_of_the_configuration(tmp_path):
    study = _sub_layout(tmp_path)
    first = load_study(study).experiments[0].id
    assert load_study(study).experiments[0].id == first
    write(study.parent / "prompts.jsonl", PROMPTS.replace("number", "no."))
    assert load_study(study).experiments[0].id != first  # another file at the same path


def test_builtin_names_and_hub_ids_are_left_alone(tmp_path):
    s = load_study(write(tmp_path / "s.yaml", BASE + "sweep: {model: [llem/tiny-llama, org/name]}\n"))
    assert [e.config.model for e in s.experiments] == ["llem/tiny-llama", "org/name"]
    assert {(e.config.dataset, e.config.dataset_sha256) for e in s.experiments} == {("synthetic", None)}


def test_a_copy_of_the_file_elsewhere_reads_the_originals_paths_given_its_directory(tmp_path):
    """What --resume from a study directory's copy needs (the copy sits beside no dataset)."""
    study = _sub_layout(tmp_path)
    original = load_study(study)
    copy = write(tmp_path / "results" / "rel.yaml", study.read_text())
    assert [e.id for e in load_study(copy, base_dir=original.base_dir).experiments] == [original.experiments[0].id]
    with pytest.raises(UserError, match=r"dataset: 'prompts.jsonl' is neither .* relative to the study file's"):
        load_study(copy)


def test_a_missing_dataset_file_is_refused_at_load_naming_the_rule(tmp_path):
    err = refused(tmp_path, "s.yaml", BASE + "dataset: prompts.jsonl\n")
    assert "dataset: 'prompts.jsonl' is neither a built-in set" in err
    assert f"{tmp_path / 'prompts.jsonl'} does not exist" in err and "relative to the study file's directory" in err


def test_a_model_directory_next_to_the_working_directory_is_explained(tmp_path, monkeypatch):
    study = _sub_layout(tmp_path)
    (study.parent / "mymodel").rename(tmp_path / "mymodel")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"model: 'mymodel' is a directory in the working directory but not next "
                                        r"to the study file .*: write model: \.\./mymodel"):
        load_study(Path("sub/rel.yaml"))


@pytest.mark.slow
def test_relative_paths_run_from_any_directory(tmp_path, tiny_model):
    study = _sub_layout(tmp_path, model_dir=tiny_model)
    for cwd, given, out in ((tmp_path, "sub/rel.yaml", "out-above"), (study.parent, "rel.yaml", "../out-inside")):
        r = llem("run", given, "--runner", "local", "-o", out, cwd=cwd)
        assert r.returncode == 0, r.stdout + r.stderr
        (study_dir,) = (cwd / out).resolve().iterdir()
        manifest = json.loads((study_dir / "manifest.json").read_text())
        assert [run["state"] for run in manifest["runs"]] == ["done"]
        config = manifest["experiments"][0]["config"]
        assert config["dataset"] == str(study.parent / "prompts.jsonl")
        assert config["dataset_sha256"] == sha256_file(study.parent / "prompts.jsonl")
        # the copy in the study directory means the same files when a resume loads it again
        assert manifest["study_base_dir"] == str(study.parent)
        r = llem("run", "--resume", str(study_dir), "--dry-run", cwd=tmp_path)
        assert r.returncode == 0 and "resume would run: nothing" in r.stdout, r.stdout + r.stderr


# -- 4. values that pass validation and break later ----------------------------------

@pytest.mark.parametrize("body, expected", [
    ("seed: 99999999999999999999999\n", "seed: must be an integer from 0 to 4294967295 (got 99999999999999999999999)"),
    ("seed: -1\n", "seed: must be an integer from 0 to 4294967295 (got -1)"),
    ("pytorch: {batch_size: true}\n", "pytorch.batch_size: must be an integer, not a boolean (got True)"),
    ("sweep: {pytorch.batch_size: [true, 1, 2]}\n",
     "pytorch.batch_size: must be an integer, not a boolean (got True) (from pytorch.batch_size=true)"),
    ("pytorch: {torch_compile: 'yes'}\n", "pytorch.torch_compile: must be true or false, not a string (got 'yes')"),
    ("ignore_eos: 1\n", "ignore_eos: must be true or false, not an integer (got 1)"),
    ("model_revision: 1234567\n", "model_revision: must be a string, not an integer (got 1234567); write it in quotes"),
    ("measurement: {warmup_batches: 2.0}\n", "measurement.warmup_batches: must be an integer, not a decimal number (got 2.0)"),
    ("measurement: {max_passes: 10000001}\n", "measurement.max_passes: must be an integer from 1 to 1000000"),
    ("sampling: {top_k: 2.5}\n", "sampling.top_k: must be an integer, not a decimal number"),
    ("measurement: {min_window_s: .inf}\n", "measurement.min_window_s: must be a finite number"),
    ("measurement: {baseline_s: 1.0e+300}\n", "measurement.baseline_s: must be a number from 0 to 2592000"),
    ("backend: vllm\nvllm: {tensor_parallel_size: 4096}\n", "vllm.tensor_parallel_size: must be an integer from 1 to 1024"),
    ("backend: tensorrt\ntensorrt: {max_batch_size: false}\n", "tensorrt.max_batch_size: must be an integer, not a boolean"),
    ("execution: {shuffle_seed: true}\n", "execution.shuffle_seed: must be an integer, not a boolean"),
    ("execution: {gap_between_runs_s: 1.0e+300}\n", "execution.gap_between_runs_s: must be a number from 0 to 2592000"),
    ("execution: {publication: 'yes'}\n", "execution.publication: must be a mapping, not a string"),
    ("execution: {publication: {energy_required: 0}}\n", "execution.publication.energy_required: must be true or false"),
    ("analysis: {reference: true}\n", "analysis.reference: must be an experiment index"),
    ("analysis: {costs: {pue: '1.2'}}\n", "analysis.costs.pue: must be a number, not a string"),
    ("analysis: {max_cv: 0}\n", "analysis.max_cv"),
    ("slurm: {time_limit: 1:00:00}\n", "slurm.time_limit: must be a string in quotes"),
    ("slurm: {gpus_per_run: true}\n", "slurm.gpus_per_run: must be an integer, not a boolean"),
])
def test_values_no_consumer_accepts_are_refused_naming_the_key(tmp_path, body, expected):
    with pytest.raises(UserError) as e:
        load_study(write(tmp_path / "s.yaml", BASE + body))
    assert expected in str(e.value)


def test_a_huge_seed_exits_2_on_the_command_line(tmp_path):
    err = refused(tmp_path, "s.yaml", BASE + "seed: 99999999999999999999999\n", "--dry-run")
    assert "seed: must be an integer from 0 to 4294967295" in err


def test_integers_written_for_numbers_still_load(tmp_path):
    s = load_study(write(tmp_path / "s.yaml", BASE + "measurement: {min_window_s: 5, baseline_s: 0}\n"
                         "sampling: {temperature: 1, top_p: 1}\nexecution: {run_timeout_s: 600}\n"
                         "slurm: {time_limit: '30', mem_per_run: 32G, poll_interval_s: 1}\n"))
    assert s.experiments[0].config.measurement.min_window_s == 5.0 and s.execution.run_timeout_s == 600.0


MODELS = [ExperimentConfig, MeasurementConfig, SamplingConfig, GpuSettings, *(row.section for row in TABLE), Execution,
          Publication, Analysis, Costs, SlurmSettings, UserConfig]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_settings_model_is_strict_and_bounds_every_integer(model):
    """A new setting can't slip in lax or unbounded: booleans would pass as integers again."""
    assert model.model_config.get("strict") is True and model.model_config.get("extra") == "forbid"
    assert model.model_config.get("allow_inf_nan") is False
    for name, field in model.model_fields.items():
        args = get_args(field.annotation) or (field.annotation,)
        if int in args:
            assert any(isinstance(m, (Le, Lt)) for m in field.metadata), f"{model.__name__}.{name} has no upper bound"
        for arg in args:  # `Annotated[int, Field(le=...)] | str`: the bound sits on the member
            if get_origin(arg) is Annotated and get_args(arg)[0] is int:
                assert any(isinstance(m, (Le, Lt)) for f in get_args(arg)[1:] for m in f.metadata), name


# -- 6. sizes refused before anything is expanded or printed ---------------------------

@pytest.mark.parametrize("name, text, expected", [
    ("cycles", BASE + "execution: {n_cycles: 1000000}\n", "execution.n_cycles: must be an integer from 1 to 10000"),
    ("runs", BASE + yaml.safe_dump({"sweep": {"seed": list(range(100)), "n_prompts": list(range(1, 61)),
                                              "pytorch.batch_size": list(range(1, 11))}}),
     "this study expands to 180,000 runs (60,000 experiments x 3 cycles); the limit is 100,000"),
    ("points", BASE + "sweep: {" + ", ".join(f"x{i}: [1, 2]" for i in range(17)) + "}\n",
     "sweep: expands to 131,072 experiments"),
    ("large-file", BASE + "sweep: {seed: [" + ", ".join(map(str, range(300_000))) + "]}\n",
     "MiB; a study file may be at most 1 MiB"),
])
def test_oversized_studies_are_refused_before_anything_is_expanded(tmp_path, name, text, expected):
    assert expected in refused(tmp_path, f"{name}.yaml", text)


def test_dev_zero_is_refused_at_once(tmp_path):
    out = tmp_path / "results"
    r = llem("run", "/dev/zero", "--runner", "local", "-o", str(out), timeout=60)
    assert r.returncode == 2 and "/dev/zero: is larger than 1 MiB" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_too_many_cycles_on_the_command_line(tmp_path):
    err = refused(tmp_path, "s.yaml", BASE, "--cycles", "1000000")
    assert "--cycles" in err and "10000" in err


def test_backend_scoped_sweeps_are_counted_exactly(tmp_path):
    """A product's upper bound (2 x 400 x 400) would refuse a 800-experiment sweep."""
    sweep = {"backend": ["pytorch", "vllm"], "pytorch.batch_size": list(range(1, 401)),
             "vllm.max_num_seqs": list(range(1, 401)), "precision": [{"pytorch.dtype": "float32"},
                                                                      {"vllm.dtype": "float16"}]}
    base = yaml.safe_load(BASE)
    axes = parse_axes(sweep)
    assert count_points(base, axes) == len(expand(base, axes)) == 800
    s = load_study(write(tmp_path / "s.yaml", BASE + yaml.safe_dump({"sweep": sweep}) + "execution: {n_cycles: 100}\n"))
    assert len(s.experiments) == 800


# -- 7. every section is checked, whatever the runner -----------------------------------

def test_a_misspelt_slurm_key_is_refused_with_the_local_runner(tmp_path):
    err = refused(tmp_path, "s.yaml", BASE + "slurm: {partiton: gpu}\n", "--dry-run")
    assert "slurm.partiton: unknown key (did you mean 'partition'?)" in err


# -- 8. messages -------------------------------------------------------------------------

def test_a_name_taken_from_the_file_name_says_so(tmp_path):
    err = refused(tmp_path, "my study 🚀.yaml", BASE, "--dry-run")
    assert "the study's name comes from its file name 'my study 🚀' when it has no name: key" in err
    assert "add `name: my-study`" in err and "or rename the file" in err


def test_a_broken_jsonl_line_is_reported_with_its_line_and_column(tmp_path):
    write(tmp_path / "m" / "config.json", "{}")  # a local model directory: nothing is built or loaded
    write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "tab\there"}\n')
    err = refused(tmp_path, "s.yaml", BASE.replace("llem/tiny-llama", "m") + "dataset: p.jsonl\n")
    assert f"{tmp_path / 'p.jsonl'}:2: not valid JSON: Invalid control character at line 2 column 16" in err
    assert "must be written \\t or \\n" in err


def test_a_dataset_file_changed_after_loading_is_refused_by_the_run(tmp_path):
    from llenergymeasure.backends.prompts import DatasetError, load_prompts

    study = _sub_layout(tmp_path)
    cfg = load_study(study).experiments[0].config
    assert load_prompts(cfg.dataset, 2, 16, 0, cfg.dataset_sha256) == ["prompt number 0", "prompt number 1"]
    (study.parent / "prompts.jsonl").write_text(PROMPTS.replace("number", "no."))
    with pytest.raises(DatasetError, match="changed after the study was loaded"):
        load_prompts(cfg.dataset, 2, 16, 0, cfg.dataset_sha256)
    assert os.path.isabs(cfg.dataset)
