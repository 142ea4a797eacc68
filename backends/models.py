"""Model resolution, and the built-in tiny model that makes llem work offline.

`llem/tiny-llama` is a ~3 M-parameter Llama with random weights and a byte-level
BPE tokenizer trained locally. It measures the *machinery* (batching, timing,
energy windows) on any machine; its text output is meaningless by design.
It is built deterministically on first use, published atomically into the cache
and made readable by every uid (a container user runs it too).
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from llenergymeasure.backends.paths import cache_dir, repo_data_dir


class ModelNotFound(Exception):
    """The model names nothing this machine can load; the message says how to fix it."""


def _build_tiny_llama(dest: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = (repo_data_dir() / "synthetic" / "words.txt").read_text().split()
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(words) for _ in range(24)) for _ in range(2000)]

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.padding_side = "left"

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<pad>"),
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    fast.save_pretrained(dest)


# name -> (recipe version, builder). Bump the version when a builder changes.
BUILTIN_MODELS: dict[str, tuple[int, Callable[[Path], None]]] = {
    "llem/tiny-llama": (1, _build_tiny_llama),
}


def _builtin_path(name: str) -> Path:
    version, _ = BUILTIN_MODELS[name]
    return cache_dir() / "models" / f"{name.replace('/', '--')}-v{version}"


def _make_world_readable(root: Path) -> None:
    # save_pretrained writes 0600 files; a container user would then see a
    # misleading FileNotFoundError.
    os.chmod(root, 0o755)
    for p in root.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def ensure_builtin(name: str) -> Path:
    """Build the built-in model on first use and return its directory."""
    dest = _builtin_path(name)
    if (dest / "config.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        BUILTIN_MODELS[name][1](tmp)
        (tmp / "llem_builtin.json").write_text(
            json.dumps({"name": name, "recipe_version": BUILTIN_MODELS[name][0]}) + "\n"
        )
        _make_world_readable(tmp)
        try:
            os.rename(tmp, dest)  # atomic publish
        except OSError:
            if not (dest / "config.json").exists():  # lost a race: the winner's copy is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model(name: str, revision: str | None = None) -> Path:
    """Where the model's files are: built-in, local directory, or HF cache snapshot
    (at `revision` when given)."""
    if name in BUILTIN_MODELS:
        return ensure_builtin(name)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelNotFound(
                f"model: directory '{name}' has no config.json; point it at a "
                "save_pretrained() directory"
            )
        return local.resolve()
    if local.suffix or name.startswith((".", "/", "~")):
        raise ModelNotFound(f"model: '{name}' does not exist; give an existing directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        at = f" at revision {revision}" if revision else ""
        cmd = f"hf download {name}" + (f" --revision {revision}" if revision else "")
        raise ModelNotFound(
            f"model: '{name}'{at} is not a built-in model ({', '.join(BUILTIN_MODELS)}), "
            f"not a local directory and not in the Hugging Face cache; download it first "
            f"with `{cmd}` (set HF_TOKEN for gated models)"
        ) from None


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    return sorted(model_dir.glob("*.safetensors"))


def _safetensors_elements(path: Path) -> int:
    """Sum of tensor elements in one safetensors file, from its JSON header only."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def count_parameters(model_dir: str | Path) -> tuple[int, str]:
    """(parameter count, how it was counted) for a checkpoint directory.

    Engines that keep the model in worker processes (vLLM, TensorRT-LLM), sharded
    over tensor-parallel ranks, can't be asked, so the count comes from the
    checkpoint: the elements stored in its
    safetensors files (headers only, milliseconds). Weights saved tied are stored
    once, as `model.parameters()` counts them; packed pre-quantised weights
    (GPTQ/AWQ int32 packing) count as stored, so such checkpoints are undercounted.
    """
    model_dir = Path(model_dir)
    files = _safetensors_files(model_dir)
    if files:
        return sum(_safetensors_elements(p) for p in files), "safetensors headers (stored elements)"
    try:  # no safetensors: build the architecture on the meta device (no memory, no weights)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        return sum(p.numel() for p in model.parameters()), "transformers from_config on meta device"
    except Exception as e:  # noqa: BLE001 - a count is not worth failing the run for
        return 0, f"unknown ({type(e).__name__}: no safetensors and no transformers architecture)"
