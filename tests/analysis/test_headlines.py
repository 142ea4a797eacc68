"""The report's sentences. Headlines over summaries whose setting columns are partly empty
(explicit `experiments:` each set a different setting, so pandas reads the others as NA (nullable
columns, whose `==` is NA rather than False). Seen on a study of one vLLM setting per
experiment: the report failed with 'boolean value of NA is ambiguous'), and the cycles note."""

from __future__ import annotations

import pandas as pd

from llenergymeasure.orchestrator.analysis.headlines import headlines

THROUGHPUT = "output_tokens_per_s"


def test_settings_set_in_some_experiments_only_still_give_headlines():
    summary = pd.DataFrame({
        "experiment_index": [1, 2, 3],
        "label": ["a", "b", "c"],
        "is_reference": [True, False, False],
        "runs_done": [2, 2, 2],
        "backend": ["vllm"] * 3,
        "vllm.enable_chunked_prefill": pd.array([pd.NA, False, pd.NA], dtype="boolean"),
        "vllm.max_num_seqs": pd.array([pd.NA, pd.NA, 4], dtype="Int64"),
    })
    runs = pd.DataFrame({"experiment_index": [1, 1, 2, 2, 3, 3], "status": ["done"] * 6,
                         THROUGHPUT: [100.0, 110.0, 90.0, 95.0, 50.0, 55.0]})
    chunked, seqs = headlines(summary, runs, ["vllm.enable_chunked_prefill", "vllm.max_num_seqs"], None)
    # the first configuration with the setting is the baseline; the one that leaves it unset (with
    # every other setting equal) is the change, and says so rather than comparing against "n/a"
    assert chunked.startswith("Changing vllm.enable_chunked_prefill from False (the first configuration with this "
                              "setting) to unset (the backend's default) gives 1.14x the output throughput")
    assert seqs.startswith("Changing vllm.max_num_seqs from 4 (the first configuration with this setting) to unset")


def test_the_reports_cycles_note_reads_the_summarys_cycles_run():
    from llenergymeasure.orchestrator.analysis.report import cycles_note

    summary = pd.DataFrame({"cycles_run": [3, 5, 4]})
    assert cycles_note({"n_cycles": 3}, summary) == "3"
    assert cycles_note({"n_cycles": "auto", "target_ci_pct": 5.0}, summary) == "3-5 (auto, target ±5%)"
    assert cycles_note({"n_cycles": "auto"}, summary.iloc[:1]) == "3 (auto)"
