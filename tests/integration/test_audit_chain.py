"""The audit trail against the real store: per-(ticket, producer) chains written with one
insert each, holding under concurrency and stale in-memory heads; tampering is named.

Every test uses its own collection in the session's database, and tampers with the stored
documents the way someone with database access would: directly. Round trips are counted
with the services' own PyMongo command listener (``StoreRoundTrips``).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.runtime.audit import (
    GENESIS_HASH,
    Anchor,
    AuditContentionError,
    AuditEntry,
    AuditLog,
    AuditRecord,
    ChainBreak,
    record_key,
    verify_chain,
)
from services.runtime.redaction import PLACEHOLDER, default_redactor
from services.runtime.store_metrics import StoreRoundTrips

pytestmark = pytest.mark.integration

Db = AsyncDatabase[dict[str, Any]]
T0 = datetime(2026, 11, 22, 9, 58, tzinfo=UTC)


class Identity:
    """Redaction is not what these tests are about (``test_secrets_never_reach_the_store``)."""

    def redact(self, obj: Any) -> Any:
        return obj


async def fill(audit: AuditLog, ticket: str, n: int, actor: str = "executor") -> None:
    for i in range(1, n + 1):
        await audit.append(
            ticket, record_id=f"evt-{i}", kind="command", actor=actor,
            data={"command": f"step {i}", "exit_status": 0, "duration_ms": 12.5},
            at=T0 + timedelta(seconds=i),
        )


def anchored(record: AuditRecord) -> dict[str, list[Anchor]]:
    """The anchor its producer would have published for ``record`` (unsigned: no keys)."""
    return {record.ticket_id: [Anchor(
        ticket_id=record.ticket_id, producer=record.producer, seq=record.seq,
        hash=record.hash, service=str(record.producer), anchored_at="2026-11-22T10:00:00.000Z")]}


async def only_the_anchor_sees(db: Db, coll: str, anchored_record: AuditRecord,
                               expected: ChainBreak) -> None:
    """The store alone verifies; against ``anchored_record``'s anchor the break shows (its
    reason starting as ``expected``'s)."""
    assert (await verify_chain(db, "HD-1", collection=coll)).ok
    report = await verify_chain(db, "HD-1", collection=coll, anchors=anchored(anchored_record))
    assert report.first_broken is not None
    assert report.first_broken[:3] == expected[:3]
    assert report.first_broken.reason.startswith(expected.reason)


@pytest.fixture
def coll(unique: str) -> str:
    return f"audit_{unique}"


@pytest.fixture
async def audit(mongo_db: Db, coll: str) -> AuditLog:
    log = AuditLog(mongo_db, collection=coll, redactor=Identity())
    await log.ensure_indexes()
    return log


@pytest.fixture
async def counted(real_parts: Any, database_name: str
                  ) -> AsyncIterator[tuple[Db, StoreRoundTrips]]:
    """A database on a client of its own whose every command is counted."""
    trips = StoreRoundTrips()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        real_parts.mongodb_uri, event_listeners=[trips])
    try:
        yield client[database_name], trips
    finally:
        await client.close()


@pytest.fixture
async def counted_log(counted: tuple[Db, StoreRoundTrips], coll: str
                      ) -> tuple[AuditLog, StoreRoundTrips]:
    """A log on the counted client, its indexes made, the count at zero."""
    db, trips = counted
    log = AuditLog(db, collection=coll, redactor=Identity())
    await log.ensure_indexes()
    trips.totals.clear()
    return log, trips


async def test_appends_build_one_valid_chain_per_producer(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    written = [
        await audit.append("HD-1", record_id=f"evt-{i}", kind="event", actor=actor,
                           data={"event_type": "TicketSubmitted", "i": i})
        for i, actor in enumerate(["intake", "auth", "intake", "executor:exec-1", "intake"])
    ]

    stored = await audit.records("HD-1")
    assert stored == written  # one timeline: the chains merged by time
    intake = [r for r in stored if r.producer == "intake"]
    assert [(r.producer, r.seq) for r in stored] == [
        ("intake", 1), ("auth", 1), ("intake", 2), ("executor", 1), ("intake", 3)]
    assert intake[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in intake[1:]] == [r.hash for r in intake[:-1]]
    assert all(r.expected_hash() == r.hash for r in stored)
    ids = sorted([doc["_id"] async for doc in mongo_db[coll].find({}, projection={"_id": 1})])
    assert ids == sorted(record_key("HD-1", r.producer, r.seq) for r in stored)
    assert "HD-1:executor:0000000001" in ids
    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert (report.ok, report.tickets_checked, report.chains_checked,
            report.records_checked) == (True, 1, 3, 5)
    assert report.chain_lengths == {("HD-1", "intake"): 3, ("HD-1", "auth"): 1,
                                    ("HD-1", "executor"): 1}


async def test_a_common_append_is_one_insert_and_reads_nothing(
    counted_log: tuple[AuditLog, StoreRoundTrips], coll: str
) -> None:
    log, trips = counted_log
    # New chains (a ticket's first record from each service), then the chains growing.
    for i in range(5):
        for actor in ("intake", "auth", "executor:exec-1", "notifier"):
            await log.append("HD-1", record_id=f"{actor}-{i}", kind="event", actor=actor,
                             data={"i": i})
    await log.append("HD-2", record_id="first", kind="event", actor="auth", data={})
    assert dict(trips.totals) == {("insert", coll): 21}
    assert log.seq_conflicts == 0


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
            log.append("HD-1", record_id="evt-dup", kind="event", actor=f"auth:w{i}", data={})
            for i, log in enumerate(logs * 3)
        ))
    finally:
        for c in clients:
            await c.close()
    assert len({r.hash for r in results}) == 1
    assert await mongo_db[coll].count_documents({}) == 1


async def test_a_stale_in_memory_head_recovers_by_reading_the_chain_once(
    counted: tuple[Db, StoreRoundTrips], coll: str
) -> None:
    """Two processes of one service write one chain (a rebalance moved the ticket)."""
    db, trips = counted
    first = AuditLog(db, collection=coll, redactor=Identity())
    second = AuditLog(db, collection=coll, redactor=Identity())
    await fill(first, "HD-1", 3, actor="notifier")
    fourth = await second.append("HD-1", record_id="evt-4", kind="event", actor="notifier",
                                 data={})  # knows no head: seq 1 refused, tail read
    assert (fourth.seq, second.seq_conflicts) == (4, 1)
    trips.totals.clear()
    fifth = await first.append("HD-1", record_id="evt-5", kind="event", actor="notifier",
                               data={})  # its head (3) is stale
    assert (fifth.seq, fifth.prev_hash) == (5, fourth.hash)
    assert first.seq_conflicts == 1
    # Refused insert, one read of the chain, the insert that lands.
    assert dict(trips.totals) == {("insert", coll): 2, ("find", coll): 1}
    trips.totals.clear()
    await first.append("HD-1", record_id="evt-6", kind="event", actor="notifier", data={})
    assert dict(trips.totals) == {("insert", coll): 1}  # the head is known again
    report = await verify_chain(db, "HD-1", collection=coll)
    assert (report.ok, report.records_checked) == (True, 6), report.first_broken


async def test_a_redelivery_with_a_warm_head_returns_the_record_already_written(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 3)
    again = await audit.append("HD-1", record_id="evt-2", kind="command", actor="executor",
                               data={"ignored": "the stored record wins"})
    assert (again.seq, again.record_id) == (2, "evt-2")
    nxt = await audit.append("HD-1", record_id="evt-4", kind="command", actor="executor",
                             data={})
    assert nxt.seq == 4
    assert (await verify_chain(mongo_db, "HD-1", collection=coll)).ok


async def test_append_many_writes_many_chains_in_one_ordered_round_trip(
    mongo_db: Db, counted_log: tuple[AuditLog, StoreRoundTrips], coll: str
) -> None:
    log, trips = counted_log
    db = mongo_db
    await log.append("HD-1", record_id="before", kind="event", actor="auth", data={})
    trips.totals.clear()
    entries = [AuditEntry(ticket_id=t, record_id=f"{t}-{i}", kind="event", actor="auth",
                          data={"i": i}) for i in range(3) for t in ("HD-1", "HD-2", "HD-3")]
    records = await log.append_many(entries)
    assert dict(trips.totals) == {("insert", coll): 1}
    assert [r.record_id for r in records] == [e.record_id for e in entries]
    assert [r.seq for r in records if r.ticket_id == "HD-1"] == [2, 3, 4]
    assert [r.seq for r in records if r.ticket_id == "HD-2"] == [1, 2, 3]
    report = await verify_chain(db, collection=coll)
    assert (report.ok, report.records_checked) == (True, 10), report.first_broken
    # A redelivered batch writes nothing new and returns what is stored.
    assert await log.append_many(entries) == records
    assert await db[coll].count_documents({}) == 10


async def test_append_many_after_a_refusal_writes_the_prefix_then_the_rest_in_order(
    mongo_db: Db, coll: str
) -> None:
    ours = AuditLog(mongo_db, collection=coll, redactor=Identity())
    other = AuditLog(mongo_db, collection=coll, redactor=Identity())  # another process
    await fill(ours, "HD-2", 1, actor="auth")
    await other.append("HD-2", record_id="elsewhere", kind="event", actor="auth", data={})
    entries = [AuditEntry(ticket_id=t, record_id=f"batch-{n}", kind="event", actor="auth",
                          data={"n": n}) for n, t in enumerate(["HD-1", "HD-2", "HD-1", "HD-2"])]
    records = await ours.append_many(entries)  # HD-2's cached head (1) is stale at entry 1
    assert [(r.ticket_id, r.seq, r.record_id) for r in records] == [
        ("HD-1", 1, "batch-0"), ("HD-2", 3, "batch-1"), ("HD-1", 2, "batch-2"),
        ("HD-2", 4, "batch-3")]
    assert ours.seq_conflicts == 1
    stored = await ours.records("HD-2")
    assert [r.record_id for r in stored] == ["evt-1", "elsewhere", "batch-1", "batch-3"]
    report = await verify_chain(mongo_db, collection=coll)
    assert (report.ok, report.records_checked) == (True, 6), report.first_broken


async def test_an_audit_batch_is_durable_when_flushed_and_dropped_after_an_error(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    async with audit.batch() as batch:
        batch.add("HD-1", record_id="a", kind="event", actor="intake", data={})
        batch.add("HD-1", record_id="b", kind="event", actor="intake", data={})
        assert await mongo_db[coll].count_documents({}) == 0  # nothing written yet
    assert [r.record_id for r in await audit.records("HD-1")] == ["a", "b"]

    async def failing_handler() -> None:
        async with audit.batch() as batch:
            batch.add("HD-1", record_id="c", kind="event", actor="intake", data={})
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        await failing_handler()
    assert await mongo_db[coll].count_documents({}) == 2
    with pytest.raises(ValueError, match="non-empty record_id"):
        audit.batch().add("HD-1", record_id="", kind="event", actor="intake", data={})


async def test_a_unit_of_work_writes_the_deferred_records_of_its_tasks_in_one_round_trip(
    mongo_db: Db, counted_log: tuple[AuditLog, StoreRoundTrips], coll: str
) -> None:
    log, trips = counted_log

    async def handler(ticket: str) -> None:  # as a consumer runs them: concurrently
        for i in range(2):
            await log.append_later(ticket, record_id=f"evt-{i}", kind="event", actor="auth",
                                   data={"i": i})
        await log.append(ticket, record_id="now", kind="command", actor="auth", data={})

    async with log.unit_of_work():
        await asyncio.gather(handler("HD-1"), handler("HD-2"))
        # Only the two durable appends, made at the same moment on two chains: they share
        # one round trip (services.runtime.group_commit).
        assert dict(trips.totals) == {("insert", coll): 1}
    assert dict(trips.totals) == {("insert", coll): 2}
    assert [r.record_id for r in await log.records("HD-1")] == ["now", "evt-0", "evt-1"]
    report = await verify_chain(mongo_db, collection=coll)
    assert (report.ok, report.records_checked) == (True, 6), report.first_broken
    # Outside a unit, append_later is an append.
    await log.append_later("HD-3", record_id="alone", kind="event", actor="auth", data={})
    assert [r.record_id for r in await log.records("HD-3")] == ["alone"]


async def test_appends_to_many_chains_at_once_share_a_round_trip_each_settled_on_its_own(
    mongo_db: Db, counted: tuple[Db, StoreRoundTrips], coll: str
) -> None:
    db, trips = counted
    first = AuditLog(db, collection=coll, redactor=Identity())
    await first.append("HD-1", record_id="a", kind="event", actor="auth", data={})
    # Another process (no cached heads) appends the same record again (a redelivery) and
    # records of eight other chains, all at the same moment.
    other = AuditLog(db, collection=coll, redactor=Identity())
    await other.ensure_indexes()
    trips.totals.clear()
    again, *fresh = await asyncio.gather(
        other.append("HD-1", record_id="a", kind="event", actor="auth", data={}),
        *(other.append(f"HD-{n}", record_id="x", kind="event", actor="auth", data={"n": n})
          for n in range(2, 10)))
    assert again.seq == 1
    assert [r.seq for r in fresh] == [1] * 8
    assert [r.record_id for r in await other.records("HD-1")] == ["a"]  # not written twice
    inserts = trips.totals[("insert", coll)]
    assert inserts <= 2, dict(trips.totals)  # nine appends: one group (+ a straggler at most)
    report = await verify_chain(mongo_db, collection=coll)
    assert (report.ok, report.records_checked) == (True, 9), report.first_broken


async def test_the_per_ticket_chains_unique_indexes_are_dropped(
    mongo_db: Db, coll: str
) -> None:
    # A store written before chains were per producer: (ticket_id, seq) was unique.
    await mongo_db[coll].create_index([("ticket_id", 1), ("seq", 1)], unique=True,
                                      name="ticket_seq_unique")
    log = AuditLog(mongo_db, collection=coll, redactor=Identity())
    await log.append("HD-1", record_id="a", kind="event", actor="intake", data={})
    await log.append("HD-1", record_id="b", kind="event", actor="auth", data={})  # seq 1 too
    assert "ticket_seq_unique" not in await mongo_db[coll].index_information()
    assert (await verify_chain(mongo_db, "HD-1", collection=coll)).records_checked == 2


async def test_edited_record_is_named_with_its_chain_and_seq(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 5)
    await fill(audit, "HD-1", 2, actor="notifier")
    await mongo_db[coll].update_one({"_id": record_key("HD-1", "executor", 3)},
                                    {"$set": {"data.exit_status": 1}})

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert report.broken == (ChainBreak("HD-1", "executor", 3, "hash mismatch: record edited"),)
    assert str(report.broken[0]) == "ticket HD-1, executor record 3: hash mismatch: record edited"


async def test_edited_actor_or_time_is_detected(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 3)
    await fill(audit, "HD-2", 3)
    await mongo_db[coll].update_one({"_id": record_key("HD-1", "executor", 1)},
                                    {"$set": {"actor": "someone-else"}})
    await mongo_db[coll].update_one({"_id": record_key("HD-2", "executor", 2)},
                                    {"$set": {"at": T0 - timedelta(days=1)}})

    report = await verify_chain(mongo_db, collection=coll)
    assert report.broken == (
        ChainBreak("HD-1", "executor", 1, "hash mismatch: record edited"),
        ChainBreak("HD-2", "executor", 2, "hash mismatch: record edited"),
    )


async def test_a_record_moved_to_another_producers_chain_is_named(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 2)
    await fill(audit, "HD-1", 1, actor="notifier")
    # The executor's record 2 refiled as the notifier's record 2 (hash and link intact).
    doc = await mongo_db[coll].find_one({"_id": record_key("HD-1", "executor", 2)})
    assert doc is not None
    notifier_1 = await mongo_db[coll].find_one({"_id": record_key("HD-1", "notifier", 1)})
    assert notifier_1 is not None
    await mongo_db[coll].delete_one({"_id": doc["_id"]})
    await mongo_db[coll].insert_one({**doc, "_id": record_key("HD-1", "notifier", 2),
                                     "producer": "notifier"})
    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert ChainBreak("HD-1", "notifier", 2, "prev_hash does not match record 1") in report.broken


async def test_deleted_middle_record_is_a_seq_gap(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 5)
    await mongo_db[coll].delete_one({"_id": record_key("HD-1", "executor", 3)})

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert report.first_broken == ChainBreak("HD-1", "executor", 3, "seq gap: record 3 missing")


async def test_deleted_tail_is_caught_by_the_anchor(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 5)
    [*_, fifth] = await audit.records("HD-1")
    await mongo_db[coll].delete_many({"ticket_id": "HD-1", "seq": {"$gte": 4}})

    await only_the_anchor_sees(mongo_db, coll, fifth,
                               ChainBreak("HD-1", "executor", 4, "truncated: the chain ends at "
                                          "record 3, but record 5 was anchored by executor"))


async def test_ticket_and_chain_with_every_record_deleted_are_still_found(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 2)
    await fill(audit, "HD-1", 2, actor="notifier")
    await fill(audit, "HD-2", 2)
    [*_, notifier_head] = [r for r in await audit.records("HD-1") if r.producer == "notifier"]
    [*_, hd2_head] = await audit.records("HD-2")
    await mongo_db[coll].delete_many({"ticket_id": "HD-1", "producer": "notifier"})
    await mongo_db[coll].delete_many({"ticket_id": "HD-2"})

    report = await verify_chain(mongo_db, collection=coll,
                                anchors={**anchored(notifier_head), **anchored(hd2_head)})
    assert report.tickets_checked == 2
    assert [(b.ticket_id, b.producer, b.reason.split(",")[0]) for b in report.broken] == [
        ("HD-1", "notifier", "chain deleted: the notifier records are gone"),
        ("HD-2", "executor", "ticket deleted: its records are gone"),
    ]


async def test_losing_every_race_ends_in_a_clear_error(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 1)
    impatient = AuditLog(mongo_db, collection=coll, redactor=Identity(), max_attempts=1)

    with pytest.raises(AuditContentionError, match=r"HD-1.*lost the race") as caught:
        await impatient.append("HD-1", record_id="evt-2", kind="event", actor="executor",
                               data={})
    assert caught.value.ticket_id == "HD-1"


async def test_swapped_records_are_detected(mongo_db: Db, audit: AuditLog, coll: str) -> None:
    await fill(audit, "HD-1", 5)
    records = mongo_db[coll]
    # Three moves because the unique (ticket_id, producer, seq) index forbids a direct swap.
    await records.update_one({"ticket_id": "HD-1", "seq": 2}, {"$set": {"seq": 99}})
    await records.update_one({"ticket_id": "HD-1", "seq": 3}, {"$set": {"seq": 2}})
    await records.update_one({"ticket_id": "HD-1", "seq": 99}, {"$set": {"seq": 3}})

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert report.first_broken == ChainBreak("HD-1", "executor", 2,
                                             "prev_hash does not match record 1")


async def test_rewritten_chain_with_recomputed_hashes_is_caught_by_the_anchor(
    mongo_db: Db, audit: AuditLog, coll: str
) -> None:
    await fill(audit, "HD-1", 2)
    [_, second] = await audit.records("HD-1")
    forged = AuditLog(mongo_db, collection=f"{coll}_forged", redactor=Identity())
    await forged.append("HD-1", record_id="evt-1", kind="command", actor="executor",
                        data={"command": "step 1", "exit_status": 0, "duration_ms": 12.5},
                        at=T0 + timedelta(seconds=1))
    fake = await forged.append("HD-1", record_id="evt-2", kind="command", actor="executor",
                               data={"command": "nothing to see", "exit_status": 0},
                               at=T0 + timedelta(seconds=2))
    # A consistent forgery of record 2 (valid hash and link); the anchor remembers.
    await mongo_db[coll].replace_one({"_id": fake.to_stored()["_id"]}, fake.to_document())

    await only_the_anchor_sees(mongo_db, coll, second,
                               ChainBreak("HD-1", "executor", 2, "history rewritten: record 2 "
                                          "is not the one anchored by executor"))


async def test_four_services_appending_to_one_ticket_never_contend(
    mongo_db: Db, real_parts: Any, coll: str
) -> None:
    """Four clients stand in for four service processes; each fires 30 appends at once."""
    services = ["intake", "auth", "executor", "notifier"]
    clients = [AsyncMongoClient[dict[str, Any]](real_parts.mongodb_uri) for _ in services]
    try:
        logs = [AuditLog(c[mongo_db.name], collection=coll, redactor=Identity())
                for c in clients]
        await asyncio.gather(*(
            log.append("HD-1", record_id=f"{s}-evt-{i}", kind="event", actor=s, data={"i": i})
            for s, log in zip(services, logs, strict=True) for i in range(30)
        ))
    finally:
        for c in clients:
            await c.close()

    report = await verify_chain(mongo_db, "HD-1", collection=coll)
    assert (report.ok, report.chains_checked, report.records_checked) == (True, 4, 120), (
        report.first_broken)
    assert sum(log.seq_conflicts for log in logs) == 0
    stored = await AuditLog(mongo_db, collection=coll, redactor=Identity()).records("HD-1")
    assert [r.at for r in stored] == sorted(r.at for r in stored)  # one timeline, by time
    for s in services:
        assert [r.seq for r in stored if r.producer == s] == list(range(1, 31))


async def test_many_writers_of_one_chain_contending_hard_still_give_one_chain(
    mongo_db: Db, real_parts: Any, coll: str
) -> None:
    """Six processes of one service (three per client, no shared in-process lock and no
    shared head) on one chain at once: the unique _id decides every race."""
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
    assert sum(log.seq_conflicts for log in logs) > 0, "the writers never actually raced"


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
    blob = b"".join(bson.encode(doc) for doc in raw)
    for leaked in (canary, unlearnt, base64.b64encode(canary.encode()).decode()):
        assert leaked.encode() not in blob
    data = raw[0]["data"]
    assert data["output"].startswith(f"root password changed to {PLACEHOLDER}")
    assert data["credentials"] == {"username": "root", "password": PLACEHOLDER}
    assert data["exit_status"] == 0
    # The hash covers the redacted form, so the stored chain verifies.
    assert (await verify_chain(mongo_db, "HD-1", collection=coll)).ok
