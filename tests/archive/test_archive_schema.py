"""The archive's schema is defined once (orchestrator/archive/schema.py): the committed
JSON Schema is its export, and its metric columns are the run contract's and the
summary's, by the same names."""

from __future__ import annotations

import json

from llenergymeasure.backends.harness.metrics import Metrics
from llenergymeasure.orchestrator.analysis.summary import HEADLINE
from llenergymeasure.orchestrator.archive.schema import (
    RUN_METRICS, SCHEMA_VERSION, SUMMARY_METRICS, TABLES, RunRow, arrow_schema, json_schema_text, unit_of,
)
from tests.support.helpers import REPO

COMMITTED = REPO / "docs" / "archive-schema.json"
REGENERATE = "python -m llenergymeasure.orchestrator.archive.schema docs/archive-schema.json"


def test_the_committed_json_schema_is_the_export():
    assert COMMITTED.read_text(encoding="utf-8") == json_schema_text(), (
        f"docs/archive-schema.json is stale: regenerate it with `{REGENERATE}` (and bump "
        "SCHEMA_VERSION with a migration in migrate.py if the tables changed shape)")
    doc = json.loads(COMMITTED.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and set(doc["tables"]) == {"studies", "runs", "summary", "environment"}


def test_every_run_metric_is_archived_by_its_own_name_and_type():
    """RunRow's metric columns are the run contract's Metrics, by name and type."""
    for name, field in Metrics.model_fields.items():
        kinds = [a for a in getattr(field.annotation, "__args__", (field.annotation,)) if a is not type(None)]
        assert (name, kinds[0]) in RUN_METRICS and name in RunRow.model_fields, name


def test_summary_metrics_are_the_studys_headline_metrics_with_units():
    assert [(m, h) for m, _, h in SUMMARY_METRICS] == list(HEADLINE)
    assert all(unit for _, unit, _ in SUMMARY_METRICS), "unit_of() does not know a summary metric's unit suffix"
    assert unit_of("energy_per_output_token_j") == "J/output token" and unit_of("ttft_ms_p99") == "ms"
    assert unit_of("output_tokens_per_s") == "output tokens/s" and unit_of("duration_s") == "s"


def test_every_column_has_a_parquet_type_and_units_in_its_name():
    for table, model in TABLES.items():
        schema = arrow_schema(model)
        assert schema.names == list(model.model_fields), table
    units = ("_s", "_ms", "_j", "_w", "_mb", "_gb", "_per_s")
    for name, kind in RUN_METRICS:  # a float metric carries its unit (counts are plain)
        if kind is float and name not in ("flops_estimate", "ttft_trend_p_value"):
            assert any(u in name for u in units) or unit_of(name), name
