"""Same output as the reference (orchestrator/analysis/agreement.py): the shares of requests
whose generated tokens, and whose output lengths, equal the reference's for the same prompt,
from requests.parquet files written by the harness's own writer; then the summary, the
printed table and the HTML report of a recorded multi-backend study that carry them.
No model runs here: the files are hand-built or come from tests/support/recorded_study.py."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llenergymeasure.backends.contract import REQUESTS_FILE
from llenergymeasure.backends.harness.result import write_requests
from llenergymeasure.backends.registry import RequestRecord
from llenergymeasure.orchestrator.analysis.agreement import (
    COMPARED, NO_RECORDS_REASON, NO_TOKEN_IDS_REASON, NOT_READ, SAME_LENGTH, SAME_TOKENS, SAMPLING_REASON,
    UNAVAILABLE, compare_with, not_comparable, read_first_pass)
from llenergymeasure.orchestrator.analysis.formatting import share_text
from llenergymeasure.orchestrator.analysis.report import render_report
from llenergymeasure.orchestrator.analysis.results import open_study
from llenergymeasure.orchestrator.analysis.summary import summarise, write_summary
from tests.support import recorded_study
from tests.support.recorded_study import N_PROMPTS, SHORTER, build, template_result

PROMPTS = [[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]]


def write_run(run_dir: Path, *passes: list[list[int]]) -> Path:
    """A run directory whose requests.parquet has one pass per argument (each: every prompt's tokens)."""
    run_dir.mkdir(parents=True)
    records = [[RequestRecord(input_tokens=8, submitted_s=0.0, arrival_s=0.0, token_ids=ids,
                              token_times_s=[0.1 * (k + 1) for k in range(len(ids))]) for ids in p] for p in passes]
    write_requests(run_dir / REQUESTS_FILE, records, 0.0)
    return run_dir


def agreement(tmp_path: Path, reference: list[list[int]], *runs: list[list[int]]):
    base = read_first_pass(write_run(tmp_path / "ref", reference))
    others = [read_first_pass(write_run(tmp_path / f"run{i}", r)) for i, r in enumerate(runs)]
    assert base is not None and all(o is not None for o in others)
    return compare_with(base, others)  # type: ignore[arg-type]


def test_identical_outputs_agree_on_every_request(tmp_path: Path):
    a = agreement(tmp_path, PROMPTS, PROMPTS, [list(p) for p in PROMPTS])
    assert a.same_tokens_as_reference_share == 1.0 and a.same_output_length_as_reference_share == 1.0
    assert a.same_output_requests_compared == 2 * len(PROMPTS) and a.same_output_unavailable_reason is None


def test_one_differing_token_makes_its_request_differ_but_not_its_length(tmp_path: Path):
    changed = [list(p) for p in PROMPTS]
    changed[1][3] += 1  # the last token of the second prompt
    a = agreement(tmp_path, PROMPTS, changed, PROMPTS)
    n = 2 * len(PROMPTS)
    assert a.same_tokens_as_reference_share == pytest.approx((n - 1) / n)
    assert a.same_output_length_as_reference_share == 1.0


def test_a_different_length_counts_against_both_shares(tmp_path: Path):
    shorter = [list(p) for p in PROMPTS]
    shorter[0] = shorter[0][:2]  # the same tokens, stopped early: not the same output
    a = agreement(tmp_path, PROMPTS, shorter)
    expected = (len(PROMPTS) - 1) / len(PROMPTS)
    assert a.same_tokens_as_reference_share == pytest.approx(expected)
    assert a.same_output_length_as_reference_share == pytest.approx(expected)


def test_only_the_first_pass_over_the_prompts_is_compared(tmp_path: Path):
    other = [[t + 1 for t in p] for p in PROMPTS]
    base = read_first_pass(write_run(tmp_path / "ref", PROMPTS, other))
    run = read_first_pass(write_run(tmp_path / "run", PROMPTS, PROMPTS))
    assert base is not None and run is not None and sorted(base.lengths) == list(range(len(PROMPTS)))
    assert compare_with(base, [run]).same_tokens_as_reference_share == 1.0


def test_a_missing_or_damaged_requests_file_reads_as_none(tmp_path: Path):
    assert read_first_pass(tmp_path) is None
    (tmp_path / REQUESTS_FILE).write_bytes(b"PAR1 not a parquet file")
    assert read_first_pass(tmp_path) is None


def test_a_file_from_before_token_ids_compares_lengths_only(tmp_path: Path):
    old = tmp_path / "old"
    old.mkdir()
    pq.write_table(pa.table({"pass_index": [0, 0, 0], "request_index": [0, 1, 2],
                             "output_tokens": [4, 4, 3]}), old / REQUESTS_FILE)
    base = read_first_pass(write_run(tmp_path / "ref", PROMPTS))
    run = read_first_pass(old)
    assert run is not None and run.tokens is None
    a = compare_with(base, [run])  # type: ignore[arg-type]
    assert a.same_tokens_as_reference_share is None and a.same_output_unavailable_reason == NO_TOKEN_IDS_REASON
    assert a.same_output_length_as_reference_share == pytest.approx(2 / 3)


def test_sampling_or_another_question_is_not_compared():
    greedy = {"model": "llem/tiny-llama", "n_prompts": 16}
    assert not_comparable({**greedy, "seed": 42}, greedy) is None  # 42 is the default: the same prompts
    assert not_comparable({**greedy, "sampling": {"temperature": 0.7}}, greedy) == SAMPLING_REASON
    assert not_comparable(greedy, {**greedy, "sampling": {"temperature": 0.7}}) == SAMPLING_REASON
    assert not_comparable({**greedy, "sampling": {"temperature": 0.0, "top_k": 5}}, greedy) is None
    reason = not_comparable({**greedy, "n_prompts": 8, "max_output_tokens": 4}, greedy)
    assert reason and "n_prompts" in reason and "max_output_tokens" in reason and "model" not in reason


def test_a_summary_of_a_table_alone_says_agreement_was_not_read():
    runs = pd.DataFrame({"experiment_index": [1], "status": ["done"], "output_tokens_per_s": [1.0]})
    s = summarise(runs, [{"index": 1, "id": "x", "label": "a", "config": {"backend": "pytorch"}}]).iloc[0]
    assert pd.isna(s[SAME_TOKENS]) and s[UNAVAILABLE] == NOT_READ.same_output_unavailable_reason


def _expected(backend: str, reference: str = "pytorch") -> tuple[float, float]:
    """(same-token share, same-length share) of `backend` against `reference`, from the tokens the
    fixture gives each backend (the same in every run, so the pooled share is the per-prompt one)."""
    pairs = [(recorded_study.output_tokens(backend, p), recorded_study.output_tokens(reference, p))
             for p in range(N_PROMPTS)]
    return (sum(a == b for a, b in pairs) / N_PROMPTS, sum(len(a) == len(b) for a, b in pairs) / N_PROMPTS)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def test_recorded_study_summary_parquet_carries_the_agreement(tmp_path: Path):
    study_dir = build(tmp_path, template_result())
    res = open_study(study_dir)
    write_summary(res.summary, study_dir)
    s = pd.read_parquet(study_dir / "summary.parquet").set_index("experiment_index")
    assert s.loc[1, "is_reference"] and s.loc[1, "backend"] == "pytorch"
    for idx, row in s.iterrows():
        tokens, length = _expected(row["backend"])
        assert row[SAME_TOKENS] == pytest.approx(tokens), idx
        assert row[SAME_LENGTH] == pytest.approx(length), idx
        # every finished run's first pass, but the reference's own first run (the baseline)
        assert row[COMPARED] == (row["runs_done"] - (idx == 1)) * N_PROMPTS, idx
        assert row[UNAVAILABLE] is None
    assert s.loc[3, SAME_TOKENS] < 1 and s.loc[5, SAME_LENGTH] < 1  # the fixture's differences are seen
    same = sum(recorded_study.output_tokens("vllm", i) == recorded_study.output_tokens("pytorch", i)
               for i in range(N_PROMPTS)) * s.loc[3, "runs_done"]
    assert share_text(res.summary.iloc[2], SAME_TOKENS) == f"{same}/{s.loc[3, COMPARED]}"  # counts, not a rounded %


def test_agreement_follows_the_chosen_reference_and_the_files_present(tmp_path: Path):
    study_dir = build(tmp_path, template_result())
    s = open_study(study_dir, reference=3).summary.set_index("experiment_index")
    assert s.loc[3, "is_reference"]
    for idx in (1, 5):
        backend = s.loc[idx, "backend"]
        assert s.loc[idx, SAME_TOKENS] == pytest.approx(_expected(backend, "vllm")[0]), backend
    # a run whose requests.parquet is gone is left out of its configuration's count, not counted as differing
    (study_dir / "runs" / "e02-c2" / REQUESTS_FILE).unlink()
    s = open_study(study_dir).summary.set_index("experiment_index")
    assert s.loc[2, COMPARED] == (s.loc[2, "runs_done"] - 1) * N_PROMPTS and s.loc[2, SAME_TOKENS] == 1.0


def test_report_shows_backends_side_by_side_and_whether_they_wrote_the_same_output(tmp_path: Path):
    study_dir = build(tmp_path, template_result())
    res = open_study(study_dir)
    html = render_report(res)
    assert 'id="side-by-side-table"' in html and 'id="same-output-table"' in html
    text = _text(html)
    assert "Backends side by side" in text and "on pytorch, vllm and tensorrt" in text
    section = text.index("Same output? Did each configuration")
    side = text[text.index("Backends side by side"):section]
    for header in ("output tokens/s", "TTFT p50 ms", "TPOT p50 ms", "E2E p50 ms", "J per output token"):
        assert header in side
    s = res.summary.set_index("experiment_index")
    ratio = s.loc[4, "output_tokens_per_s_ratio"]
    lo, hi = s.loc[4, "output_tokens_per_s_ratio_ci95_low"], s.loc[4, "output_tokens_per_s_ratio_ci95_high"]
    assert f"{ratio:.2f}x ({lo:.2f}-{hi:.2f})" in side  # throughput ratio with its CI, beside the reference
    same = text[section:text.index("Effect of each setting")]
    assert "greedy decoding" in same and "near-tie" in same
    compared, n_same = s.loc[5, COMPARED], round(s.loc[5, SAME_TOKENS] * s.loc[5, COMPARED])
    assert f"{n_same}/{compared} {s.loc[5, SAME_TOKENS]:.0%}" in same


def test_a_sampled_study_leaves_agreement_empty_and_the_report_says_why(tmp_path: Path):
    study_dir = build(tmp_path, template_result(), "sampling: {temperature: 0.7}\n")
    res = open_study(study_dir)
    s = res.summary
    assert s[SAME_TOKENS].isna().all() and s[SAME_LENGTH].isna().all() and (s[COMPARED] == 0).all()
    assert (s[UNAVAILABLE] == SAMPLING_REASON).all()
    text = _text(render_report(res))
    assert "This study samples (temperature > 0)" in text and "not compared" in text


def test_a_study_without_request_records_leaves_agreement_empty(tmp_path: Path):
    study_dir = build(tmp_path, template_result(), requests=False)
    res = open_study(study_dir)
    s = res.summary
    assert s[SAME_TOKENS].isna().all() and s[SAME_LENGTH].isna().all()
    assert all(NO_RECORDS_REASON in r for r in s[UNAVAILABLE])
    html = render_report(res)
    assert NO_RECORDS_REASON.split(" (")[0] in _text(html)
    assert "same tokens as reference</th></tr>" not in html.split('id="same-output"')[0]  # no empty column


def test_the_fixture_tokens_are_what_the_harness_writer_wrote(tmp_path: Path):
    """The recorded study's files are real requests.parquet files (guards the tests above)."""
    run = tmp_path / "run"
    run.mkdir()
    recorded_study.write_recorded_requests(run, "tensorrt")
    first = read_first_pass(run)
    assert first is not None and first.tokens is not None
    assert first.tokens[60] == np.array(recorded_study.output_tokens("tensorrt", 60), dtype=np.int64).tobytes()
    assert first.lengths[60] == SHORTER["tensorrt"][60] and len(first.lengths) == N_PROMPTS
