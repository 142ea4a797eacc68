import pytest
from pydantic import ValidationError

from llenergymeasure.backends.config import ExperimentConfig


def test_defaults_fill_own_section_and_hash_ignores_spelling_of_defaults():
    a = ExperimentConfig(model="llem/tiny-llama")
    b = ExperimentConfig.model_validate(
        {"backend": "pytorch", "model": "llem/tiny-llama", "pytorch": {"batch_size": 1}}
    )
    assert a.pytorch is not None and a.pytorch.batch_size == 1
    assert a.config_hash() == b.config_hash()
    c = ExperimentConfig(model="llem/tiny-llama", pytorch={"batch_size": 2})
    assert c.config_hash() != a.config_hash()


def test_unknown_keys_are_rejected_at_every_level():
    with pytest.raises(ValidationError, match="batchsize"):
        ExperimentConfig.model_validate({"model": "m", "pytorch": {"batchsize": 2}})
    with pytest.raises(ValidationError, match="promts"):
        ExperimentConfig.model_validate({"model": "m", "promts": 3})


def test_section_of_another_backend_is_an_error():
    with pytest.raises(ValidationError, match="section 'vllm:' is set but backend is 'pytorch'"):
        ExperimentConfig.model_validate({"model": "m", "vllm": {"max_num_seqs": 4}})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:3"])
def test_device_accepts(device):
    assert ExperimentConfig(model="m", device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", ""])
def test_device_rejects(device):
    with pytest.raises(ValidationError, match="device"):
        ExperimentConfig(model="m", device=device)


def test_quantisation_modes_are_exclusive_but_each_validates_on_its_own():
    ExperimentConfig(model="m", pytorch={"load_in_4bit": True})
    ExperimentConfig(model="m", pytorch={"load_in_8bit": True})
    with pytest.raises(ValidationError, match="exclusive"):
        ExperimentConfig(model="m", pytorch={"load_in_4bit": True, "load_in_8bit": True})


def test_canonical_json_round_trips():
    cfg = ExperimentConfig(model="m", n_prompts=7, pytorch={"batch_size": 3, "torch_compile": True})
    again = ExperimentConfig.model_validate_json(cfg.canonical_json())
    assert again == cfg and again.config_hash() == cfg.config_hash()
