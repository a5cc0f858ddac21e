"""A ticket's per-producer chains read as one timeline (pure: no store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.runtime.audit import GENESIS_HASH, AuditRecord, merge_chains, new_record, record_key

T0 = datetime(2026, 11, 22, 9, 58, tzinfo=UTC)


def chain(actor: str, seconds: list[float]) -> list[AuditRecord]:
    records, prev = [], GENESIS_HASH
    for seq, s in enumerate(seconds, start=1):
        record = new_record(ticket_id="HD-1", seq=seq, prev_hash=prev,
                            record_id=f"{actor.split(':')[0]}-{seq}", kind="event", actor=actor,
                            at=T0 + timedelta(seconds=s), data={})
        records.append(record)
        prev = record.hash
    return records


def test_chains_merge_by_time_then_producer_then_seq() -> None:
    intake = chain("intake", [0, 3])
    auth = chain("auth", [1, 3])  # auth's second record at the same instant as intake's
    executor = chain("executor:exec-1", [2, 2, 4])  # two records in one millisecond
    merged = merge_chains([*executor, *intake[::-1], *auth])  # read back in any order
    assert [r.record_id for r in merged] == [
        "intake-1", "auth-1", "executor-1", "executor-2", "auth-2", "intake-2", "executor-3"]


def test_a_chain_keeps_its_seq_order_even_when_its_clock_ran_backwards() -> None:
    executor = chain("executor", [5, 1])  # a caller-supplied `at` earlier than the last
    notifier = chain("notifier", [3])
    merged = merge_chains([*notifier, *executor])
    assert [r.record_id for r in merged] == ["notifier-1", "executor-1", "executor-2"]


def test_the_producer_is_the_actors_service_and_part_of_the_position() -> None:
    [record] = chain("executor:exec-1", [0])
    assert record.producer == "executor"
    assert record.to_stored()["_id"] == record_key("HD-1", "executor", 1) == (
        "HD-1:executor:0000000001")
    assert AuditRecord.from_document(record.to_stored()) == record
