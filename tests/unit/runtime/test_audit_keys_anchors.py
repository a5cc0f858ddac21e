"""The audit log against a hostile database writer, pure parts: signed records checked against
the services' audit keys, and the store checked against the heads anchored outside it.

The store and broker side (an insider editing the real FerretDB) is in
``tests/integration/test_audit_insider.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.runtime.audit import (
    GENESIS_HASH,
    Anchor,
    AuditKeys,
    AuditRecord,
    AuditSigner,
    ChainBreak,
    TicketChainCheck,
    new_record,
)
from services.runtime.audit_anchors import AnchorBook, encode_anchor, sign_anchor, sort_anchors
from services.runtime.crypto import SigningKey

AT = datetime(2026, 11, 22, 9, 58, tzinfo=UTC)
EXECUTOR = AuditSigner(service="executor", key=SigningKey.generate(key_id_prefix="audit-executor"))
NOTIFIER = AuditSigner(service="notifier", key=SigningKey.generate(key_id_prefix="audit-notifier"))
KEYS: AuditKeys = {s.key.key_id: (s.service, s.key.verify_key) for s in (EXECUTOR, NOTIFIER)}


def chain(n: int = 4, *, signer: AuditSigner | None = EXECUTOR, actor: str = "executor:e1",
          data: dict[str, Any] | None = None, start: int = 1,
          prev: str = GENESIS_HASH) -> list[AuditRecord]:
    records = []
    for seq in range(start, start + n):
        record = new_record(ticket_id="HD-1", seq=seq, prev_hash=prev, record_id=f"r{seq}",
                             kind="command", actor=actor, at=AT + timedelta(seconds=seq),
                             data=data or {"step": seq}, signer=signer)
        records.append(record)
        prev = record.hash
    return records


def head_of(record: AuditRecord) -> dict[str, Any]:
    """A legacy chain's head document (per-producer chains have none)."""
    return {"_id": record.ticket_id, "seq": record.seq,
            "head": f"{record.seq:020d}:{record.hash}"}


def legacy(records: list[AuditRecord]) -> list[AuditRecord]:
    """The records as the single per-ticket chain of old wrote them: no producer."""
    return [AuditRecord(**{**r.model_dump(), "producer": None}) for r in records]


def anchor(record: AuditRecord, service: str = "executor") -> Anchor:
    return Anchor(ticket_id=record.ticket_id, seq=record.seq, hash=record.hash,
                  service=service, anchored_at="2026-11-22T10:00:00.000Z",
                  producer=record.producer)


def walk(records: list[AuditRecord], *, head: dict[str, Any] | None = None,
         keys: AuditKeys | None = KEYS, anchors: tuple[Anchor, ...] = (),
         producer: str | None = "executor",
         ticket_has_records: bool | None = None) -> ChainBreak | None:
    check = TicketChainCheck("HD-1", producer, head=head, keys=keys, anchors=anchors)
    for record in records:
        broken = check.check(record.to_document())
        if broken is not None:
            return broken
    return check.finish(ticket_has_records=ticket_has_records)


# --- keyed records -----------------------------------------------------------------------


def test_records_signed_by_their_actors_service_verify() -> None:
    records = chain()
    assert all(r.key_id == EXECUTOR.key.key_id and r.signature for r in records)
    assert walk(records) is None


def test_an_unsigned_record_is_reported_when_keys_are_known() -> None:
    records = [*chain(2), *chain(1, signer=None, start=3, prev=chain(2)[-1].hash)]
    broken = walk(records)
    assert broken is not None
    assert broken.seq == 3
    assert "unsigned record" in broken.reason
    assert walk(records, keys=None) is None  # without keys: only the chain is checked


def test_a_record_appended_under_another_services_name_is_named() -> None:
    # The notifier's database credential and its own key, writing as "executor".
    first = chain(2)
    forged = chain(1, signer=NOTIFIER, actor="executor:e1", start=3, prev=first[-1].hash)
    broken = walk([*first, *forged])
    assert broken is not None
    assert broken.seq == 3
    assert "written by the wrong service" in broken.reason
    assert "notifier audit key" in broken.reason


def test_a_consistently_rehashed_edit_fails_its_signature() -> None:
    records = chain(4)
    # The insider edits record 2 and recomputes every hash after it, head included; the
    # signatures they cannot make, so they keep the old ones.
    edited = chain(3, data={"step": 99}, start=2, prev=records[0].hash, signer=None)
    rehashed = [records[0], *(AuditRecord(**{**r.model_dump(), "key_id": o.key_id,
                                             "signature": o.signature})
                             for r, o in zip(edited, records[1:], strict=True))]
    assert walk(rehashed, keys=None) is None  # chain alone: fine
    broken = walk(rehashed)
    assert broken is not None
    assert broken.seq == 2
    assert "bad signature" in broken.reason


async def test_the_writer_refuses_to_sign_for_another_service() -> None:
    from pymongo import AsyncMongoClient

    from services.runtime.audit import AuditLog

    # Refused before any I/O: the client never connects (nothing listens on port 1).
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient("mongodb://127.0.0.1:1")
    log = AuditLog(client["never"], signer=NOTIFIER)
    with pytest.raises(ValueError, match="notifier audit key cannot sign"):
        await log.append("HD-1", record_id="r", kind="k", actor="executor:e1", data={})
    await client.close()


# --- anchors -----------------------------------------------------------------------------


def test_a_rewritten_history_is_caught_by_its_anchor_even_without_keys() -> None:
    records = chain(4)
    rewritten = [records[0], *chain(3, data={"step": 99}, start=2, prev=records[0].hash)]
    broken = walk(rewritten, keys=None, anchors=(anchor(records[2]),))
    assert broken is not None
    assert broken.seq == 3
    assert "history rewritten" in broken.reason


def test_a_truncated_tail_is_caught_by_its_anchor() -> None:
    records = chain(4)
    assert walk(records[:2]) is None  # the store alone cannot tell: this is what anchors are for
    broken = walk(records[:2], anchors=(anchor(records[3]),))
    assert broken == ChainBreak(
        "HD-1", "executor", 3, "truncated: the chain ends at record 2, but record 4 was "
        "anchored by executor at 2026-11-22T10:00:00.000Z (tail deleted or head rolled back)")


def test_a_legacy_head_rolled_back_over_intact_records_is_caught() -> None:
    records = legacy(chain(4))
    broken = walk(records, head=head_of(records[1]), anchors=(anchor(records[3]),),
                  producer=None)
    assert broken is not None
    assert "head rolled back to record 2" in broken.reason


def test_a_ticket_whose_records_were_all_deleted_is_named() -> None:
    records = chain(3)
    broken = walk([], anchors=(anchor(records[2]),), ticket_has_records=False)
    assert broken is not None
    assert "ticket deleted: its records are gone, but record 3 was anchored" in broken.reason


def test_one_producers_chain_deleted_from_a_ticket_is_named() -> None:
    records = chain(3)
    broken = walk([], anchors=(anchor(records[2]),), ticket_has_records=True)
    assert broken is not None
    assert "chain deleted: the executor records are gone, but record 3" in broken.reason


def test_a_record_moved_into_another_producers_chain_is_named() -> None:
    # The executor's signed records, filed (by a database writer) as the notifier's chain.
    broken = walk(chain(2), producer="notifier", keys=None)
    assert broken == ChainBreak("HD-1", "notifier", 1, "in the notifier chain, but its actor "
                                "is 'executor:e1': record moved between chains")


def test_records_after_the_last_anchor_are_fine() -> None:
    records = chain(5)
    assert walk(records, anchors=(anchor(records[1]),)) is None


def test_anchors_must_be_signed_by_the_service_they_name() -> None:
    records = chain(2)
    good = sign_anchor(anchor(records[1]), EXECUTOR)
    unsigned = anchor(records[0])
    impostor = sign_anchor(anchor(records[1], service="executor"), NOTIFIER)
    tampered = Anchor(**{**good.__dict__, "seq": 1})
    # The notifier's own key, anchoring the executor's chain (which it never writes).
    foreign = sign_anchor(Anchor(**{**anchor(records[1], service="notifier").__dict__}),
                          NOTIFIER)
    read = sort_anchors([encode_anchor(a) for a in (good, unsigned, impostor, tampered, foreign)]
                        + [b"not json"], KEYS)
    assert read.anchors == {"HD-1": [good]}
    assert len(read.untrusted) == 5
    assert any("anchors the executor chain, which notifier never writes" in u
               for u in read.untrusted)
    assert any("signed with the notifier key" in u for u in read.untrusted)
    assert any("unsigned" in u for u in read.untrusted)
    assert any("bad signature" in u for u in read.untrusted)


def test_an_anchor_from_before_per_producer_chains_still_checks() -> None:
    records = legacy(chain(2))
    old = sign_anchor(anchor(records[1]), EXECUTOR)
    assert old.producer is None
    assert old.content().startswith(b"intervention-audit-anchor:v1:")
    read = sort_anchors([encode_anchor(old)], KEYS)
    assert read.anchors == {"HD-1": [old]}
    assert walk(records, anchors=(old,), producer=None) is None


async def test_the_anchor_book_keeps_the_newest_head_and_retries_a_failed_publish() -> None:
    sent: list[tuple[str, bytes]] = []
    failing = True

    async def publish(ticket: str, value: bytes) -> None:
        if failing:
            raise ConnectionError("broker down")
        sent.append((ticket, value))

    book = AnchorBook(service="executor", signer=EXECUTOR, publish=publish)
    records = chain(3)
    for record in (records[1], records[2], records[0]):
        book.note(record)
    assert book.pending == {"HD-1": {"executor": (3, records[2].hash)}}
    assert await book.flush() == 0  # kept for the next round
    assert book.pending == {"HD-1": {"executor": (3, records[2].hash)}}
    failing = False
    assert await book.flush("HD-1") == 1
    assert book.pending == {}
    assert [key for key, _ in sent] == ["HD-1:executor"]  # compacted per chain
    read = sort_anchors([value for _, value in sent], KEYS)
    [published] = read.anchors["HD-1"]
    assert (published.seq, published.hash, published.service, published.producer) == (
        3, records[2].hash, "executor", "executor")
