"""Harness overhead: throughput the harness reports vs a bare `generate` loop.

Both run in this one process on the same model weights and the same tokenised
inputs, alternating (harness, bare, harness, bare, ...) so that drift in machine
load affects both alike. The ratio harness/bare is the harness's cost: streamer
timestamps, the background sampler, window bookkeeping. Target: >= 0.98.

    python benchmarks/harness_overhead.py [--batch-size 4] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from llenergymeasure.backends.config import ExperimentConfig
from stats import bootstrap_ci  # benchmarks/stats.py (scripts run from their folder)
from llenergymeasure.backends.harness.protocol import run_experiment
from llenergymeasure.backends.prompts import load_prompts
from llenergymeasure.backends.pytorch.backend import PyTorchBackend, _TimestampStreamer


def bare_tokens_per_s(backend: PyTorchBackend, prepared: list) -> float:
    """Plain `model.generate` over the same batches: no streamer, no sampler."""
    tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in prepared:
            out = backend.model.generate(**batch.inputs, generation_config=backend.generation_config)
            tokens += (out.shape[1] - batch.inputs["input_ids"].shape[1]) * out.shape[0]
    backend.synchronize()
    return tokens / (time.perf_counter() - t0)


def streamer_cost_s(batch_size: int, steps: int = 20000) -> float:
    """Seconds the per-token timestamping adds to one decoding step (deterministic
    part of the overhead; the end-to-end ratio above is noise-limited on small machines)."""
    tokens = torch.zeros(batch_size, dtype=torch.long)
    s = _TimestampStreamer(batch_size, (), stop_at_eos=False)
    s.put(tokens)  # the prompt
    t0 = time.perf_counter()
    for _ in range(steps):
        s.put(tokens)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llem/tiny-llama")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--max-input-tokens", type=int, default=64)
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()

    cfg = ExperimentConfig(
        model=args.model, n_prompts=args.n_prompts, max_input_tokens=args.max_input_tokens,
        max_output_tokens=args.max_output_tokens, pytorch={"batch_size": args.batch_size},
        measurement={"warmup_batches": 1},
    )
    bare = PyTorchBackend(cfg)
    bare.load()
    prepared = bare.prepare(load_prompts(cfg.dataset, cfg.n_prompts, cfg.max_input_tokens, cfg.seed))
    bare_tokens_per_s(bare, prepared[:1])  # warm-up, as the harness does

    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            h = run_experiment(cfg, Path(tmp)).metrics.output_tokens_per_s
            b = bare_tokens_per_s(bare, prepared)
            ratios.append(h / b)
            print(f"repeat {i + 1}: harness {h:8.1f} tok/s   bare {b:8.1f} tok/s   ratio {h / b:.3f}")
    step_s = args.batch_size / b  # seconds per decoding step in the bare loop (last repeat)
    put_s = streamer_cost_s(args.batch_size)
    print(f"timestamping cost per step: {put_s * 1e6:.1f} us = {put_s / step_s:.3%} of a {step_s * 1e3:.2f} ms step")
    lo, hi = bootstrap_ci(ratios)
    print(
        f"harness/bare throughput ratio: median {statistics.median(ratios):.3f} "
        f"(95% bootstrap CI {lo:.3f}-{hi:.3f}, n={len(ratios)}; "
        f"batch_size={args.batch_size}, {args.n_prompts} prompts x {args.max_output_tokens} tokens, "
        f"{cfg.model}, torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
