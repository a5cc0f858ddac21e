"""The committed JSON Schemas (schemas/json/) must be exactly what the models generate.

Other systems (the helpdesk, producers in other languages) build against those files, so a
model change that is not re-exported and reviewed as a schema diff must fail the build.
"""

from __future__ import annotations

from schemas.export import FIX_COMMAND, SCHEMA_DIR, differences, schema_documents
from schemas.registry import ROUTES


def test_committed_json_schemas_match_the_models():
    differ = differences(SCHEMA_DIR)
    assert not differ, (
        f"JSON Schemas in {SCHEMA_DIR} differ from the models: {', '.join(differ)}. "
        f"Regenerate with `{FIX_COMMAND}` and review the diff against docs/schema-evolution.md."
    )


def test_every_routed_message_has_a_schema_document():
    assert sorted(schema_documents()) == sorted(f"{route.event_type}.json" for route in ROUTES)


def test_drift_is_detected(tmp_path):
    docs = schema_documents()
    for name, text in docs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert differences(tmp_path) == []
    first = sorted(docs)[0]
    (tmp_path / first).write_text("{}\n", encoding="utf-8")
    (tmp_path / "Retired.json").write_text("{}\n", encoding="utf-8")
    assert differences(tmp_path) == sorted([first, "Retired.json"])
