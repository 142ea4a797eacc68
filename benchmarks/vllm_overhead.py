"""vLLM through llem vs the same engine driven bare: output tokens/s, ratio llem/bare.

One process, one engine (built by llem's adapter with llem's engine arguments), the same
token-id prompts and the same sampling parameters. Alternating A/B repeats:

- llem: one pass as the harness's measured window runs it (`run_pass`: the adapter's own
  step loop with DELTA outputs, engine-core token stamps, a prefix-cache reset first);
- bare: `LLM.generate` on the same prompts (vLLM's own loop, final outputs only), after
  the same prefix-cache reset, so neither side finds the other's KV blocks.

Tokens/s = output tokens / wall time of the call. Target (issue 15): ratio >= 0.95.
Runs in the vLLM environment (vLLM's CPU build here):

    .venv-vllm/bin/python benchmarks/vllm_overhead.py [--repeats 7] [--max-num-seqs 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout's llenergymeasure (the vLLM env has only third-party packages)

from stats import bootstrap_ci  # noqa: E402  benchmarks/stats.py (scripts run from their folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--max-input-tokens", type=int, default=64)
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    import vllm
    from vllm.sampling_params import RequestOutputKind

    from llenergymeasure.backends.config import ExperimentConfig
    from llenergymeasure.backends.harness.protocol import run_pass
    from llenergymeasure.backends.prompts import load_prompts
    from llenergymeasure.backends.vllm.backend import VLLMBackend

    cfg = ExperimentConfig(
        model="llem/tiny-llama", backend="vllm", device="cpu", n_prompts=args.n_prompts,
        max_input_tokens=args.max_input_tokens, max_output_tokens=args.max_output_tokens,
        vllm={"dtype": "float32", "enforce_eager": True, "max_num_seqs": args.max_num_seqs},
    )
    backend = VLLMBackend(cfg)
    backend.load()
    llm = backend._llm  # the same engine, driven by vLLM's own loop
    prepared = backend.prepare(load_prompts(cfg.dataset, cfg.n_prompts, cfg.max_input_tokens, cfg.seed))
    assert backend._attached is not None
    final = backend._attached.sampling_params.clone()
    final.output_kind = RequestOutputKind.FINAL_ONLY  # what LLM.generate collects

    def llem_tok_s() -> float:
        t0 = time.perf_counter()
        p = run_pass(backend, prepared)
        return sum(r.output_tokens for r in p.records) / (time.perf_counter() - t0)

    def bare_tok_s() -> float:
        llm.reset_prefix_cache()
        t0 = time.perf_counter()
        outs = llm.generate(prepared.prompts, final, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0)

    llem_tok_s(), bare_tok_s()  # warm-up, as the harness does
    ratios = []
    for i in range(args.repeats):
        if i % 2 == 0:  # alternate which side goes first, so drift favours neither
            a = llem_tok_s()
            b = bare_tok_s()
        else:
            b = bare_tok_s()
            a = llem_tok_s()
        ratios.append(a / b)
        print(f"repeat {i + 1}: llem {a:8.1f} tok/s   bare {b:8.1f} tok/s   ratio {a / b:.3f}", flush=True)
    lo, hi = bootstrap_ci(ratios)
    print(
        f"llem/bare vLLM throughput ratio: median {statistics.median(ratios):.3f} "
        f"(95% bootstrap CI {lo:.3f}-{hi:.3f}, n={len(ratios)}; max_num_seqs={args.max_num_seqs}, "
        f"{args.n_prompts} prompts x {args.max_output_tokens} tokens, tiny model, float32, eager, "
        f"vLLM {vllm.__version__})"
    )


if __name__ == "__main__":
    main()
