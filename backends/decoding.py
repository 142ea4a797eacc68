"""One decoding recipe for every backend, complete, so that engines decode the same way.

Left to themselves, engines fill unset generation fields differently: transformers
takes them from the checkpoint's `generation_config.json` and its own defaults
(`top_k` 50, a checkpoint's `repetition_penalty`) and stops only on the tokenizer's
EOS, while vLLM ignores the checkpoint's sampling fields for explicit
`SamplingParams` but stops on every EOS id of the generation config. llem decides
each field itself: the study's `sampling:` values, no repetition penalty, and one
stop set (the tokenizer's EOS plus every `eos_token_id` of `generation_config.json`)
that every backend stops on. The recipe is recorded in the result.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.backends.config import ExperimentConfig


@dataclass(frozen=True)
class Decoding:
    """What every backend is told, field by field (nothing left to an engine's defaults)."""

    greedy: bool  # temperature 0: the arg-max token at every step
    temperature: float
    top_p: float  # 1.0 = off
    top_k: int  # 0 = off
    repetition_penalty: float  # 1.0 = off: llem never applies a checkpoint's penalty
    max_new_tokens: int
    min_new_tokens: int  # = max_new_tokens with ignore_eos (a fixed output length), else 0
    ignore_eos: bool
    stop_token_ids: tuple[int, ...]  # generation stops at any of these (unless ignore_eos)

    def record(self) -> dict[str, Any]:
        return asdict(self) | {"stop_token_ids": list(self.stop_token_ids)}


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def checkpoint_eos_ids(model_dir: str | Path) -> list[int]:
    """Every EOS id a checkpoint declares: generation_config.json, then config.json."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        f = Path(model_dir) / name
        if f.is_file():
            ids += _ids(json.loads(f.read_text()).get("eos_token_id"))
    return ids


def decoding_for(config: ExperimentConfig, model_dir: str | Path, tokenizer_eos_id: int | None) -> Decoding:
    """The recipe for this experiment and checkpoint (stop ids sorted, deduplicated)."""
    s = config.sampling
    n = config.max_output_tokens
    stops = sorted(set(_ids(tokenizer_eos_id) + checkpoint_eos_ids(model_dir)))
    greedy = s.temperature == 0
    return Decoding(
        greedy=greedy,
        temperature=s.temperature,
        top_p=1.0 if greedy else s.top_p,
        top_k=0 if greedy else s.top_k,
        repetition_penalty=1.0,
        max_new_tokens=n,
        min_new_tokens=n if config.ignore_eos else 0,
        ignore_eos=config.ignore_eos,
        stop_token_ids=tuple(stops),
    )
