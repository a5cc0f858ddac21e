"""The audit chain's pure parts: canonical content, hashing, storable data and the chain walk.

No I/O: the store-facing behaviour is in ``tests/integration/test_audit_chain.py``.
"""

from __future__ import annotations

import enum
import hashlib
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import bson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runtime.audit import (
    GENESIS_HASH,
    AuditRecord,
    ChainBreak,
    TicketChainCheck,
    format_at,
    normalise_at,
    record_hash,
    storable_data,
)

AT = datetime(2026, 11, 22, 9, 58, 0, 123456, tzinfo=UTC)


class Identity:
    def redact(self, obj: Any) -> Any:
        return obj


class MaskCanary:
    """Stands in for the real redactor: masks one known value wherever it appears."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.seen: list[Any] = []

    def redact(self, obj: Any) -> Any:
        self.seen.append(obj)
        if isinstance(obj, dict):
            return {k: self.redact(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.redact(v) for v in obj]
        if isinstance(obj, str):
            return obj.replace(self.secret, "***")
        return obj


def make_chain(ticket_id: str = "HD-1", n: int = 4) -> list[dict[str, Any]]:
    """Stored documents of a valid chain, as the writer produces them."""
    docs: list[dict[str, Any]] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        fields: dict[str, Any] = {
            "ticket_id": ticket_id, "seq": seq, "record_id": f"evt-{seq}", "kind": "command",
            "actor": "executor", "at": normalise_at(AT + timedelta(seconds=seq)),
            "data": {"command": "systemctl restart sshd", "exit_status": 0}, "prev_hash": prev,
        }
        digest = record_hash(**fields)
        docs.append(AuditRecord(**fields, hash=digest).to_document())
        prev = digest
    return docs


def head_doc(seq: int, digest: str) -> dict[str, Any]:
    """A head document as the writer keeps it: ``seq`` and the ``"<seq>:<hash>"`` marker."""
    return {"_id": "HD-1", "seq": seq, "head": f"{seq:020d}:{digest}"}


def walk(docs: list[dict[str, Any]], head: dict[str, Any] | None = None) -> ChainBreak | None:
    """A legacy chain (one per ticket, no producer) with its head document."""
    check = TicketChainCheck("HD-1", head=head)
    for doc in docs:
        broken = check.check(doc)
        if broken is not None:
            return broken
    return check.finish()


# --- timestamps ------------------------------------------------------------------------


def test_timestamp_is_utc_iso_with_milliseconds_and_z() -> None:
    assert format_at(AT) == "2026-11-22T09:58:00.123Z"


def test_timestamp_in_another_zone_is_converted_to_utc() -> None:
    rome = timezone(timedelta(hours=1))
    assert format_at(datetime(2026, 11, 22, 10, 58, 0, 999999, tzinfo=rome)) == (
        "2026-11-22T09:58:00.999Z"
    )


def test_timestamp_is_truncated_to_what_bson_stores() -> None:
    assert normalise_at(AT).microsecond == 123000
    round_trip = bson.decode(bson.encode({"at": AT}))["at"].replace(tzinfo=UTC)
    assert round_trip == normalise_at(AT)


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        normalise_at(datetime(2026, 11, 22, 9, 58))


# --- hashing ---------------------------------------------------------------------------


def test_hash_is_sha256_of_the_documented_canonical_json() -> None:
    expected_json = (
        '{"actor":"executor","at":"2026-11-22T09:58:00.123Z","data":{"a":[1,2.5,null],'
        '"é":"ü"},"kind":"command","prev_hash":"' + GENESIS_HASH + '","record_id":"evt-1",'
        '"seq":1,"ticket_id":"HD-1"}'
    )
    digest = record_hash(
        ticket_id="HD-1", seq=1, record_id="evt-1", kind="command", actor="executor", at=AT,
        data={"é": "ü", "a": [1, 2.5, None]}, prev_hash=GENESIS_HASH,
    )
    assert digest == hashlib.sha256(expected_json.encode("utf-8")).hexdigest()


def test_hash_does_not_depend_on_key_order() -> None:
    common: dict[str, Any] = {
        "ticket_id": "HD-1", "seq": 1, "record_id": "r", "kind": "k", "actor": "a", "at": AT,
        "prev_hash": GENESIS_HASH,
    }
    assert record_hash(**common, data={"x": 1, "y": {"b": 2, "a": 1}}) == record_hash(
        **common, data={"y": {"a": 1, "b": 2}, "x": 1}
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ticket_id", "HD-2"), ("seq", 2), ("record_id", "evt-x"), ("kind", "event"),
        ("actor", "intruder"), ("at", AT + timedelta(milliseconds=1)),
        ("data", {"command": "rm -rf /", "exit_status": 0}), ("prev_hash", "f" * 64),
    ],
)
def test_changing_any_content_field_changes_the_hash(field: str, value: Any) -> None:
    doc = make_chain(n=1)[0]
    content = {k: v for k, v in doc.items() if k != "hash"}
    assert record_hash(**content) == doc["hash"]
    assert record_hash(**{**content, field: value}) != doc["hash"]


# --- storable data ---------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"


def test_data_is_reduced_to_json_types_before_hashing() -> None:
    event_id = uuid.uuid4()
    data: dict[Any, Any] = {  # an int key too: callers' data is not always well typed
        "when": AT, "id": event_id, "colour": Colour.RED, "argv": ("ls", "-l"), 3: "three",
        "ratio": math.nan, "zero": -0.0, "huge": 2**70, "output": b"ok \xff",
    }
    stored = storable_data(data, Identity())
    assert stored == {
        "when": "2026-11-22T09:58:00.123456Z", "id": str(event_id), "colour": "red",
        "argv": ["ls", "-l"], "3": "three", "ratio": "nan", "zero": 0.0, "huge": str(2**70),
        "output": "ok \ufffd",
    }
    assert math.copysign(1, stored["zero"]) == 1  # FerretDB would store -0.0 as 0.0


def test_keys_the_store_refuses_are_escaped_not_dropped() -> None:
    stored = storable_data({"parameters": {"a.b": 1, "$where": 2, "nul\x00": 3}}, Identity())
    assert stored == {"parameters": {"a\uff0eb": 1, "\uff04where": 2, "nul\ufffd": 3}}


def test_lone_surrogates_from_customer_text_do_not_stop_auditing() -> None:
    stored = storable_data({"description": "bad \ud800 text"}, Identity())
    assert stored == {"description": "bad ? text"}


def test_redactor_sees_command_output_as_text_and_its_result_is_stored() -> None:
    redactor = MaskCanary("s3cr3t-canary")
    stored = storable_data(
        {"command": "chpasswd", "output": b"password set to s3cr3t-canary\n", "nested": [
            {"note": "s3cr3t-canary"}]},
        redactor,
    )
    assert "s3cr3t-canary" not in repr(stored)
    assert stored["output"] == "password set to ***\n"
    assert redactor.seen[0]["output"] == "password set to s3cr3t-canary\n"


def test_redactor_returning_a_non_mapping_is_an_error() -> None:
    class Broken:
        def redact(self, obj: Any) -> Any:
            return "***"

    with pytest.raises(TypeError, match="redactor"):
        storable_data({"a": 1}, Broken())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_what_is_hashed_is_exactly_what_bson_reads_back(data: dict[str, Any]) -> None:
    stored = storable_data(data, Identity())
    back = bson.decode(bson.encode({"data": stored}))["data"]
    common: dict[str, Any] = {
        "ticket_id": "HD-1", "seq": 1, "record_id": "r", "kind": "k", "actor": "a", "at": AT,
        "prev_hash": GENESIS_HASH,
    }
    assert record_hash(**common, data=stored) == record_hash(**common, data=back)
    assert storable_data(stored, Identity()) == stored  # reducing twice changes nothing


# --- the chain walk --------------------------------------------------------------------


def test_valid_chain_passes_with_head_at_the_end_lagging_or_absent() -> None:
    docs = make_chain()
    assert walk(docs, head=head_doc(4, docs[3]["hash"])) is None
    assert walk(docs, head=head_doc(3, docs[2]["hash"])) is None
    assert walk(docs, head=None) is None


def test_edited_data_is_named_at_its_seq() -> None:
    docs = make_chain()
    docs[2]["data"]["exit_status"] = 1
    assert walk(docs) == ChainBreak("HD-1", None, 3, "hash mismatch: record edited")


def test_edited_hash_is_named_at_its_seq() -> None:
    docs = make_chain()
    docs[1]["hash"] = "0" * 64
    assert walk(docs) == ChainBreak("HD-1", None, 2, "hash mismatch: record edited")


def test_deleted_middle_record_is_a_seq_gap() -> None:
    docs = make_chain()
    del docs[1]
    assert walk(docs) == ChainBreak("HD-1", None, 2, "seq gap: record 2 missing")


def test_deleted_first_record_is_a_seq_gap() -> None:
    assert walk(make_chain()[1:]) == ChainBreak("HD-1", None, 1, "seq gap: record 1 missing")


def test_swapped_records_break_the_prev_hash_link() -> None:
    docs = make_chain()
    docs[1]["seq"], docs[2]["seq"] = 3, 2
    docs[1], docs[2] = docs[2], docs[1]
    assert walk(docs) == ChainBreak("HD-1", None, 2, "prev_hash does not match record 1")


def test_deleted_tail_is_caught_by_the_head() -> None:
    docs = make_chain()
    head = head_doc(4, docs[3]["hash"])
    assert walk(docs[:2], head=head) == ChainBreak(
        "HD-1", None, 3, "head points past the last record: tail deleted"
    )
    assert walk([], head=head) == ChainBreak(
        "HD-1", None, 1, "head points past the last record: tail deleted"
    )


def test_head_disagreeing_with_its_record_means_the_chain_was_rewritten() -> None:
    docs = make_chain()
    assert walk(docs, head=head_doc(2, "e" * 64)) == ChainBreak(
        "HD-1", None, 2, "head hash does not match record 2: chain rewritten"
    )


def test_malformed_record_is_named_not_crashed_on() -> None:
    docs = make_chain()
    docs[1]["at"] = "yesterday"
    broken = walk(docs)
    assert broken is not None
    assert (broken.seq, broken.reason.split(":")[0]) == (2, "malformed record")


def test_head_document_tampered_into_nonsense_is_reported() -> None:
    docs = make_chain()
    head = {**head_doc(4, docs[3]["hash"]), "seq": 9}  # seq no longer matches its marker
    assert walk(docs, head=head) == ChainBreak("HD-1", None, 5, "malformed head document")
