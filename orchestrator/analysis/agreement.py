"""Same output as the reference? For each configuration, the share of its requests whose
generated tokens (and, separately, whose output lengths) equal the reference configuration's
for the same prompt.

Why: a speed or energy comparison between two backends (or two batch sizes, or two
precisions) is a comparison of the same work only when they generate the same tokens. With
greedy decoding (temperature 0) the output is fixed by the model and the prompt, so any
difference comes from arithmetic (kernels, operation order, batching, padding) tipping a
near-tie between two candidate tokens; the share says how often that happened. It is
recorded as measured, never asserted to be 1: a tiny random-weight model is full of near-ties.

One definition (`same_tokens_as_reference_share`, `same_output_length_as_reference_share`):
the *baseline* is the reference experiment's first finished run (lowest cycle) whose
`requests.parquet` can be read. Every other finished run of an experiment with a readable
`requests.parquet` is compared with it, prompt by prompt (`request_index`), on the first pass
over the dataset (`pass_index` 0: later passes repeat the same prompts). The share is matches
over all (run, prompt) pairs compared, pooled over the experiment's cycles
(`same_output_requests_compared` of them). For the reference itself that compares its later
cycles with its first: whether it repeats itself at all.

Left empty (None), with `same_output_unavailable_reason` saying why, where the comparison
means nothing or cannot be made: sampling (temperature > 0) on either side (outputs differ by
chance), a different question (other prompts, model or output length), or no per-request
records (runs of an llem that did not write requests.parquet, or wrote it without
`output_token_ids`: then only the lengths are compared).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llenergymeasure.backends.config import ExperimentConfig, SamplingConfig
from llenergymeasure.backends.contract import REQUESTS_FILE
from llenergymeasure.orchestrator.execution.manifest import Manifest

SAME_TOKENS = "same_tokens_as_reference_share"
SAME_LENGTH = "same_output_length_as_reference_share"
COMPARED = "same_output_requests_compared"
UNAVAILABLE = "same_output_unavailable_reason"

# Experiment fields that make two experiments ask the same question of the same prompts
# (the synthetic prompts depend on the seed; token ids are only comparable within one
# tokenizer, so the model too). Backend, batching, precision and quantisation settings are
# what a study varies, and exactly what the share is about.
SAME_QUESTION_FIELDS = ("model", "model_revision", "dataset", "dataset_sha256", "n_prompts",
                        "max_input_tokens", "max_output_tokens", "ignore_eos", "seed")

SAMPLING_REASON = ("sampling (temperature > 0): outputs differ from run to run by chance, "
                   "so identical outputs are not expected")
NO_RECORDS_REASON = (f"no {REQUESTS_FILE} in its finished runs (recorded by an llem from before "
                     "per-request records)")
NO_TOKEN_IDS_REASON = (f"{REQUESTS_FILE} without output_token_ids (an older llem): "
                       "only output lengths compared")


class Agreement(BaseModel):
    """One experiment's agreement with the reference (the summary's columns, by name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    same_tokens_as_reference_share: float | None = Field(None, ge=0, le=1)
    same_output_length_as_reference_share: float | None = Field(None, ge=0, le=1)
    same_output_requests_compared: int = Field(0, ge=0)  # (run, prompt) pairs behind the shares
    same_output_unavailable_reason: str | None = None  # why a share is empty (None when both are set)


# the summary of a runs table alone (no study directory to read requests.parquet from)
NOT_READ = Agreement(same_output_unavailable_reason=f"not computed: no run's {REQUESTS_FILE} was read")


@dataclass(frozen=True)
class FirstPass:
    """The first pass over the dataset of one run: each prompt's output, by `request_index`."""

    lengths: dict[int, int]  # output_tokens
    # output_token_ids as raw int64 bytes (equal exactly when the token lists are: only equality
    # is asked of them, and this is ~20x cheaper than Python ints for a large study's millions);
    # None: recorded without them
    tokens: dict[int, bytes] | None


def read_first_pass(run_dir: Path) -> FirstPass | None:
    """Pass 0 of the run's requests.parquet; None when there is none or it cannot be read."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = run_dir / REQUESTS_FILE
    try:
        with_ids = "output_token_ids" in pq.read_schema(path).names
        columns = ["request_index", "output_tokens", *(["output_token_ids"] if with_ids else [])]
        first = pq.read_table(path, columns=columns, filters=[("pass_index", "=", 0)])
    except (OSError, pa.ArrowException, ValueError):  # absent, truncated or not parquet
        return None
    index = first.column("request_index").to_pylist()
    tokens = None
    if with_ids:
        ids = first.column("output_token_ids").to_numpy()
        tokens = {i: np.asarray(() if t is None else t, dtype=np.int64).tobytes() for i, t in zip(index, ids)}
    return FirstPass(lengths=dict(zip(index, first.column("output_tokens").to_pylist())), tokens=tokens)


def compare_with(baseline: FirstPass, runs: Sequence[FirstPass]) -> Agreement:
    """The shares of `runs`' (run, prompt) pairs whose output equals the baseline's for that prompt."""
    compared = same_length = same_tokens = 0
    have_tokens = baseline.tokens is not None and all(r.tokens is not None for r in runs)
    for run in runs:
        for i, n in run.lengths.items():
            if i not in baseline.lengths:  # a prompt the baseline did not record: nothing to compare
                continue
            compared += 1
            same_length += n == baseline.lengths[i]
            if have_tokens:
                same_tokens += run.tokens[i] == baseline.tokens[i]  # type: ignore[index]
    if not compared:
        return Agreement(same_output_unavailable_reason="no prompt in common with the reference's run")
    return Agreement(
        same_tokens_as_reference_share=same_tokens / compared if have_tokens else None,
        same_output_length_as_reference_share=same_length / compared,
        same_output_requests_compared=compared,
        same_output_unavailable_reason=None if have_tokens else NO_TOKEN_IDS_REASON,
    )


def _setting(config: Mapping[str, Any], name: str) -> Any:
    """A field of a manifest's config (recorded without unset values), else its default."""
    if name in config:
        return config[name]
    return ExperimentConfig.model_fields[name].get_default(call_default_factory=True)


def _sampled(config: Mapping[str, Any]) -> bool:
    temperature = (config.get("sampling") or {}).get("temperature")
    if temperature is None:
        temperature = SamplingConfig.model_fields["temperature"].get_default()
    return float(temperature) > 0


def not_comparable(config: Mapping[str, Any], reference: Mapping[str, Any]) -> str | None:
    """Why this experiment's outputs cannot be held against the reference's, or None."""
    if _sampled(config) or _sampled(reference):
        return SAMPLING_REASON
    differ = [f for f in SAME_QUESTION_FIELDS if _setting(config, f) != _setting(reference, f)]
    if differ:
        return f"a different question from the reference's ({', '.join(differ)} differ)"
    return None


def _no_comparison(index: int, reference_index: int, mine: list, ref_runs: list, has_baseline: bool,
                   has_passes: bool) -> str | None:
    """Why there is nothing to compare (no finished run, no records), or None."""
    if not mine:
        return "no finished run"
    if not ref_runs:
        return f"the reference (experiment {reference_index}) has no finished run"
    if not has_baseline:
        return f"the reference (experiment {reference_index}) has {NO_RECORDS_REASON}"
    if index == reference_index and len(mine) == 1:
        return "the reference has one finished run: nothing to compare it with"
    return None if has_passes else NO_RECORDS_REASON


def output_agreement(manifest: Manifest, reference_index: int) -> dict[int, Agreement]:
    """Every experiment's agreement with experiment `reference_index`, by experiment index
    (none for a study of no experiments: there is no reference)."""
    if not manifest.experiments:
        return {}
    done: dict[int, list[tuple[str, FirstPass | None]]] = {}
    for run in sorted(manifest.runs, key=lambda r: r.cycle):
        if run.state == "done":
            done.setdefault(run.experiment_index, []).append(
                (run.run_id, read_first_pass(manifest.run_dir(run.run_id))))
    ref_runs = done.get(reference_index, [])
    baseline = next(((rid, p) for rid, p in ref_runs if p is not None), None)
    ref_config = manifest.experiment(reference_index).config
    out = {}
    for e in manifest.experiments:
        mine = done.get(e.index, [])
        passes = [p for rid, p in mine if p is not None and (baseline is None or rid != baseline[0])]
        reason = not_comparable(e.config, ref_config) or _no_comparison(
            e.index, reference_index, mine, ref_runs, baseline is not None, bool(passes))
        out[e.index] = (Agreement(same_output_unavailable_reason=reason) if reason
                        else compare_with(baseline[1], passes))  # type: ignore[index]
    return out
