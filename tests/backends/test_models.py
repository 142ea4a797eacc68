import hashlib
import stat

import pytest

from llenergymeasure.backends.models import ModelNotFound, ensure_builtin, resolve_model


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_tiny_model_is_deterministic_and_world_readable(tiny_model, tmp_path, monkeypatch):
    for p in [tiny_model, *tiny_model.rglob("*")]:
        mode = p.stat().st_mode
        assert mode & stat.S_IROTH, p
    monkeypatch.setenv("LLEM_CACHE_DIR", str(tmp_path))
    again = ensure_builtin("llem/tiny-llama")
    assert again != tiny_model
    assert _digest(again) == _digest(tiny_model)
    assert (again / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()


def test_resolve_model_errors_say_what_to_do(tmp_path):
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFound, match="hf download some-org/not-cached"):
        resolve_model("some-org/not-cached")
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model(str(tmp_path / "missing-dir/"))


def test_local_directory_resolves(tiny_model):
    assert resolve_model(str(tiny_model)) == tiny_model.resolve()
