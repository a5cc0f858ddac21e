"""Claims: the durable "this ticket revision is ours" record, with its step journal and outbox.

One document per ticket revision, ``_id = "<ticket_id>:<revision>"``, inserted before
anything touches the server. FerretDB 1.24 has no transactions, so everything that must
change together lives in this one document:

- ``steps``: the runbook journal (see :mod:`services.executor.runbooks.engine`); every write
  is fenced by the writer's lease epoch (below), which stops an executor that lost its lease;
- ``outbox``: every event the claim publishes, stored *before* it is published and
  re-published verbatim after a crash, so a revision never gets two different
  InterventionCompleted events — the second publish is byte-identical and carries the same
  ``event_id``;
- ``rescue``: the provider-side phases of a rescue-mode run (rescue boot, one-time access
  sealed to the executor's own key, boot back to disk, verification), so a resumed run
  never power-cycles the server twice;
- ``handover``: while an engineer works a manual step the claim is parked
  (``handed_over``, lease released); the engineer's report or the step's deadline re-opens
  it (:meth:`ClaimStore.reopen`) and any executor resumes it.

Only in-flight state on the ticket path. FerretDB 1.24 reads a whole collection for nearly
every query, so a collection the hot path reads must not grow with history:

- ``executor_claims`` holds the claims being run or parked (and those whose executor
  died), nothing else; with the claim queue (below) it is the set the start-up and
  periodic scans resume from. A finished or refused claim is moved,
  final state and all, to ``executor_claims_archive`` (insert first, then delete, so a
  claim is in at least one of them at every moment), and its lease documents are deleted;
- ``executor_tickets`` (``_id`` = ticket, ``latest_revision`` and the verdict that claimed
  it) decides the once-per-revision and stale-revision rules by an *insert*, which costs
  the same at any size: a ticket's first verdict inserts it and reads nothing. Only a
  follow-up revision or a duplicate verdict (the insert is refused) reads it, and then
  the claim (live, queued, else archived): rare paths.

The claim queue. Every update or delete of a claim scans ``executor_claims`` while holding
FerretDB's single write lock, so claims that only wait for a worker are kept out of it:

- the handler asks the worker whether a worker is free for the claim it is about to make
  (:meth:`~services.executor.worker.Worker.slot`). If so, the claim is inserted into
  ``executor_claims`` as above. If not, the same signed document (plus ``queued_in``, the
  partition's name) is inserted into ``executor_claims_queued_<YYYYMMDDHH>`` (this hour, UTC),
  an insert-only collection; either way it is durable before the offset is committed;
- the worker that takes a queued claim inserts it into ``executor_claims``
  (:meth:`ClaimStore._take_queued`). Its creator puts it there with attempt 1's lease
  starting at that moment, so a claim that waited longer than its lease still runs as
  attempt 1 with no lease document. Another executor moves it only once the lease it was
  queued with has run out (or its creator is gone), then takes it the usual way (``a2``).
  A duplicate ``_id`` means someone else moved it: it is then an ordinary open claim. The
  queued copy is never deleted (a delete scans);
- so the queued copy of a finished claim must never be moved in again: before a claim
  that came from the queue leaves ``executor_claims`` for good, a marker ``_id`` = claim
  id is inserted into ``executor_claims_done_<YYYYMMDD>`` (the day of the close, never
  before the day it was queued). Then the archive insert, then the delete. The scan
  offers a queued claim only if it is neither in ``executor_claims`` nor marked (read in
  that order: queue, in flight, done, so a claim closed between the reads is seen in
  flight or as done). A move that raced a close (it read the claim as waiting, and the
  claim was then taken, run and closed elsewhere) is caught after its insert: the marker
  is there, and so is the archived claim, so the copy is deleted again and not run; a
  taker of a copy in flight that came from the queue checks the same (a creator whose
  lease as queued still holds skips the read: nobody else can have taken the claim). A
  marker without the archived claim is a crash between marker and archive: the claim is
  resumed and closed again;
- crash points: after the queue insert, before the offset commit, the redelivered verdict
  finds the queued claim (:meth:`get` reads in flight, then the queue partitions, then the
  archive) and offers it again, and the scan offers it anyway; after the move, before any
  lease document, the claim is an open claim in flight with its creator's lease; between
  marker, archive and delete, see above;
- the scan does not read the queue's history over and over (:mod:`.claim_queue`): a queue
  partition past its hour (plus ``SETTLE_AFTER`` for other executors' clocks) in which
  nothing waited is *settled* in this process (a claim never waits again once it is in
  flight), and neither the scan nor :meth:`get` reads it again; a process's start-up
  scan reads them all once;
- the partitions are dropped whole (:meth:`drop_old_partitions`, run by the scan): a queue
  partition older than the retention (``EXECUTOR_VERDICT_MAX_AGE_S`` plus a day: a claim
  still waiting by then would be refused as stale anyway) once nothing in it waits, and
  a done partition once it is older than the retention and than every queue partition
  left.

Leases. On FerretDB 1.24 a conditional update is a read, then a whole-document write, with
nothing in between: several executors racing with ``find_one_and_update({_id, owner: dead})``
all "won" (measured: up to 8 of 20), and two concurrent ``$set`` of *different* fields of
one document lose one of them (the later write replaces the document it read earlier). Only
the insert of a duplicate ``_id`` is refused atomically. So:

- the executor that inserts a claim holds its attempt 1 straight away, with the claim
  document's ``owner`` / ``lease_until`` as its lease, and runs it without reading anything
  back (the claim is what it just wrote; nobody else may take it before that lease runs out);
- every later run of a claim (*attempt* ``n``, its lease epoch) starts by inserting
  ``executor_claim_leases`` ``_id = "<claim_id>:a<n>"`` (owner, ``lease_until``), ``n`` one
  above the current attempt: of any number of executors taking over an expired lease,
  exactly one inserts it; the others get a duplicate key and back off;
- the lease lives in that document, renewed only by its owner (attempt 1's renewal creates
  ``a1``). The claim document keeps ``owner`` / ``lease_until`` / ``attempt`` as written
  when the attempt began (for humans and the CLI; ``attempt`` is only a hint), so a
  renewal never races a journal write into a lost update. An attempt without a lease
  document has the claim document's ``owner`` and ``lease_until`` as its lease;
- an owner holds the claim while no ``a<n+1>`` exists. Every write first checks locally
  that the owner's own lease is still comfortably valid (renewals are every third of the
  lease; a write needs a sixth of it left). A write that precedes an effect outside the
  store (a journal entry before a change on the server, an outbox entry before it is
  published, a rescue phase) then confirms that no ``a<n+1>`` was inserted; if one was,
  the writer gets :class:`LeaseLost` and stops before touching the server again. Nothing
  trusts the claim document's ``owner``, which a stale whole-document write could put back;
- writes with no effect of their own until a later fenced write are not confirmed one by
  one, or deferred into that write (see :class:`_Held`): the access decision (written
  with the outbox entry that announces it; a crash before that write loses both, and the
  resumed run decides again), a step journalled ``done`` (a crash before the
  next write only repeats that step's read-only checks) and an outbox entry's
  ``published`` flag (a resumed run republishes the same bytes, which consumers drop by
  ``event_id``);
- ``released`` (an attempt number) is set when its owner parked the claim, so a re-opened
  claim is taken at once instead of after the lease;
- :meth:`ClaimStore.reopen` is decided the same way: an insert of ``<claim_id>:r<k>``
  (``k`` = resumptions + 1), so a report and a deadline re-opening a parked claim together
  count one resumption and offer it once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.events import AuthorizationVerified
from services.executor.claim_integrity import ClaimSealer, accepted_record
from services.executor.claim_queue import QUEUE_RETENTION, ClaimQueue
from services.executor.claim_record import (
    Claim,
    ClaimStatus,
    Owner,
    aware,
    claim_id_for,
)
from services.executor.runbooks.results import JournalEntry, LeaseLost

T = TypeVar("T")
__all__ = ["Claim", "ClaimJournal", "ClaimStatus", "ClaimStore", "Owner", "StaleRevision",
           "claim_id_for", "lease_id", "reopen_id"]


def lease_id(claim_id: str, attempt: int) -> str:
    return f"{claim_id}:a{attempt}"


def reopen_id(claim_id: str, resumption: int) -> str:
    return f"{claim_id}:r{resumption}"


class StaleRevision(Exception):
    """A newer revision of the ticket was claimed already."""

    def __init__(self, latest: int) -> None:
        super().__init__(f"revision {latest} was already claimed")
        self.latest = latest


def _apply_set(doc: dict[str, Any], sets: Mapping[str, Any]) -> None:
    """Apply a ``$set`` (dotted paths) to a local copy of the document."""
    for path, value in sets.items():
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value


def _takeable(current: Claim, taker: Owner, now: datetime) -> bool:
    """Whether ``taker`` may start a new attempt of the open claim: it is the taker's
    already, its lease expired or was released, or its owner certainly no longer runs."""
    previous = current.owner
    return ((previous is not None and (previous.id == taker.id or previous.is_gone_locally()))
            or current.expired(now) or current.lease_released)


@dataclass(kw_only=True)
class _Held:
    """A lease this process holds: which attempt, until when it may still write, and the
    claim document as this owner last wrote it (what a finished claim is archived as).

    ``pending`` holds ``$set`` fields not yet written: they go with the owner's next write
    (module doc), so a claim costs about one store round trip per effect outside the store.
    """

    owner_id: str
    attempt: int
    lease_until: datetime | None
    lease_s: float
    closed: bool = False
    doc: dict[str, Any] | None = None
    pending: dict[str, Any] = field(default_factory=dict)
    lease_docs: bool = True  # lease or re-open documents may exist for this claim
    fresh: bool = False  # made by create() in this process, not yet run

    def writable(self, now: datetime) -> bool:
        # A write needs a sixth of the lease left: a write issued this close to the end
        # could land after another executor, trusting the expiry, took over.
        if self.lease_until is None:
            return False
        return now < self.lease_until - timedelta(seconds=self.lease_s / 6)


class ClaimStore:
    CLAIMS = "executor_claims"
    ARCHIVE = "executor_claims_archive"
    TICKETS = "executor_tickets"
    HANDOVERS = "executor_handovers"

    LEASES = "executor_claim_leases"
    QUEUED = ClaimQueue.QUEUED
    DONE = ClaimQueue.DONE

    FINISHED: tuple[ClaimStatus, ...] = ("finished", "refused")

    def __init__(self, db: AsyncDatabase[dict[str, Any]],
                 sealer: ClaimSealer | None = None, *,
                 queue_retention: timedelta = QUEUE_RETENTION) -> None:
        # The executor signs what it decides about a claim (claim_integrity); a store
        # without a sealer (the CLI, lease tests) writes unsigned records, which a run refuses.
        self._sealer = sealer
        self._claims = db[self.CLAIMS]
        self._archive = db[self.ARCHIVE]
        self._tickets = db[self.TICKETS]
        self._handovers = db[self.HANDOVERS]
        self._leases = db[self.LEASES]
        self._held: dict[tuple[str, str], _Held] = {}
        self.queue = ClaimQueue(db, retention=queue_retention)
        # Queued claims offered to this process's worker -> their queue partition, so
        # taking one needs no search (made here, or found by the scan or get()).
        self._queued: dict[str, str] = {}

    day_of = staticmethod(ClaimQueue.day_of)
    hour_of = staticmethod(ClaimQueue.hour_of)

    # --- claiming ----------------------------------------------------------------------

    async def create(self, event: AuthorizationVerified, *, verdict_json: str,
                     trace_carrier: Mapping[str, str], owner: Owner, lease_s: float,
                     queued: bool = False) -> tuple[Claim, bool]:
        """Claim the verdict's revision. Returns the claim and whether this call made it;
        :class:`StaleRevision` when a newer revision of the ticket was claimed already.

        A ticket's first verdict costs two inserts and no read. Whoever made the claim
        holds its attempt 1 and may run it without reading it back (:meth:`acquire`).
        ``queued`` (no worker is free for it): the claim goes to today's queue partition
        instead of ``executor_claims``, and :meth:`acquire` moves it there (module doc).
        """
        claim_id = claim_id_for(event.ticket_id, event.revision)
        now = datetime.now(UTC)
        try:
            await self._tickets.insert_one({
                "_id": event.ticket_id, "latest_revision": event.revision,
                "verdict_event_id": str(event.event_id), "claimed_at": now})
        except DuplicateKeyError:
            existing = await self._seen_ticket(event, claim_id)
            if existing is not None:
                return existing, False
        lease_until = now + timedelta(seconds=lease_s)
        doc: dict[str, Any] = {
            "_id": claim_id, "ticket_id": event.ticket_id, "revision": event.revision,
            "verdict_event_id": str(event.event_id), "verdict": verdict_json,
            "trace": dict(trace_carrier), "status": "open", "owner": owner.to_doc(),
            "lease_until": lease_until, "attempt": 1, "decision": None,
            "steps": {}, "outbox": {}, "created_at": now,
        }
        partition = self.queue.partition_for(now)
        if queued:
            doc["queued_in"] = partition
        accepted = accepted_record(verdict_json, now)
        seal = self._seal(claim_id, "accepted", accepted)
        if seal:
            doc["seals"] = {"accepted": {**seal, "value": accepted}}
        try:
            await (self.queue.partition(partition) if queued else self._claims).insert_one(doc)
        except DuplicateKeyError:
            existing = await self.get(claim_id)
            if existing is None:  # pragma: no cover - archived before it is deleted
                raise
            return existing, False
        self._forget_stale_fresh(now)
        self._held[(claim_id, owner.id)] = _Held(
            owner_id=owner.id, attempt=1, lease_until=lease_until, lease_s=lease_s,
            doc=doc, lease_docs=False, fresh=True)
        if queued:
            self._queued[claim_id] = partition
        return Claim.from_doc(doc), True

    def _seal(self, claim_id: str, field: str, value: Any) -> dict[str, str]:
        return self._sealer.seal(claim_id, field, value) if self._sealer is not None else {}

    def _sealed(self, claim_id: str, field: str, value: Any, key: str | None = None,
                ) -> dict[str, Any]:
        """``$set`` fields for the signed record of ``field`` (none without a sealer)."""
        seal = self._seal(claim_id, field, value)
        return {f"seals.{key or field}": seal} if seal else {}

    async def _seen_ticket(self, event: AuthorizationVerified, claim_id: str) -> Claim | None:
        """The rare path of :meth:`create`: the ticket had a claimed revision already.

        Returns the revision's existing claim, or None when this verdict may claim it (a
        newer revision, or a claim whose ticket record was written by a run that crashed
        before inserting the claim itself)."""
        ticket = await self._tickets.find_one({"_id": event.ticket_id}) or {}
        latest = int(ticket.get("latest_revision", 0))
        if latest > event.revision:
            raise StaleRevision(latest)
        if latest < event.revision:
            # One ticket's verdicts come in order (one partition), so nothing races this.
            await self._tickets.update_one(
                {"_id": event.ticket_id},
                {"$set": {"latest_revision": event.revision,
                          "verdict_event_id": str(event.event_id),
                          "claimed_at": datetime.now(UTC)}})
            return None
        # Live first, then archived: a finished claim is archived before it is deleted, so
        # it is never missed between the two reads.
        return await self.get(claim_id)

    def _forget_stale_fresh(self, now: datetime) -> None:
        """Drop the leases of claims made here but run elsewhere (their offer was dropped
        and another executor's scan took them): they ran out long ago. A claim still
        waiting in the claim queue keeps its own: its creator takes it as attempt 1
        whenever a worker gets to it (the scan forgets those taken elsewhere)."""
        if len(self._held) < 1024:
            return
        for key, held in list(self._held.items()):
            if (held.fresh and key[0] not in self._queued
                    and (held.lease_until is None or held.lease_until < now)):
                del self._held[key]

    async def get(self, claim_id: str) -> Claim | None:
        """The claim, in flight (with its current lease), queued, or archived."""
        doc = await self._claims.find_one({"_id": claim_id})
        if doc is not None:
            return await self._resolve(doc)
        for partition in await self.queue.unsettled():
            queued = await self.queue.partition(partition).find_one({"_id": claim_id})
            if queued is None:
                continue
            if not await self.queue.finished(claim_id, partition):
                # Taken meanwhile? Then executor_claims has the live copy.
                doc = await self._claims.find_one({"_id": claim_id})
                if doc is not None:
                    return await self._resolve(doc)
                self._queued[claim_id] = partition
                return Claim.from_doc(queued)
            break  # closed for good: the archive has it (written before the delete)
        archived = await self._archive.find_one({"_id": claim_id})
        return Claim.from_doc(archived) if archived is not None else None

    # --- the queue -----------------------------------------------------------------------

    async def _already_closed(self, claim_id: str, queued_in: str) -> bool:
        """Whether the in-flight copy of a claim that came from the queue is one closed for
        good: its done marker is there and so is the archived claim. That copy then goes
        (a copy taken from the queue after the close, or a crash between archiving and
        deleting). A done marker without the archived claim is a crash between the two:
        the claim is resumed and closed again."""
        if not await self.queue.finished(claim_id, queued_in):
            return False
        if await self._archive.find_one({"_id": claim_id}, {"_id": 1}) is None:
            return False
        await self._claims.delete_one({"_id": claim_id})
        return True

    async def _take_queued(self, claim_id: str, partition: str, owner: Owner,
                           held: _Held | None, lease_s: float) -> bool | None:
        """Move a queued claim into ``executor_claims`` (an insert: a duplicate means it is
        there already). True: this call put it there; False: it was there; None: it is
        gone (closed for good, or its partition dropped).

        Its creator puts it there with attempt 1's lease starting now: an insert that
        succeeds means nobody else has taken it, unless they took it and closed it for
        good (then the done marker says so, and the copy just made is removed again)."""
        mine = held is not None and held.fresh and held.doc is not None
        source = held.doc if mine and held is not None else await self.queue.partition(
            partition).find_one({"_id": claim_id})
        if source is None:
            return None
        doc = dict(source)
        now = datetime.now(UTC)
        if not mine and not _takeable(Claim.from_doc(doc), owner, now):
            return None  # its creator's lease as queued holds: the creator runs it
        # While the creator's lease as queued still holds, nobody else can have taken the
        # claim (a taker needs it expired), let alone closed it: no marker to look for.
        untouched = mine and held is not None and held.writable(now)
        if mine:
            doc["lease_until"] = now + timedelta(seconds=lease_s)
        try:
            await self._claims.insert_one(doc)
        except DuplicateKeyError:
            if mine:
                self._held.pop((claim_id, owner.id), None)
            return False
        if not untouched and await self._already_closed(claim_id, partition):
            self._held.pop((claim_id, owner.id), None)
            return None
        if mine and held is not None:
            held.doc, held.lease_until, held.lease_s = doc, doc["lease_until"], lease_s
        return True

    def is_queued(self, claim_id: str) -> bool:
        """Whether the claim, offered to this process, waits in the claim queue (taking it
        adds a claim to ``executor_claims``)."""
        return claim_id in self._queued

    async def queued_claim_ids(self) -> dict[str, str]:
        """The queued claims nobody has taken: claim id -> its queue partition, oldest
        first (:meth:`ClaimQueue.waiting <services.executor.claim_queue.ClaimQueue.waiting>`)."""
        return await self.queue.waiting(self._claims)

    async def drop_old_partitions(self, waiting: Mapping[str, str]) -> int:
        """The queue's partitions past the retention, dropped whole (:mod:`.claim_queue`)."""
        return await self.queue.drop_old(waiting)

    async def _resolve(self, doc: Mapping[str, Any]) -> Claim:
        """The claim with its current lease: the newest ``a<n>`` lease document (the claim
        document's ``attempt`` is where the search starts), else the claim document's own."""
        claim = Claim.from_doc(doc)
        attempt = claim.attempt
        lease = await self._leases.find_one({"_id": lease_id(claim.id, attempt)})
        while (newer := await self._leases.find_one(
                {"_id": lease_id(claim.id, attempt + 1)})) is not None:
            attempt, lease = attempt + 1, newer
        if lease is not None:
            claim.attempt = attempt
            claim.owner = Owner.from_doc(lease.get("owner"))
            claim.lease_until = aware(lease.get("lease_until"))
        return claim

    async def acquire(self, claim_id: str, owner: Owner, *, lease_s: float) -> Claim | None:
        """Take the open claim to run it: made by us moments ago, ours already, lease
        expired or released, or owner gone. Returns the claim with ``attempt`` set to this
        run's attempt, or None.

        Insert-wins (module doc): of any number of executors racing for an abandoned claim,
        exactly one inserts the next attempt's lease document. Every successful acquire
        counts an attempt; a claim's creator runs attempt 1 with no round trip at all.

        A queued claim is first moved into ``executor_claims`` (:meth:`_take_queued`); one
        that came from the queue and is taken over is checked against its done marker,
        so a copy put back after it was closed for good is never run.
        """
        held = self._held.get((claim_id, owner.id))
        checked = False  # whether the done marker was looked at after the claim was in flight
        partition = self._queued.pop(claim_id, None)
        if partition is not None:
            taken = await self._take_queued(claim_id, partition, owner, held, lease_s)
            if taken is None:
                return None
            checked = taken
            held = self._held.get((claim_id, owner.id))
        elif held is not None and held.doc is not None and held.doc.get("queued_in"):
            held = None  # made here but not taken from the queue: not runnable as is
        if held is not None and held.fresh and held.doc is not None:
            held.fresh = False
            now = datetime.now(UTC)
            if not held.closed and held.writable(now):
                assert held.lease_until is not None
                if held.lease_until - now < timedelta(seconds=held.lease_s * 2 / 3):
                    # Queued for a while: renew before running, or the first heartbeat
                    # (a third of the lease in) could come after writes stop being allowed.
                    try:
                        await self.renew(claim_id, owner, lease_s=lease_s)
                    except LeaseLost:
                        return None
                return Claim.from_doc(held.doc)
        doc = await self._claims.find_one({"_id": claim_id})
        if doc is None or doc.get("status", "open") != "open":
            return None  # finished (archived) or parked
        current = await self._resolve(doc)
        now = datetime.now(UTC)
        if not _takeable(current, owner, now):
            return None
        attempt = current.attempt + 1
        lease_until = now + timedelta(seconds=lease_s)
        try:
            await self._leases.insert_one({
                "_id": lease_id(claim_id, attempt), "claim_id": claim_id, "attempt": attempt,
                "owner": owner.to_doc(), "lease_until": lease_until, "lease_s": lease_s,
                "acquired_at": now})
        except DuplicateKeyError:
            return None  # another executor took this attempt first
        held = _Held(owner_id=owner.id, attempt=attempt, lease_until=lease_until,
                     lease_s=lease_s)
        self._held[(claim_id, owner.id)] = held
        # For humans and the CLI; the lease document is what counts.
        await self._claims.update_one({"_id": claim_id}, {
            "$set": {"owner": owner.to_doc(), "lease_until": lease_until},
            "$max": {"attempt": attempt}})
        doc = await self._claims.find_one({"_id": claim_id})
        if doc is None or doc.get("status", "open") != "open" or (
                not checked and doc.get("queued_in")
                and await self._already_closed(claim_id, str(doc["queued_in"]))):
            # Closed or parked by its previous owner between our read and our insert, or a
            # queued copy put back after it was closed for good (now removed). Our lease
            # document goes too: nothing would delete it, and on a parked claim it would
            # make the next taker wait for its expiry.
            held.closed = True
            self._held.pop((claim_id, owner.id), None)
            await self._leases.delete_one({"_id": lease_id(claim_id, attempt)})
            return None
        held.doc = dict(doc)
        claim = Claim.from_doc(doc)
        claim.attempt, claim.owner, claim.lease_until = attempt, owner, lease_until
        return claim

    async def renew(self, claim_id: str, owner: Owner, *, lease_s: float) -> None:
        held = await self._held_by(claim_id, owner)
        if held.closed:
            return  # closed or parked: the lease no longer matters
        sent = datetime.now(UTC)
        until = sent + timedelta(seconds=lease_s)
        held.lease_docs = True
        # Only the owner of attempt n writes a<n> (takers insert a<n+1>), so this update
        # races nothing. Upsert: attempt 1's lease (the creator's) has no document yet.
        await self._leases.update_one(
            {"_id": lease_id(claim_id, held.attempt)},
            {"$set": {"claim_id": claim_id, "attempt": held.attempt, "owner": owner.to_doc(),
                      "lease_until": until, "lease_s": lease_s}}, upsert=True)
        await self._still_latest(claim_id, owner, held)
        held.lease_until, held.lease_s = until, lease_s

    async def _held_by(self, claim_id: str, owner: Owner) -> _Held:
        """This process's lease on ``claim_id``; one taken by another instance of the store
        is looked up. LeaseLost when ``owner`` holds none."""
        held = self._held.get((claim_id, owner.id))
        if held is not None:
            return held
        doc = await self._claims.find_one({"_id": claim_id})
        claim = await self._resolve(doc) if doc is not None else None
        if claim is None or claim.owner is None or claim.owner.id != owner.id:
            raise LeaseLost(f"claim {claim_id} is no longer owned by {owner.id}")
        lease_s = 0.0
        if claim.lease_until is not None:
            lease_s = max(0.0, (claim.lease_until - datetime.now(UTC)).total_seconds())
        held = _Held(owner_id=owner.id, attempt=claim.attempt, lease_until=claim.lease_until,
                     lease_s=min(lease_s, 60.0), closed=claim.status != "open")
        if not held.closed:
            self._held[(claim_id, owner.id)] = held
        return held

    async def _still_latest(self, claim_id: str, owner: Owner, held: _Held) -> None:
        if await self._leases.find_one({"_id": lease_id(claim_id, held.attempt + 1)},
                                       {"_id": 1}) is not None:
            held.closed = True
            self._held.pop((claim_id, owner.id), None)
            raise LeaseLost(f"claim {claim_id} was taken over from {owner.id} "
                            f"(attempt {held.attempt + 1})")

    async def _writer(self, claim_id: str, owner: Owner) -> _Held:
        """The lease, if it is still comfortably ours by our own clock."""
        held = await self._held_by(claim_id, owner)
        if held.closed or not held.writable(datetime.now(UTC)):
            raise LeaseLost(f"claim {claim_id}: the lease of {owner.id} ran out")
        return held

    async def _fenced(self, claim_id: str, owner: Owner,
                      write: Callable[[_Held], Awaitable[T]], *, confirm: bool = True) -> T:
        """Run one write to the claim document as the holder of its latest attempt.

        Before: the lease must still be comfortably ours by our own clock. After (unless
        ``confirm`` is off, for a write a later confirmed one covers): no newer attempt may
        have been inserted meanwhile. A write that fails the second check may have landed
        (harmlessly: the taker re-reads the journal after its insert, and this writer stops
        here); it is never followed by anything done on the server.
        """
        held = await self._writer(claim_id, owner)
        result = await write(held)
        if confirm:
            await self._still_latest(claim_id, owner, held)
        return result

    async def _update(self, held: _Held, claim_id: str, sets: Mapping[str, Any],
                      condition: Mapping[str, Any] | None = None) -> bool:
        """One update of the claim document carrying the deferred fields too; the local
        copy follows what matched."""
        fields = {**held.pending, **sets}
        result = await self._claims.update_one({"_id": claim_id, **(condition or {})},
                                               {"$set": fields})
        if not result.matched_count:
            return False
        held.pending.clear()
        if held.doc is not None:
            _apply_set(held.doc, fields)
        return True

    async def _owned_update(self, claim_id: str, owner: Owner, sets: Mapping[str, Any]) -> None:
        async def write(held: _Held) -> None:
            if not await self._update(held, claim_id, sets):
                raise LeaseLost(f"claim {claim_id} no longer exists")

        await self._fenced(claim_id, owner, write)

    async def _defer(self, claim_id: str, owner: Owner, sets: Mapping[str, Any]) -> None:
        """Fields that go with the owner's next write (module doc): no round trip now."""
        held = await self._writer(claim_id, owner)
        held.pending.update(sets)

    # --- journal, decision, outbox -----------------------------------------------------

    async def record_step(self, claim_id: str, owner: Owner, index: int,
                          entry: JournalEntry) -> None:
        """Journal a step. A step ``done`` goes with the next write (a crash before it
        repeats only that step's checks); an intent to change, or a change made, is durable
        and confirmed before the engine touches the server again."""
        sets = {f"steps.{index:03d}": entry.to_json()}
        if entry.state == "done":
            await self._defer(claim_id, owner, sets)
            return
        await self._owned_update(claim_id, owner, sets)

    async def set_decision(self, claim_id: str, owner: Owner,
                           decision: dict[str, Any]) -> dict[str, Any]:
        """Store the access decision once; a resumed run keeps the first one.

        Deferred (module doc): the decision acts only through the outbox entry announcing
        it, whose write carries it and is confirmed before anything is published. A crash
        before that write loses the decision with its announcement; the resumed run
        decides again."""
        held = await self._writer(claim_id, owner)
        if held.doc is not None:
            kept = held.pending.get("decision") or held.doc.get("decision")
            if kept:
                return dict(kept)
            held.pending.update({"decision": decision,
                                 **self._sealed(claim_id, "decision", decision)})
            return decision

        async def write(held: _Held) -> bool:
            # Conditional, but only the fenced owner writes: nothing races it.
            return await self._update(
                held, claim_id,
                {"decision": decision, **self._sealed(claim_id, "decision", decision)},
                {"decision": None})

        if await self._fenced(claim_id, owner, write, confirm=False):
            return decision
        claim = await self.get(claim_id)
        if claim is None:
            raise LeaseLost(f"claim {claim_id} no longer exists")
        return claim.decision or decision

    async def stage(self, claim_id: str, owner: Owner, key: str, event_json: str) -> str:
        """Put an event in the outbox unless one is there under ``key``; return the one kept."""
        async def write(held: _Held) -> bool:
            return await self._update(
                held, claim_id, {f"outbox.{key}": {"event": event_json, "published": False}},
                {f"outbox.{key}": {"$exists": False}})

        if await self._fenced(claim_id, owner, write):
            return event_json
        claim = await self.get(claim_id)
        if claim is None or key not in claim.outbox:
            raise LeaseLost(f"claim {claim_id} no longer exists")
        return str(claim.outbox[key]["event"])

    async def record_rescue(self, claim_id: str, owner: Owner, key: str,
                            value: Mapping[str, Any]) -> None:
        await self._owned_update(claim_id, owner, {
            f"rescue.{key}": dict(value),
            **self._sealed(claim_id, f"rescue.{key}", dict(value), key=f"rescue_{key}")})

    async def pass_review(self, claim_id: str, owner: Owner) -> None:
        """The engineer approved automation: decide the access anew, without the review."""
        await self._owned_update(claim_id, owner, {
            "review_passed": True, "decision": None, "handover": None,
            **self._sealed(claim_id, "review_passed", True)})

    async def mark_published(self, claim_id: str, owner: Owner, key: str) -> None:
        """Deferred (module doc): until the next write, a resumed run republishes the
        same bytes under the same event id."""
        await self._defer(claim_id, owner, {f"outbox.{key}.published": True})

    async def close(self, claim_id: str, owner: Owner, status: ClaimStatus, *,
                    outcome: str | None = None, handover: Mapping[str, Any] | None = None,
                    ) -> None:
        """Finish, refuse or hand over the claim, releasing the lease. Parked claims stay
        in flight (a report or deadline re-opens them); finished and refused ones move to
        the archive with their lease documents deleted."""
        now = datetime.now(UTC)
        held = await self._held_by(claim_id, owner)
        sealed: dict[str, Any] = {}
        if status in self.FINISHED:
            # Closed for good: a run finding this record on an open claim refuses it.
            sealed = self._sealed(claim_id, "closed", {"status": status, "outcome": outcome})
        elif handover:
            sealed = self._sealed(claim_id, "handover", dict(handover))
        sets = {"status": status, "closed_at": now, "outcome": outcome,
                "released": held.attempt, "handover": dict(handover) if handover else None,
                **sealed}
        if status in self.FINISHED:
            await self._archive_claim(claim_id, owner, held, sets)
            return
        await self._owned_update(claim_id, owner, sets)
        held.closed = True
        self._held.pop((claim_id, owner.id), None)
        if status == "handed_over" and handover is not None:
            await self._handovers.replace_one(
                {"_id": claim_id}, {"_id": claim_id, **dict(handover), "created_at": now},
                upsert=True)

    async def _archive_claim(self, claim_id: str, owner: Owner, held: _Held,
                             sets: Mapping[str, Any]) -> None:
        """Move a finished claim out of the in-flight collections.

        Not confirmed against a newer attempt: everything a finished run did outside the
        store came after a confirmed write (the completion's outbox entry), and a taker
        that got in after it only republishes that entry and closes the claim the same
        way (then it replaces the archived copy)."""
        await self._writer(claim_id, owner)
        doc = held.doc if held.doc is not None else await self._claims.find_one(
            {"_id": claim_id})
        if doc is None:
            raise LeaseLost(f"claim {claim_id} no longer exists")
        final = dict(doc)
        _apply_set(final, {**held.pending, **sets})
        held.pending.clear()
        held.closed = True
        self._held.pop((claim_id, owner.id), None)
        await self.queue.mark_done(final)
        await self._put_in_archive(final)
        await self._claims.delete_one({"_id": claim_id})
        if held.lease_docs or held.attempt > 1 or final.get("resumptions"):
            ids = [lease_id(claim_id, n) for n in range(1, held.attempt + 1)]
            ids += [reopen_id(claim_id, k) for k in range(1, int(final.get("resumptions")
                                                                  or 0) + 1)]
            # One id (the common case: attempt 1's renewals) is an _id filter, which
            # FerretDB scans inside SQLite; ``$in`` is decoded and matched in Go.
            await self._leases.delete_many(
                {"_id": ids[0]} if len(ids) == 1 else {"_id": {"$in": ids}})

    async def _put_in_archive(self, doc: Mapping[str, Any]) -> None:
        try:
            await self._archive.insert_one(dict(doc))
        except DuplicateKeyError:  # closed again after a crash between archive and delete
            await self._archive.replace_one({"_id": doc["_id"]}, dict(doc))

    async def reopen(self, claim_id: str) -> bool:
        """A parked claim becomes runnable again (an engineer reported, or a deadline passed).

        Of several callers re-opening the same parking (a report and the deadline sweep,
        say), the one that inserts ``<claim_id>:r<k>`` does it; the others get False. The
        lease was released when the claim was parked, so whichever executor takes it next
        need not wait.
        """
        now = datetime.now(UTC)
        doc = await self._claims.find_one({"_id": claim_id})
        if doc is None or doc.get("status") != "handed_over":
            return False
        resumption = int(doc.get("resumptions", 0)) + 1
        try:
            await self._leases.insert_one({"_id": reopen_id(claim_id, resumption),
                                           "claim_id": claim_id, "reopened_at": now})
        except DuplicateKeyError:
            return False
        result = await self._claims.update_one(
            {"_id": claim_id},
            {"$set": {"status": "open", "lease_until": now, "reopened_at": now},
             "$max": {"resumptions": resumption}})
        return bool(result.matched_count)

    async def open_claim_ids(self) -> list[str]:
        """The claims to run or resume: the open ones of the in-flight collection, then the
        queued ones nobody has taken (oldest first). Finished claims found in flight
        (stored before the archive existed, or left by a crash between archiving and
        deleting) are moved to the archive on the way, and queue partitions past their
        retention with nothing waiting are dropped."""
        ids: list[str] = []
        async for doc in self._claims.find({}, {"_id": 1, "status": 1}):
            status = doc.get("status", "open")
            if status == "open":
                ids.append(str(doc["_id"]))
            elif status in self.FINISHED:
                await self._archive_leftover(str(doc["_id"]))
        known = set(self._queued)  # before the reads: one queued meanwhile is kept
        waiting = await self.queued_claim_ids()
        for claim_id in known - set(waiting):
            # Taken (here or elsewhere) or closed since: not waiting any more, so no longer
            # taken from the queue (a worker still holding the offer finds it in flight).
            self._queued.pop(claim_id, None)
        self._queued.update(waiting)
        await self.drop_old_partitions(waiting)
        return ids + list(waiting)

    async def _archive_leftover(self, claim_id: str) -> None:
        doc = await self._claims.find_one({"_id": claim_id})
        if doc is None or doc.get("status") not in self.FINISHED:
            return
        await self.queue.mark_done(doc)
        await self._put_in_archive(doc)
        await self._claims.delete_one({"_id": claim_id})


@dataclass
class ClaimJournal:
    """The engine's :class:`~services.executor.runbooks.engine.StepJournal` for one claim."""

    store: ClaimStore
    claim: Claim
    owner: Owner

    def entry(self, index: int) -> JournalEntry | None:
        data = self.claim.steps.get(f"{index:03d}")
        return JournalEntry.from_json(data) if data else None

    async def record(self, index: int, entry: JournalEntry) -> None:
        await self.store.record_step(self.claim.id, self.owner, index, entry)
        self.claim.steps[f"{index:03d}"] = entry.to_json()
