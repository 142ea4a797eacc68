"""PyTorch backend: transformers `generate` over static, left-padded batches.

Per-token timestamps come from a streamer: `generate` hands it every step's new
tokens as a CPU tensor, so the device has already finished that step when the
timestamp is taken (no extra synchronisation needed).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any

# Imported with the adapter (before the model-load timer starts), so that
# model_load_s measures loading, not library start-up.
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.pytorch.config import PyTorchConfig
from llenergymeasure.backends.decoding import Decoding, decoding_for
from llenergymeasure.backends.devices import resolve_dtype, run_device
from llenergymeasure.backends.harness.heartbeat import beat
from llenergymeasure.backends.models import resolve_model
from llenergymeasure.backends.registry import AdapterWarning, LoadedModel, RequestRecord, register_backend


class _TimestampStreamer:
    """Records when each row of the batch receives each output token, and which."""

    def __init__(self, n_rows: int, stop_ids: tuple[int, ...], stop_at_eos: bool) -> None:
        self.times: list[list[float]] = [[] for _ in range(n_rows)]
        self.ids: list[list[int]] = [[] for _ in range(n_rows)]
        self._done = [False] * n_rows
        self._stop_ids = frozenset(stop_ids)
        self._stop_at_eos = stop_at_eos
        self._saw_prompt = False

    def put(self, value: Any) -> None:
        now = time.perf_counter()
        if not self._saw_prompt:  # generate() first pushes the prompt itself
            self._saw_prompt = True
            return
        tokens = value.reshape(-1).tolist()
        for row, tok in enumerate(tokens):
            if self._done[row]:
                continue  # padding after this row's EOS
            self.times[row].append(now)
            self.ids[row].append(tok)
            if self._stop_at_eos and tok in self._stop_ids:
                self._done[row] = True

    def end(self) -> None:
        pass


def generation_config(d: Decoding, tok: Any) -> GenerationConfig:
    """transformers' GenerationConfig for the recipe, every decoding field set."""
    sample = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if not d.greedy:
        sample = {"do_sample": True, "temperature": d.temperature, "top_p": d.top_p, "top_k": d.top_k or None}
    return GenerationConfig(
        max_new_tokens=d.max_new_tokens,
        min_new_tokens=d.min_new_tokens or None,
        **sample,
        repetition_penalty=d.repetition_penalty,
        no_repeat_ngram_size=0,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=list(d.stop_token_ids) or None,
        bos_token_id=tok.bos_token_id,
    )


@dataclass
class _Batch:
    inputs: dict[str, Any]
    input_tokens: list[int]


def _import_architecture(config: ExperimentConfig) -> None:
    """Import the model's modelling code now, before the harness starts the load timer.

    transformers imports an architecture's module lazily, on first use: about 3 s for the
    Llama code in a new interpreter, none in a run forked from the launcher, which imported
    it already. Importing it here makes `model_load_s` mean loading the weights on every
    path (new interpreter, launcher, container). A model that cannot be read here is left
    to load(), which reports it."""
    try:
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(resolve_model(config.model, config.model_revision)).model_type
        importlib.import_module(f"transformers.models.{model_type.replace('-', '_')}.modeling_{model_type.replace('-', '_')}")
    except Exception:  # noqa: BLE001 - load() raises the real error, with its message
        pass


@register_backend("pytorch")
class PyTorchBackend:
    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.section: PyTorchConfig = config.pytorch  # type: ignore[assignment]
        self.device = "cpu"
        _import_architecture(config)

    def load(self) -> LoadedModel:
        self.device = run_device(self.config.device)
        dtype_name = resolve_dtype(self.section.dtype, self.device)
        path = resolve_model(self.config.model, self.config.model_revision)

        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype_name)}
        if self.section.attn_implementation != "auto":
            kwargs["attn_implementation"] = self.section.attn_implementation
        quantised = self.section.load_in_4bit or self.section.load_in_8bit
        if quantised:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=self.section.load_in_4bit,
                load_in_8bit=self.section.load_in_8bit,
                bnb_4bit_compute_dtype=getattr(torch, dtype_name),
            )
            kwargs["device_map"] = {"": self.device}  # bitsandbytes places weights itself

        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if not quantised:
            model = model.to(self.device)
        model.eval()
        if self.section.torch_compile:
            model.forward = torch.compile(model.forward)

        self.decoding = decoding_for(self.config, path, tok.eos_token_id)
        self.generation_config = generation_config(self.decoding, tok)
        # generate() fills fields left at their defaults from the model's own generation
        # config (a checkpoint's repetition_penalty, top_k...): give it ours, complete.
        model.generation_config = self.generation_config
        self.tokenizer, self.model = tok, model
        torch.manual_seed(self.config.seed)
        return LoadedModel(
            model_path=str(path),
            n_parameters=sum(p.numel() for p in model.parameters()),
            device=self.device,
            dtype=dtype_name,
            extra={
                "attn_implementation": getattr(model.config, "_attn_implementation", None),
                "torch_compile": self.section.torch_compile,
                "decoding": self.decoding.record(),
            },
        )

    def prepare(self, prompts: list[str]) -> list[_Batch]:
        bs = self.section.batch_size
        batches = []
        for i in range(0, len(prompts), bs):
            enc = self.tokenizer(
                prompts[i : i + bs],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.config.max_input_tokens,
            )
            batches.append(
                _Batch(
                    inputs={k: v.to(self.device) for k, v in enc.items()},
                    input_tokens=enc["attention_mask"].sum(dim=1).tolist(),
                )
            )
        return batches

    def generate(self, prepared: list[_Batch], max_batches: int | None = None) -> list[RequestRecord]:
        records: list[RequestRecord] = []
        for batch in prepared[:max_batches]:
            streamer = _TimestampStreamer(
                len(batch.input_tokens),
                self.decoding.stop_token_ids,
                stop_at_eos=not self.config.ignore_eos,
            )
            submitted = time.perf_counter()
            with torch.inference_mode():
                self.model.generate(
                    **batch.inputs, generation_config=self.generation_config, streamer=streamer
                )
            records.extend(
                RequestRecord(input_tokens=n_in, submitted_s=submitted, token_times_s=times, token_ids=ids)
                for n_in, times, ids in zip(batch.input_tokens, streamer.times, streamer.ids)
            )
            beat()  # a long pass still shows progress to the watchdog
        return records

    def generate_prefill(self, prepared: list[_Batch]) -> list[RequestRecord]:
        """The same batches, each request generating one token: the prefill-only pass of
        measurement.phase_split (harness/phase_split.py)."""
        full = self.generation_config
        self.generation_config = GenerationConfig.from_dict({**full.to_dict(), "max_new_tokens": 1,
                                                             "min_new_tokens": None})
        try:
            return self.generate(prepared)
        finally:
            self.generation_config = full

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def run_warnings(self) -> list[AdapterWarning]:
        return []  # static batches in this process: nothing the harness can't see
