"""Sampler overhead: generation throughput with the background sampler running vs
not, on the same model and inputs in one process, alternating on/off so that
drift in machine load affects both alike. Target: on/off >= 0.99.

    python benchmarks/sampler_overhead.py [--batch-size 4] [--repeats 9] [--interval 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import time

from llenergymeasure.backends.config import ExperimentConfig
from stats import bootstrap_ci  # benchmarks/stats.py (scripts run from their folder)
from llenergymeasure.backends.harness.sampler import Sampler
from llenergymeasure.backends.prompts import load_prompts
from llenergymeasure.backends.pytorch.backend import PyTorchBackend


def tokens_per_s(backend: PyTorchBackend, prepared: list) -> float:
    t0 = time.perf_counter()
    records = backend.generate(prepared)
    return sum(r.output_tokens for r in records) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--interval", type=float, default=0.1)
    args = ap.parse_args()

    cfg = ExperimentConfig(model="llem/tiny-llama", n_prompts=args.n_prompts, max_input_tokens=64,
                           max_output_tokens=32, pytorch={"batch_size": args.batch_size})
    backend = PyTorchBackend(cfg)
    backend.load()
    prepared = backend.prepare(load_prompts(cfg.dataset, cfg.n_prompts, cfg.max_input_tokens, cfg.seed))
    backend.generate(prepared[:1])  # warm-up

    ratios = []
    for i in range(args.repeats):
        off = tokens_per_s(backend, prepared)
        with Sampler([], interval_s=args.interval) as sampler:  # no GPU here: process rows only
            on = tokens_per_s(backend, prepared)
        ratios.append(on / off)
        print(f"repeat {i + 1}: off {off:8.1f} tok/s   on {on:8.1f} tok/s   ratio {on / off:.3f} "
              f"({len(sampler.rows)} samples)")
    # the deterministic part: what one sample costs the sampling thread
    with Sampler([], interval_s=3600) as s:
        t0 = time.perf_counter()
        for _ in range(200):
            s._sample()
        per_sample = (time.perf_counter() - t0) / 200
    lo, hi = bootstrap_ci(ratios)
    print(f"one sample costs {per_sample * 1e6:.0f} us of CPU = {per_sample / args.interval:.2%} of one "
          f"core at a {args.interval:g} s interval")
    print(f"sampler on/off throughput ratio: median {statistics.median(ratios):.3f} "
          f"(95% bootstrap CI {lo:.3f}-{hi:.3f}, n={len(ratios)}, batch_size={args.batch_size})")


if __name__ == "__main__":
    main()
