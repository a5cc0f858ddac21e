"""The audit trail against the real store: chains hold under concurrency, tampering is named.

Every test uses its own collection (and heads collection) in the session's database, and
tampers with the stored documents the way someone with database access would: directly.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.runtime.audit import (
    GENESIS_HASH,
    AuditContentionError,
    AuditLog,
    ChainBreak,
    heads_collection,
    verify_chain,
)
from services.runtime.redaction import PLACEHOLDER, default_redactor

pytestmark = pytest.mark.integration

Db = AsyncDatabase[dict[str, Any]]
T0 = datetime(2026, 11, 22, 9, 58, tzinfo=UTC)


class Identity:
    """Redaction is not what these tests are about (``test_secrets_never_reach_the_store``)."""

    def redact(self, obj: Any) -> Any:
        return obj


async def fill(audit: AuditLog, ticket: str, n: int) -> None:
    for i in range(1, n + 1):
        await audit.append(
            ticket, record_id=f"evt-{i}", kind="command", actor="executor",
            data={"command": f"step {i}", "exit_status": 0, "duration_ms": 12.5},
            at=T0 + timedelta(seconds=i),
        )


@pytest.fixture
def coll(unique: str) -> str:
    return f"audit_{unique}"


@pytest.fixture
async def audit(mongo_db: Db, coll: str) -> AuditLog:
    log = AuditLog(mongo_db, collection=coll, redactor=Identity())
    await log.ensure_indexes()
    return log


async def test_appends_build_a_valid_chain(mongo_db: Db, audit: AuditLog, coll: str) -> None:
    written = [
        await audit.append("HD-1", record_id=f"evt-{i}", kind="event", actor="intake",
                           data={"event_type": "TicketSubmitted", "i": i})
        for i in range(1, 4)
    ]

    stored = await audit.records("HD-1")
    assert stored == written
    assert [r.seq for r in stored] == [1, 2, 3]
    assert stored[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in stored[1:]] == [r.hash for r in stored[:-1]]
    assert all(r.expected_hash() == r.hash for r in stored)
    head = await mongo_db[heads_collection(coll)].find_one({"_id": "HD-1"})
    assert head == {"_id": "HD-1", "seq": 3, "head": f"{3:020d}:{stored[-1].hash}"}
    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert (report.ok, report.tickets_checked, report.records_checked) == (True, 1, 3)


async def test_same_record_id_twice_is_written_once(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    first = await audit.append("HD-1", record_id="evt-1", kind="event", actor="auth",
                               data={"n": 1})
    again = await audit.append("HD-1", record_id="evt-1", kind="event", actor="auth",
                               data={"n": 1})
    await audit.append("HD-1", record_id="evt-2", kind="event", actor="auth", data={"n": 2})

    assert again == first
    assert await mongo_db[coll].count_documents({"ticket_id": "HD-1"}) == 2
    assert (await verify_chain(mongo_db, "HD-1", collection=coll)).ok


async def test_concurrent_redeliveries_of_one_record_write_it_once(
    mongo_db: Db, real_parts: Any, coll: str
) -> None:
    clients = [AsyncMongoClient[dict[str, Any]](real_parts.mongodb_uri) for _ in range(2)]
    try:
        logs = [AuditLog(c[mongo_db.name], collection=coll, redactor=Identity()) for c in clients]
        results = await asyncio.gather(*(
            log.append("HD-1", record_id="evt-dup", kind="event", actor=f"w{i}", data={})
            for i, log in enumerate(logs * 3)
        ))
    finally:
        for c in clients:
            await c.close()
    assert len({r.hash for r in results}) == 1
    assert await mongo_db[coll].count_documents({}) == 1


async def test_edited_record_is_named_with_its_seq(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 5)
    await mongo_db[coll].update_one({"ticket_id": "HD-1", "seq": 3},
                                    {"$set": {"data.exit_status": 1}})

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert not report.ok
    assert report.first_broken == ChainBreak("HD-1", 3, "hash mismatch: record edited")


async def test_edited_actor_or_time_is_detected(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 3)
    await fill(audit, "HD-2", 3)
    await mongo_db[coll].update_one({"ticket_id": "HD-1", "seq": 1},
                                    {"$set": {"actor": "someone-else"}})
    await mongo_db[coll].update_one({"ticket_id": "HD-2", "seq": 2},
                                    {"$set": {"at": T0 - timedelta(days=1)}})

    report = await verify_chain(mongo_db, collection=coll)
    assert report.broken == (
        ChainBreak("HD-1", 1, "hash mismatch: record edited"),
        ChainBreak("HD-2", 2, "hash mismatch: record edited"),
    )


async def test_deleted_middle_record_is_a_seq_gap(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 5)
    await mongo_db[coll].delete_one({"ticket_id": "HD-1", "seq": 3})

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert report.first_broken == ChainBreak("HD-1", 3, "seq gap: record 3 missing")


async def test_deleted_tail_is_caught_by_the_head(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 5)
    await mongo_db[coll].delete_many({"ticket_id": "HD-1", "seq": {"$gte": 4}})

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert report.first_broken == ChainBreak(
        "HD-1", 4, "head points past the last record: tail deleted"
    )


async def test_ticket_with_every_record_deleted_is_still_found(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 2)
    await fill(audit, "HD-2", 2)
    await mongo_db[coll].delete_many({"ticket_id": "HD-2"})

    report = await verify_chain(mongo_db, collection=coll)
    assert report.tickets_checked == 2
    assert report.broken == (
        ChainBreak("HD-2", 1, "head points past the last record: tail deleted"),
    )


async def test_head_lagging_behind_after_a_crash_is_not_tampering(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 3)
    records = await audit.records("HD-1")
    # As if the writer died between inserting record 3 and moving the head.
    await mongo_db[heads_collection(coll)].update_one(
        {"_id": "HD-1"}, {"$set": {"seq": 2, "head": f"{2:020d}:{records[1].hash}"}}
    )
    assert (await verify_chain(mongo_db, "HD-1", collection=coll)).ok

    # The redelivered append finds its record and finishes the head.
    await audit.append("HD-1", record_id="evt-3", kind="command", actor="executor", data={})
    head = await mongo_db[heads_collection(coll)].find_one({"_id": "HD-1"})
    assert head is not None
    assert head["seq"] == 3


async def test_writer_dying_between_its_two_writes_does_not_stall_the_next(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 3)
    records = await audit.records("HD-1")
    await mongo_db[heads_collection(coll)].update_one(
        {"_id": "HD-1"}, {"$set": {"seq": 2, "head": f"{2:020d}:{records[1].hash}"}}
    )
    other = AuditLog(mongo_db, collection=coll, redactor=Identity())  # another process

    fourth = await other.append("HD-1", record_id="evt-4", kind="event", actor="notifier",
                                data={})

    assert (fourth.seq, fourth.prev_hash) == (4, records[2].hash)
    assert (await verify_chain(mongo_db, "HD-1", collection=coll)).ok


async def test_losing_every_race_ends_in_a_clear_error(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 1)
    await mongo_db[heads_collection(coll)].delete_one({"_id": "HD-1"})
    impatient = AuditLog(mongo_db, collection=coll, redactor=Identity(), max_attempts=1)

    with pytest.raises(AuditContentionError, match=r"HD-1.*lost the race") as caught:
        await impatient.append("HD-1", record_id="evt-2", kind="event", actor="a", data={})
    assert caught.value.ticket_id == "HD-1"


async def test_swapped_records_are_detected(mongo_db: Db, audit: AuditLog, coll: str) -> None:
    await fill(audit, "HD-1", 5)
    records = mongo_db[coll]
    # Three moves because the unique (ticket_id, seq) index forbids a direct swap.
    await records.update_one({"ticket_id": "HD-1", "seq": 2}, {"$set": {"seq": 99}})
    await records.update_one({"ticket_id": "HD-1", "seq": 3}, {"$set": {"seq": 2}})
    await records.update_one({"ticket_id": "HD-1", "seq": 99}, {"$set": {"seq": 3}})

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert report.first_broken == ChainBreak("HD-1", 2, "prev_hash does not match record 1")


async def test_rewritten_chain_with_recomputed_hashes_is_caught_by_the_head(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 2)
    forged = AuditLog(mongo_db, collection=f"{coll}_forged", redactor=Identity())
    await forged.append("HD-1", record_id="evt-1", kind="command", actor="executor",
                        data={"command": "step 1", "exit_status": 0, "duration_ms": 12.5},
                        at=T0 + timedelta(seconds=1))
    fake = await forged.append("HD-1", record_id="evt-2", kind="command", actor="executor",
                               data={"command": "nothing to see", "exit_status": 0},
                               at=T0 + timedelta(seconds=2))
    # A consistent forgery of record 2 (valid hash and link), but the head remembers.
    await mongo_db[coll].replace_one({"ticket_id": "HD-1", "seq": 2}, fake.to_document())

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert report.first_broken == ChainBreak(
        "HD-1", 2, "head hash does not match record 2: chain rewritten"
    )


async def test_two_processes_appending_to_one_ticket_give_one_chain(
    mongo_db: Db, real_parts: Any, coll: str
) -> None:
    """Two clients stand in for two services; each fires 30 appends at once."""
    clients = [AsyncMongoClient[dict[str, Any]](real_parts.mongodb_uri) for _ in range(2)]
    try:
        logs = [AuditLog(c[mongo_db.name], collection=coll, redactor=Identity())
                for c in clients]
        await asyncio.gather(*(
            log.append("HD-1", record_id=f"w{w}-evt-{i}", kind="event", actor=f"service-{w}",
                       data={"i": i})
            for w, log in enumerate(logs) for i in range(30)
        ))
    finally:
        for c in clients:
            await c.close()

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert (report.ok, report.records_checked) == (True, 60), report.first_broken
    stored = await AuditLog(mongo_db, collection=coll, redactor=Identity()).records("HD-1")
    assert [r.seq for r in stored] == list(range(1, 61))
    assert {r.record_id for r in stored} == {f"w{w}-evt-{i}" for w in (0, 1) for i in range(30)}
    head = await mongo_db[heads_collection(coll)].find_one({"_id": "HD-1"})
    assert head is not None
    assert head["head"] == f"{60:020d}:{stored[-1].hash}"
    assert sum(log.seq_conflicts for log in logs) > 0, "the writers never actually raced"


async def test_many_writers_contending_hard_still_give_one_chain(
    mongo_db: Db, real_parts: Any, coll: str
) -> None:
    """Six writers (three per client, no shared in-process lock) on one ticket at once."""
    clients = [AsyncMongoClient[dict[str, Any]](real_parts.mongodb_uri) for _ in range(2)]
    try:
        logs = [AuditLog(clients[k % 2][mongo_db.name], collection=coll, redactor=Identity())
                for k in range(6)]
        await asyncio.gather(*(
            log.append("HD-1", record_id=f"w{w}-{i}", kind="event", actor="svc", data={})
            for w, log in enumerate(logs) for i in range(8)
        ))
    finally:
        for c in clients:
            await c.close()
    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert (report.ok, report.records_checked) == (True, 48), report.first_broken


async def test_secrets_never_reach_the_store(mongo_db: Db, coll: str, unique: str) -> None:
    """A learnt secret is masked in data and inside command output before hash and write."""
    canary = f"canary-Pw-{unique}-s3cret"
    unlearnt = f"never-learnt-{unique}"
    default_redactor().add(canary)
    audit = AuditLog(mongo_db, collection=coll)  # the process-wide default redactor

    await audit.append("HD-1", record_id="evt-1", kind="command", actor="executor", data={
        "command": "chpasswd",
        "output": f"root password changed to {canary}\nAuthorization: Basic "
                  + base64.b64encode(f"root:{canary}".encode()).decode(),
        "stdout_bytes": f"echo {canary}".encode(),
        "steps": [{"note": f"tried {canary}"}, canary],
        "credentials": {"username": "root", "password": unlearnt},
        "exit_status": 0,
    })

    raw = [doc async for doc in mongo_db[coll].find({})]
    raw += [doc async for doc in mongo_db[heads_collection(coll)].find({})]
    blob = b"".join(bson.encode(doc) for doc in raw)
    for leaked in (canary, unlearnt, base64.b64encode(canary.encode()).decode()):
        assert leaked.encode() not in blob
    data = raw[0]["data"]
    assert data["output"].startswith(f"root password changed to {PLACEHOLDER}")
    assert data["credentials"] == {"username": "root", "password": PLACEHOLDER}
    assert data["exit_status"] == 0
    # The hash covers the redacted form, so the stored chain verifies.
    assert (await verify_chain(mongo_db, "HD-1", collection=coll)).ok
