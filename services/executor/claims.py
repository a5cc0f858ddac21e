"""Claims: the durable "this ticket revision is ours" record, with its step journal and outbox.

One document per ticket revision, ``_id = "<ticket_id>:<revision>"``: inserting it is the
claim (MongoDB's unique ``_id`` makes a second claim of the same revision fail), and it is
inserted before anything touches the server. FerretDB 1.24 has no transactions, so
everything that must change together lives in this one document:

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
  (``handed_over``, out of the open set, lease released); the engineer's report or the
  step's deadline re-opens it (:meth:`ClaimStore.reopen`) and any executor resumes it.

Leases. On FerretDB 1.24 a conditional update is a read, then a whole-document write, with
nothing in between: several executors racing with ``find_one_and_update({_id, owner: dead})``
all "won" (measured: up to 8 of 20), and two concurrent ``$set`` of *different* fields of
one document lose one of them (the later write replaces the document it read earlier). Only
the insert of a duplicate ``_id`` is refused atomically. So:

- every run of a claim (*attempt* ``n``, its lease epoch) starts by inserting
  ``executor_claim_leases`` ``_id = "<claim_id>:a<n>"`` (owner, ``lease_until``), ``n`` one
  above the current attempt: of any number of executors taking over an expired lease,
  exactly one inserts it; the others get a duplicate key and back off;
- the lease lives in that document, renewed only by its owner. The claim document keeps
  ``owner`` / ``lease_until`` / ``attempt`` as written when the attempt began (for humans and
  the CLI; ``attempt`` is only a hint), so a renewal never races a journal write into a lost
  update. An attempt without a lease document (attempt 0, the creator's, until its first
  acquire; claims from before this scheme) has the claim document's ``owner`` and
  ``lease_until`` as its lease;
- an owner holds the claim while no ``a<n+1>`` exists. Every journal, decision, outbox or
  close write first checks locally that the owner's own lease is still comfortably valid
  (renewals are every third of the lease; a write needs a sixth of it left), then writes,
  then confirms no ``a<n+1>`` was inserted; if one was, the writer gets :class:`LeaseLost`
  and stops before touching the server again. Nothing trusts the claim document's
  ``owner``, which a stale whole-document write could put back;
- ``released`` (an attempt number) is set when its owner closed or parked the claim, so a
  re-opened claim is taken at once instead of after the lease;
- :meth:`ClaimStore.reopen` is decided the same way: an insert of ``<claim_id>:r<k>``
  (``k`` = resumptions + 1), so a report and a deadline re-opening a parked claim together
  count one resumption and offer it once.

A small ``executor_open_claims`` collection lists the claims not yet finished or handed
over, so start-up finds work to resume without scanning every claim ever made (FerretDB
scans a collection for any filter other than ``_id`` equality).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.events import AuthorizationVerified
from services.executor.claim_integrity import ClaimSealer, accepted_record
from services.executor.claim_record import (
    Claim,
    ClaimStatus,
    Owner,
    aware,
    claim_id_for,
)
from services.executor.runbooks.results import JournalEntry, LeaseLost

T = TypeVar("T")
__all__ = ["Claim", "ClaimJournal", "ClaimStatus", "ClaimStore", "Owner", "claim_id_for",
           "lease_id", "reopen_id"]


def lease_id(claim_id: str, attempt: int) -> str:
    return f"{claim_id}:a{attempt}"


def reopen_id(claim_id: str, resumption: int) -> str:
    return f"{claim_id}:r{resumption}"


@dataclass(kw_only=True)
class _Held:
    """A lease this process holds: which attempt, and until when it may still write."""

    owner_id: str
    attempt: int
    lease_until: datetime | None
    lease_s: float
    closed: bool = False

    def writable(self, now: datetime) -> bool:
        # A write needs a sixth of the lease left: a write issued this close to the end
        # could land after another executor, trusting the expiry, took over.
        if self.lease_until is None:
            return False
        return now < self.lease_until - timedelta(seconds=self.lease_s / 6)


class ClaimStore:
    CLAIMS = "executor_claims"
    OPEN = "executor_open_claims"
    TICKETS = "executor_tickets"
    HANDOVERS = "executor_handovers"

    LEASES = "executor_claim_leases"

    def __init__(self, db: AsyncDatabase[dict[str, Any]],
                 sealer: ClaimSealer | None = None) -> None:
        # The executor signs what it decides about a claim (claim_integrity); a store
        # without a sealer (the CLI, lease tests) writes unsigned records, which a run refuses.
        self._sealer = sealer
        self._claims = db[self.CLAIMS]
        self._open = db[self.OPEN]
        self._tickets = db[self.TICKETS]
        self._handovers = db[self.HANDOVERS]
        self._leases = db[self.LEASES]
        self._held: dict[tuple[str, str], _Held] = {}

    # --- claiming ----------------------------------------------------------------------

    async def create(self, event: AuthorizationVerified, *, verdict_json: str,
                     trace_carrier: Mapping[str, str], owner: Owner, lease_s: float,
                     ) -> tuple[Claim, bool]:
        """Claim the verdict's revision. Returns the claim and whether this call made it."""
        claim_id = claim_id_for(event.ticket_id, event.revision)
        now = datetime.now(UTC)
        # The open-claims marker first: a crash after it but before the claim leaves a
        # marker without a claim, which the scan drops; the other order could leave a claim
        # nobody ever resumes.
        await self._mark_open(claim_id, {"ticket_id": event.ticket_id, "created_at": now})
        doc = {
            "_id": claim_id, "ticket_id": event.ticket_id, "revision": event.revision,
            "verdict_event_id": str(event.event_id), "verdict": verdict_json,
            "trace": dict(trace_carrier), "status": "open", "owner": owner.to_doc(),
            "lease_until": now + timedelta(seconds=lease_s), "attempt": 0, "decision": None,
            "steps": {}, "outbox": {}, "created_at": now,
        }
        accepted = accepted_record(verdict_json, now)
        seal = self._seal(claim_id, "accepted", accepted)
        if seal:
            doc["seals"] = {"accepted": {**seal, "value": accepted}}
        try:
            await self._claims.insert_one(doc)
        except DuplicateKeyError:
            existing = await self.get(claim_id)
            if existing is None:  # pragma: no cover - claims are never deleted
                raise
            if existing.status != "open":
                await self._open.delete_one({"_id": claim_id})
            return existing, False
        await self._tickets.update_one({"_id": event.ticket_id},
                                       {"$max": {"latest_revision": event.revision}},
                                       upsert=True)
        return Claim.from_doc(doc), True

    def _seal(self, claim_id: str, field: str, value: Any) -> dict[str, str]:
        return self._sealer.seal(claim_id, field, value) if self._sealer is not None else {}

    def _sealed(self, claim_id: str, field: str, value: Any, key: str | None = None,
                ) -> dict[str, Any]:
        """``$set`` fields for the signed record of ``field`` (none without a sealer)."""
        seal = self._seal(claim_id, field, value)
        return {f"seals.{key or field}": seal} if seal else {}

    async def _mark_open(self, claim_id: str, fields: Mapping[str, Any]) -> None:
        # An insert, not an upsert: two concurrent upserts of one new _id both insert on
        # FerretDB 1.24, and the second fails with a duplicate key.
        with contextlib.suppress(DuplicateKeyError):
            await self._open.insert_one({"_id": claim_id, **fields})

    async def get(self, claim_id: str) -> Claim | None:
        doc = await self._claims.find_one({"_id": claim_id})
        return await self._resolve(doc) if doc is not None else None

    async def latest_revision(self, ticket_id: str) -> int | None:
        doc = await self._tickets.find_one({"_id": ticket_id})
        return int(doc["latest_revision"]) if doc is not None else None

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
        """Take the open claim to run it: ours already, lease expired or released, or owner
        gone. Returns the claim with ``attempt`` set to this run's attempt, or None.

        Insert-wins (module doc): of any number of executors racing for an abandoned claim,
        exactly one inserts the next attempt's lease document. Every successful acquire
        counts an attempt.
        """
        current = await self.get(claim_id)
        if current is None:
            await self._open.delete_one({"_id": claim_id})  # marker of a claim never made
            return None
        if current.status != "open":
            await self._open.delete_one({"_id": claim_id})
            return None
        now = datetime.now(UTC)
        previous = current.owner
        mine = previous is not None and previous.id == owner.id
        if not (mine or current.expired(now) or current.lease_released
                or (previous is not None and previous.is_gone_locally())):
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
        if doc is None or doc.get("status", "open") != "open":
            # Closed by its previous owner between our read and our insert.
            held.closed = True
            self._held.pop((claim_id, owner.id), None)
            return None
        claim = Claim.from_doc(doc)
        claim.attempt, claim.owner, claim.lease_until = attempt, owner, lease_until
        return claim

    async def renew(self, claim_id: str, owner: Owner, *, lease_s: float) -> None:
        held = await self._held_by(claim_id, owner)
        if held.closed:
            return  # closed or parked: the lease no longer matters
        sent = datetime.now(UTC)
        until = sent + timedelta(seconds=lease_s)
        # Only the owner of attempt n writes a<n> (takers insert a<n+1>), so this update
        # races nothing. Upsert: attempt 0's lease has no document yet.
        await self._leases.update_one(
            {"_id": lease_id(claim_id, held.attempt)},
            {"$set": {"claim_id": claim_id, "attempt": held.attempt, "owner": owner.to_doc(),
                      "lease_until": until, "lease_s": lease_s}}, upsert=True)
        await self._still_latest(claim_id, owner, held)
        held.lease_until, held.lease_s = until, lease_s

    async def _held_by(self, claim_id: str, owner: Owner) -> _Held:
        """This process's lease on ``claim_id``; one taken by another instance of the store
        (or left from :meth:`create`) is looked up. LeaseLost when ``owner`` holds none."""
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

    async def _fenced(self, claim_id: str, owner: Owner, write: Callable[[], Awaitable[T]],
                      ) -> T:
        """Run one write to the claim document as the holder of its latest attempt.

        Before: the lease must still be comfortably ours by our own clock. After: no newer
        attempt may have been inserted meanwhile. A write that fails the second check may
        have landed (harmlessly: the taker re-reads the journal after its insert, and this
        writer stops here); it is never followed by anything done on the server.
        """
        held = await self._held_by(claim_id, owner)
        if held.closed or not held.writable(datetime.now(UTC)):
            raise LeaseLost(f"claim {claim_id}: the lease of {owner.id} ran out")
        result = await write()
        await self._still_latest(claim_id, owner, held)
        return result

    async def _owned_update(self, claim_id: str, owner: Owner, update: dict[str, Any]) -> None:
        async def write() -> None:
            result = await self._claims.update_one({"_id": claim_id}, update)
            if result.matched_count == 0:
                raise LeaseLost(f"claim {claim_id} no longer exists")

        await self._fenced(claim_id, owner, write)

    # --- journal, decision, outbox -----------------------------------------------------

    async def record_step(self, claim_id: str, owner: Owner, index: int,
                          entry: JournalEntry) -> None:
        await self._owned_update(claim_id, owner,
                                 {"$set": {f"steps.{index:03d}": entry.to_json()}})

    async def set_decision(self, claim_id: str, owner: Owner,
                           decision: dict[str, Any]) -> dict[str, Any]:
        """Store the access decision once; a resumed run keeps the first one."""
        async def write() -> int:
            # Conditional, but only the fenced owner writes: nothing races it.
            result = await self._claims.update_one(
                {"_id": claim_id, "decision": None},
                {"$set": {"decision": decision,
                          **self._sealed(claim_id, "decision", decision)}})
            return result.matched_count

        if await self._fenced(claim_id, owner, write):
            return decision
        claim = await self.get(claim_id)
        if claim is None:
            raise LeaseLost(f"claim {claim_id} no longer exists")
        return claim.decision or decision

    async def stage(self, claim_id: str, owner: Owner, key: str, event_json: str) -> str:
        """Put an event in the outbox unless one is there under ``key``; return the one kept."""
        async def write() -> int:
            result = await self._claims.update_one(
                {"_id": claim_id, f"outbox.{key}": {"$exists": False}},
                {"$set": {f"outbox.{key}": {"event": event_json, "published": False}}})
            return result.matched_count

        if await self._fenced(claim_id, owner, write):
            return event_json
        claim = await self.get(claim_id)
        if claim is None or key not in claim.outbox:
            raise LeaseLost(f"claim {claim_id} no longer exists")
        return str(claim.outbox[key]["event"])

    async def record_rescue(self, claim_id: str, owner: Owner, key: str,
                            value: Mapping[str, Any]) -> None:
        await self._owned_update(claim_id, owner, {"$set": {
            f"rescue.{key}": dict(value),
            **self._sealed(claim_id, f"rescue.{key}", dict(value), key=f"rescue_{key}")}})

    async def pass_review(self, claim_id: str, owner: Owner) -> None:
        """The engineer approved automation: decide the access anew, without the review."""
        await self._owned_update(claim_id, owner, {"$set": {
            "review_passed": True, "decision": None, "handover": None,
            **self._sealed(claim_id, "review_passed", True)}})

    async def mark_published(self, claim_id: str, owner: Owner, key: str) -> None:
        await self._owned_update(claim_id, owner, {"$set": {f"outbox.{key}.published": True}})

    async def close(self, claim_id: str, owner: Owner, status: ClaimStatus, *,
                    outcome: str | None = None, handover: Mapping[str, Any] | None = None,
                    ) -> None:
        """Finish, refuse or hand over the claim; it leaves the open set and the lease is
        released (a re-opened claim is taken at once)."""
        now = datetime.now(UTC)
        held = await self._held_by(claim_id, owner)
        sealed: dict[str, Any] = {}
        if status in ("finished", "refused"):
            # Closed for good: a run finding this record on an open claim refuses it.
            sealed = self._sealed(claim_id, "closed", {"status": status, "outcome": outcome})
        elif handover:
            sealed = self._sealed(claim_id, "handover", dict(handover))
        await self._owned_update(claim_id, owner, {"$set": {
            "status": status, "closed_at": now, "outcome": outcome, "released": held.attempt,
            "handover": dict(handover) if handover else None, **sealed}})
        held.closed = True
        self._held.pop((claim_id, owner.id), None)
        if status == "handed_over" and handover is not None:
            await self._handovers.replace_one(
                {"_id": claim_id}, {"_id": claim_id, **dict(handover), "created_at": now},
                upsert=True)
        await self._open.delete_one({"_id": claim_id})

    async def reopen(self, claim_id: str) -> bool:
        """A parked claim becomes runnable again (an engineer reported, or a deadline passed).

        The open-set marker goes first, like in :meth:`create`: a crash in between leaves a
        marker the scan drops, never a runnable claim nobody scans. Of several callers
        re-opening the same parking (a report and the deadline sweep, say), the one that
        inserts ``<claim_id>:r<k>`` does it; the others get False. The lease was released
        when the claim was parked, so whichever executor takes it next need not wait.
        """
        now = datetime.now(UTC)
        doc = await self._claims.find_one({"_id": claim_id})
        if doc is None or doc.get("status") != "handed_over":
            return False
        await self._mark_open(claim_id, {"created_at": now})
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
        return [str(doc["_id"]) async for doc in self._open.find({}, {"_id": 1})]


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
