"""Lease take-overs on the real FerretDB: many concurrent takers, exactly one winner.

On FerretDB 1.24 a conditional update is a read and a whole-document write with nothing in
between, so ``find_one_and_update({_id, lease_until: {$lt: now}})`` lets several callers
"win" (measured before these stores changed: 1 to 8 winners of 20). Every take-over here
is decided by the insert of a unique ``_id`` instead; these tests race 20 takers, as 20
tasks on one connection and as 20 separate ``AsyncMongoClient`` connections.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.executor.claims import ClaimStore, Owner, StaleRevision, lease_id
from services.executor.manual import ManualSteps, wait_id
from services.executor.runbooks.engine import JournalEntry, LeaseLost
from services.intake.outbox import Entry as OutboxEntry
from services.intake.outbox import MongoOutbox
from services.intake.store import Claim as IntakeClaim
from services.notifier.claims import Claims
from services.runtime.crypto import PrivateSealingKey
from services.runtime.store_metrics import StoreRoundTrips

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
from executor_verdicts import verdict

pytestmark = pytest.mark.integration

TAKERS = 20
T = TypeVar("T")


@pytest.fixture
async def databases(real_parts: Any, database_name: str
                    ) -> AsyncIterator[list[AsyncDatabase[dict[str, Any]]]]:
    """This run's database through ``TAKERS`` separate client connections."""
    clients: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(real_parts.mongodb_uri, tz_aware=True) for _ in range(TAKERS)]
    dbs = [client[database_name] for client in clients]
    await asyncio.gather(*(db.command("ping") for db in dbs))  # connected before the race
    yield dbs
    for client in clients:
        await client.close()


async def race(make: Callable[[int], Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*(make(i) for i in range(TAKERS))))


def owner(name: str) -> Owner:
    # Another machine's process: only an expired lease lets anyone take its claims.
    return Owner(id=name, host="elsewhere", boot_id="", pid_ns="", pid=1, started="")


async def abandoned_claim(db: AsyncDatabase[dict[str, Any]], unique: str) -> str:
    claim_id = f"T-{unique}-{uuid4().hex[:6]}:1"
    now = datetime.now(UTC)
    await db[ClaimStore.CLAIMS].insert_one({
        "_id": claim_id, "ticket_id": claim_id.split(":")[0], "revision": 1,
        "verdict_event_id": str(uuid4()), "verdict": "{}", "trace": {}, "status": "open",
        "owner": owner("crashed").to_doc(), "lease_until": now - timedelta(seconds=5),
        "attempt": 0, "decision": None, "steps": {}, "outbox": {}, "created_at": now})
    return claim_id


async def acquired_claim(db: AsyncDatabase[dict[str, Any]], unique: str, name: str, *,
                         lease_s: float = 30) -> tuple[ClaimStore, str, Owner]:
    """An abandoned claim, taken over by ``name`` (attempt 1)."""
    claim_id = await abandoned_claim(db, unique)
    store, me = ClaimStore(db), owner(name)
    assert await store.acquire(claim_id, me, lease_s=lease_s) is not None
    return store, claim_id, me


async def expire(db: AsyncDatabase[dict[str, Any]], claim_id: str, attempt: int) -> None:
    await db[ClaimStore.LEASES].update_one(
        {"_id": lease_id(claim_id, attempt)},
        {"$set": {"lease_until": datetime.now(UTC) - timedelta(seconds=5)}})


# --- executor claims ----------------------------------------------------------------------


@pytest.mark.parametrize("connections", ["one", "separate"])
async def test_executor_takeover_of_an_expired_lease_has_one_winner(
        databases: list[AsyncDatabase[dict[str, Any]]], unique: str, connections: str) -> None:
    db = databases[0]
    claim_id = await abandoned_claim(db, unique)
    stores = [ClaimStore(databases[i] if connections == "separate" else db)
              for i in range(TAKERS)]
    for attempt in range(1, 4):  # the winner "crashes" too, and so on

        async def take(i: int, attempt: int = attempt) -> Any:
            return await stores[i].acquire(claim_id, owner(f"executor-{attempt}-{i}"),
                                           lease_s=30)

        results = await race(take)
        winners = [c for c in results if c is not None]
        assert len(winners) == 1, f"attempt {attempt}: {len(winners)} winners"
        assert winners[0].attempt == attempt
        current = await stores[0].get(claim_id)
        assert current is not None
        assert current.attempt == attempt
        assert current.owner is not None
        assert current.owner.id == winners[0].owner.id
        await expire(db, claim_id, attempt)


async def test_a_live_lease_is_not_taken_and_renewals_keep_it(
        mongo_db: AsyncDatabase[dict[str, Any]], unique: str) -> None:
    claim_id = await abandoned_claim(mongo_db, unique)
    store, other = ClaimStore(mongo_db), ClaimStore(mongo_db)
    me = owner("me")
    claim = await store.acquire(claim_id, me, lease_s=30)
    assert claim is not None
    assert claim.attempt == 1
    await store.renew(claim_id, me, lease_s=30)
    assert await other.acquire(claim_id, owner("rival"), lease_s=30) is None
    await store.record_step(claim_id, me, 0, JournalEntry(name="detect", state="changing"))
    stored = await other.get(claim_id)
    assert stored is not None
    assert stored.steps["000"]["name"] == "detect"


async def test_a_taken_over_owner_is_fenced_even_when_a_stale_write_restores_it(
        mongo_db: AsyncDatabase[dict[str, Any]], unique: str) -> None:
    claim_id = await abandoned_claim(mongo_db, unique)
    old_store, new_store = ClaimStore(mongo_db), ClaimStore(mongo_db)
    old, new = owner("old"), owner("new")
    assert await old_store.acquire(claim_id, old, lease_s=30) is not None
    await expire(mongo_db, claim_id, 1)  # the old owner stalled past its lease
    taken = await new_store.acquire(claim_id, new, lease_s=30)
    assert taken is not None
    assert taken.attempt == 2
    # A late whole-document write by the old owner puts its name back on the claim
    # document (what FerretDB's read-then-replace update can do): nobody is fooled.
    await mongo_db[ClaimStore.CLAIMS].update_one(
        {"_id": claim_id}, {"$set": {"owner": old.to_doc(), "attempt": 1}})
    with pytest.raises(LeaseLost):
        await old_store.record_step(claim_id, old, 0, JournalEntry(name="x", state="changing"))
    with pytest.raises(LeaseLost):
        await old_store.renew(claim_id, old, lease_s=30)
    with pytest.raises(LeaseLost):
        await old_store.stage(claim_id, old, "a_started", "{}")
    await new_store.record_step(claim_id, new, 0, JournalEntry(name="y", state="changing"))
    await new_store.renew(claim_id, new, lease_s=30)
    current = await new_store.get(claim_id)
    assert current is not None
    assert (current.attempt, current.owner.id if current.owner else None) == (2, "new")
    assert current.steps["000"]["name"] == "y"


async def test_an_owner_whose_lease_ran_out_stops_before_writing(
        mongo_db: AsyncDatabase[dict[str, Any]], unique: str) -> None:
    store, claim_id, me = await acquired_claim(mongo_db, unique, "slow", lease_s=0.6)
    await asyncio.sleep(0.6)  # no renewal got through: under a sixth of the lease is left
    with pytest.raises(LeaseLost):
        await store.record_step(claim_id, me, 0, JournalEntry(name="x", state="changing"))
    current = await store.get(claim_id)
    assert current is not None
    assert current.steps == {}


async def test_renewals_never_lose_a_concurrent_journal_write(
        mongo_db: AsyncDatabase[dict[str, Any]], unique: str) -> None:
    # Two concurrent $set of different fields of one document lose one on FerretDB; the
    # lease lives in its own document so the heartbeat cannot erase journal entries.
    claim_id = await abandoned_claim(mongo_db, unique)
    store = ClaimStore(mongo_db)
    me = owner("busy")
    assert await store.acquire(claim_id, me, lease_s=30) is not None

    done = asyncio.Event()

    async def renew_all_the_time() -> int:
        renewals = 0
        while not done.is_set():
            await store.renew(claim_id, me, lease_s=30)
            renewals += 1
        return renewals

    async def journal() -> None:  # one owner's journal writes are sequential, as in the engine
        for index in range(30):
            await store.record_step(claim_id, me, index,
                                    JournalEntry(name=f"s{index}", state="changing"))
        done.set()

    renewals, _ = await asyncio.gather(renew_all_the_time(), journal())
    assert renewals > 5
    current = await store.get(claim_id)
    assert current is not None
    assert sorted(current.steps) == [f"{i:03d}" for i in range(30)]


async def test_reopening_a_parked_claim_has_one_winner(
        databases: list[AsyncDatabase[dict[str, Any]]], unique: str) -> None:
    db = databases[0]
    claim_id = await abandoned_claim(db, unique)
    store = ClaimStore(db)
    me = owner("parker")
    assert await store.acquire(claim_id, me, lease_s=30) is not None
    await store.close(claim_id, me, "handed_over", handover={"step_id": "r1-resume"})
    stores = [ClaimStore(databases[i]) for i in range(TAKERS)]
    reopened = await race(lambda i: stores[i].reopen(claim_id))
    assert sum(reopened) == 1
    claim = await store.get(claim_id)
    assert claim is not None
    assert (claim.status, claim.resumptions, claim.lease_released) == ("open", 1, True)
    # Released on parking: taken at once by another executor, no lease to wait out.
    taken = await stores[1].acquire(claim_id, owner("next"), lease_s=30)
    assert taken is not None
    assert taken.attempt == 2
    assert taken.failed_attempts == 1


def verdict_for(ticket_id: str, revision: int = 1) -> Any:
    return verdict(signing_key=None, sealing_key=PrivateSealingKey.generate().public,
                   username="root", password="pw", ticket_id=ticket_id, revision=revision)


async def create(store: ClaimStore, event: Any, who: Owner, lease_s: float = 30) -> Any:
    return await store.create(event, verdict_json=event.model_dump_json(), trace_carrier={},
                              owner=who, lease_s=lease_s)


async def test_the_creator_runs_attempt_1_without_reading_the_claim_back(
        real_parts: Any, database_name: str, mongo_db: AsyncDatabase[dict[str, Any]],
        unique: str) -> None:
    counted = StoreRoundTrips()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        real_parts.mongodb_uri, tz_aware=True, event_listeners=[counted])
    try:
        store, other = ClaimStore(client[database_name]), ClaimStore(mongo_db)
        me = owner("creator")
        claim, created = await create(store, verdict_for(f"T-{unique}"), me)
        assert created
        taken = await store.acquire(claim.id, me, lease_s=30)
        assert taken is not None
        assert (taken.attempt, taken.owner.id if taken.owner else None) == (1, "creator")
        # Two inserts in all: the ticket record and the claim. Nothing read back.
        assert sorted(counted.totals) == [("insert", ClaimStore.CLAIMS),
                                          ("insert", ClaimStore.TICKETS)]
        assert counted.total() == 2
        # Its lease is the claim document's: nobody else takes the claim while it lasts,
        assert await other.acquire(claim.id, owner("rival"), lease_s=30) is None
        # and a taker after it ran out is attempt 2, which fences the creator.
        await mongo_db[ClaimStore.CLAIMS].update_one(
            {"_id": claim.id}, {"$set": {"lease_until": datetime.now(UTC)}})
        rival = await other.acquire(claim.id, owner("rival"), lease_s=30)
        assert rival is not None
        assert rival.attempt == 2
        with pytest.raises(LeaseLost):
            await store.record_step(claim.id, me, 0, JournalEntry(name="x", state="changing"))
    finally:
        await client.close()


async def test_a_claim_queued_for_long_is_renewed_or_taken_anew_before_it_runs(
        mongo_db: AsyncDatabase[dict[str, Any]], unique: str) -> None:
    store = ClaimStore(mongo_db)
    me = owner("queued")
    lease = 3.0
    # Waited past a third of the lease: renewed first (the heartbeat comes a third later).
    waited, _ = await create(store, verdict_for(f"T-{unique}-a"), me, lease_s=lease)
    await asyncio.sleep(1.2)
    taken = await store.acquire(waited.id, me, lease_s=lease)
    assert taken is not None
    assert taken.attempt == 1
    renewed = await mongo_db[ClaimStore.LEASES].find_one({"_id": lease_id(waited.id, 1)})
    assert renewed is not None
    assert renewed["lease_until"].replace(tzinfo=UTC) > datetime.now(UTC) + timedelta(
        seconds=lease * 0.8)
    # Waited until too little was left to write: taken as a new attempt, as after a crash.
    late, _ = await create(store, verdict_for(f"T-{unique}-b"), me, lease_s=lease)
    await asyncio.sleep(2.6)
    retaken = await store.acquire(late.id, me, lease_s=lease)
    assert retaken is not None
    assert retaken.attempt == 2


async def test_revisions_are_claimed_once_and_never_after_a_newer_one(
        mongo_db: AsyncDatabase[dict[str, Any]], unique: str) -> None:
    store = ClaimStore(mongo_db)
    me = owner("claimer")
    ticket = f"T-{unique}"
    first = verdict_for(ticket, revision=2)
    claim, created = await create(store, first, me)
    assert created
    again, created_again = await create(store, first, me)
    assert (again.id, created_again) == (claim.id, False)
    await store.close(claim.id, me, "finished", outcome="resolved")
    # Finished and archived: a later verdict for the revision still finds it.
    archived, made = await create(store, verdict_for(ticket, revision=2), me)
    assert (archived.id, archived.status, made) == (claim.id, "finished", False)
    with pytest.raises(StaleRevision):
        await create(store, verdict_for(ticket, revision=1), me)
    follow_up, made = await create(store, verdict_for(ticket, revision=3), me)
    assert (follow_up.revision, made) == (3, True)
    with pytest.raises(StaleRevision):
        await create(store, verdict_for(ticket, revision=2), me)


async def test_a_ticket_record_without_its_claim_is_claimed_on_redelivery(
        mongo_db: AsyncDatabase[dict[str, Any]], unique: str) -> None:
    # A crash between the ticket record and the claim insert: the verdict's redelivery
    # (its offset was never committed) makes the claim.
    event = verdict_for(f"T-{unique}")
    await mongo_db[ClaimStore.TICKETS].insert_one({
        "_id": event.ticket_id, "latest_revision": 1, "verdict_event_id": str(event.event_id)})
    claim, created = await create(ClaimStore(mongo_db), event, owner("redelivered"))
    assert created
    assert claim.id == f"{event.ticket_id}:1"


async def test_a_finished_claim_moves_to_the_archive_with_its_leases_gone(
        mongo_db: AsyncDatabase[dict[str, Any]], unique: str) -> None:
    store, claim_id, me = await acquired_claim(mongo_db, unique, "finisher")
    await store.renew(claim_id, me, lease_s=30)
    await store.record_step(claim_id, me, 0, JournalEntry(name="a", state="done",
                                                          result="ok"))
    await store.stage(claim_id, me, "z_completed", '{"done": true}')
    await store.mark_published(claim_id, me, "z_completed")
    await store.close(claim_id, me, "finished", outcome="resolved")
    assert await mongo_db[ClaimStore.CLAIMS].find_one({"_id": claim_id}) is None
    assert await mongo_db[ClaimStore.LEASES].find_one({"claim_id": claim_id}) is None
    assert claim_id not in await store.open_claim_ids()
    archived = await store.get(claim_id)
    assert archived is not None
    assert (archived.status, archived.attempt) == ("finished", 1)
    # The deferred writes (a step done, the published flag) are in the archived claim.
    assert archived.steps["000"]["state"] == "done"
    assert archived.outbox["z_completed"] == {"event": '{"done": true}', "published": True}


async def test_the_scan_archives_a_finished_claim_left_in_flight(
        mongo_db: AsyncDatabase[dict[str, Any]], unique: str) -> None:
    # Finished before the archive existed, or a crash between archiving and deleting.
    claim_id = await abandoned_claim(mongo_db, unique)
    await mongo_db[ClaimStore.CLAIMS].update_one({"_id": claim_id},
                                                 {"$set": {"status": "finished"}})
    store = ClaimStore(mongo_db)
    assert claim_id not in await store.open_claim_ids()
    assert await mongo_db[ClaimStore.CLAIMS].find_one({"_id": claim_id}) is None
    archived = await store.get(claim_id)
    assert archived is not None
    assert archived.status == "finished"


# --- intake ---------------------------------------------------------------------------------


@pytest.mark.parametrize("connections", ["one", "separate"])
async def test_intake_outbox_entry_of_a_revision_has_one_winner(
        databases: list[AsyncDatabase[dict[str, Any]]], unique: str, connections: str) -> None:
    """A pending claim never made durable is finished by whoever retries first: of many
    concurrent retries, one entry lands, and every other retry reads that one (so only one
    TicketSubmitted's bytes can ever be published for the revision)."""
    db = databases[0]
    claim = IntakeClaim(
        ticket_id=f"T-{unique}-{connections}", revision=1, fingerprint="f" * 64,
        event_id=uuid4(), source="http", account_id="ACC-1", category="diagnostics",
        category_source="rules", scope="included", confidence="high", status="pending",
        claimed_at=datetime.now(UTC) - timedelta(minutes=5))
    outboxes = [MongoOutbox(databases[i] if connections == "separate" else db)
                for i in range(TAKERS)]

    async def put(i: int) -> OutboxEntry | None:
        return await outboxes[i].put(OutboxEntry(
            ticket_id=claim.ticket_id, revision=1, fingerprint=claim.fingerprint,
            event=f'{{"taker": {i}}}', claim=claim, accepted_at=datetime.now(UTC)))

    results = await race(put)
    winners = [i for i, r in enumerate(results) if r is None]
    assert len(winners) == 1, f"{len(winners)} winners"
    assert {r.event for r in results if r is not None} == {f'{{"taker": {winners[0]}}}'}
    stored = await outboxes[0].get(f"{claim.ticket_id}:1")
    assert stored is not None
    assert stored.event == f'{{"taker": {winners[0]}}}'
    await outboxes[0].remove(stored.key)
    assert await outboxes[0].get(stored.key) is None


# --- notifier fire-once claims ------------------------------------------------------------


@pytest.mark.parametrize("connections", ["one", "separate"])
async def test_notifier_takeover_of_an_expired_claim_has_one_winner(
        databases: list[AsyncDatabase[dict[str, Any]]], unique: str, connections: str) -> None:
    collection = f"test_fire_once_{unique}"
    lease = timedelta(seconds=60)
    claims = [Claims(databases[i] if connections == "separate" else databases[0], collection,
                     lease=lease) for i in range(TAKERS)]
    key = "post-1|slack"
    start = datetime.now(UTC) - timedelta(minutes=10)
    first = await claims[0].claim(key, now=start, owner="crashed")
    assert first.outcome == "won"
    for round_ in range(1, 3):  # each winner crashes in turn
        now = start + round_ * 2 * lease

        async def take(i: int, now: datetime = now, round_: int = round_) -> Any:
            return await claims[i].claim(key, now=now, owner=f"n{round_}-{i}")

        results = await race(take)
        outcomes = [c.outcome for c in results]
        assert outcomes.count("taken_over") == 1, outcomes
        assert set(outcomes) == {"taken_over", "held"}
        winner = next(i for i, c in enumerate(results) if c.mine)
        doc = await claims[0].get(key)
        assert doc is not None
        assert doc["owner"] == f"n{round_}-{winner}"
    # Within the lease the holder keeps it; once done, nobody takes it.
    assert (await claims[1].claim(key, now=start + 4 * lease + lease / 2)).outcome == "held"
    await claims[0].complete(key, ref="m1")
    assert (await claims[2].claim(key, now=start + 10 * lease)).outcome == "done"


# --- executor manual steps ----------------------------------------------------------------


async def test_a_manual_step_is_decided_once_by_racing_reports_and_timeouts(
        databases: list[AsyncDatabase[dict[str, Any]]], unique: str) -> None:
    from schemas.events import ManualStepCompleted

    ticket = f"T-{unique}"
    steps = [ManualSteps(db) for db in databases]
    await steps[0].open(claim_id=f"{ticket}:1", ticket_id=ticket, revision=1,
                        step_id="r1-resume", kind="resume", method="ssh", title="Finish",
                        deadline=datetime.now(UTC) - timedelta(seconds=1))
    key = wait_id(f"{ticket}:1", "r1-resume")

    def report(i: int) -> ManualStepCompleted:
        return ManualStepCompleted.new(
            ticket_id=ticket, revision=1, step_id="r1-resume",
            status="done" if i % 2 else "failed", engineer_id=f"eng-{i}",
            display_name=f"Engineer {i}", channel="slack", notes=f"report {i}")

    reports = {i: report(i) for i in range(TAKERS) if i % 4}

    async def act(i: int) -> bool:
        if i in reports:
            _, decided = await steps[i].report(reports[i])
            return decided
        await steps[i].expire(key)
        return False

    decided = await race(act)
    final = await steps[0].get(key)
    assert final is not None
    assert final.status != "waiting"
    if sum(decided) == 1:  # a report won: the step says what that report said
        winner = reports[decided.index(True)]
        assert final.status == winner.status
        assert final.report is not None
        assert final.report["event_id"] == str(winner.event_id)
    else:  # the deadline won: no report counts as deciding
        assert sum(decided) == 0
        assert final.status == "timed_out"
        assert final.report is None
    # A redelivery of the deciding report still counts as the deciding one; others do not.
    for i, event in reports.items():
        _, again = await steps[0].report(event)
        assert again == (sum(decided) == 1 and decided[i])
