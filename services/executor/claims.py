"""Claims: the durable "this ticket revision is ours" record, with its step journal and outbox.

One document per ticket revision, ``_id = "<ticket_id>:<revision>"``: inserting it is the
claim (MongoDB's unique ``_id`` makes a second claim of the same revision fail), and it is
inserted before anything touches the server. FerretDB 1.24 has no transactions, so
everything that must change together lives in this one document:

- ``owner`` / ``lease_until``: who runs the claim, until when without a heartbeat. Another
  executor takes an open claim over when the lease has expired, or at once when the owner
  is a process on this same machine (same boot id) that no longer exists;
- ``steps``: the runbook journal (see :mod:`services.executor.runbooks.engine`); every write
  is conditional on ``owner``, which fences an executor that lost its lease;
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

A small ``executor_open_claims`` collection lists the claims not yet finished or handed
over, so start-up finds work to resume without scanning every claim ever made (FerretDB
scans a collection for any filter other than ``_id`` equality).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.events import AuthorizationVerified
from services.executor.runbooks.engine import JournalEntry, LeaseLost

ClaimStatus = Literal["open", "handed_over", "finished", "refused"]


def claim_id_for(ticket_id: str, revision: int) -> str:
    return f"{ticket_id}:{revision}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """Kernel start time of ``pid`` (clock ticks since boot); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


@dataclass(frozen=True, kw_only=True)
class Owner:
    """An executor process. Start time and boot id tell a dead pid from a reused one."""

    id: str
    host: str
    boot_id: str
    pid_ns: str
    pid: int
    started: str

    @classmethod
    def this_process(cls) -> Owner:
        pid = os.getpid()
        host = socket.gethostname()
        return cls(id=f"{host}:{pid}:{uuid.uuid4().hex[:8]}", host=host, boot_id=_boot_id(),
                   pid_ns=_pid_namespace(), pid=pid, started=_process_start(pid) or "")

    def is_gone_locally(self) -> bool:
        """True only when this owner certainly no longer runs: it ran on this machine since
        its last boot, in the same pid namespace (containers on one host share the boot id
        but not their pids), and that process is gone. Anything else waits for the lease."""
        if not self.boot_id or self.boot_id != _boot_id():
            return False
        if not self.pid_ns or self.pid_ns != _pid_namespace():
            return False
        if self.host != socket.gethostname():
            return False
        return _process_start(self.pid) != self.started

    def to_doc(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "boot_id": self.boot_id,
                "pid_ns": self.pid_ns, "pid": self.pid, "started": self.started}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> Owner | None:
        if not doc:
            return None
        return cls(id=str(doc.get("id", "")), host=str(doc.get("host", "")),
                   boot_id=str(doc.get("boot_id", "")), pid_ns=str(doc.get("pid_ns", "")),
                   pid=int(doc.get("pid", 0)), started=str(doc.get("started", "")))


@dataclass(kw_only=True)
class Claim:
    id: str
    ticket_id: str
    revision: int
    verdict_event_id: str
    verdict_json: str
    trace_carrier: dict[str, str]
    status: ClaimStatus
    owner: Owner | None
    lease_until: datetime | None
    attempt: int
    decision: dict[str, Any] | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    outbox: dict[str, dict[str, Any]] = field(default_factory=dict)
    rescue: dict[str, Any] = field(default_factory=dict)
    handover: dict[str, Any] | None = None
    resumptions: int = 0  # re-openings after a manual step: not failed attempts
    review_passed: bool = False

    @property
    def failed_attempts(self) -> int:
        """Runs that did not end by parking for an engineer (crashes, lost leases)."""
        return self.attempt - self.resumptions

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Claim:
        lease = doc.get("lease_until")
        if isinstance(lease, datetime) and lease.tzinfo is None:
            lease = lease.replace(tzinfo=UTC)
        return cls(
            id=str(doc["_id"]), ticket_id=str(doc["ticket_id"]), revision=int(doc["revision"]),
            verdict_event_id=str(doc["verdict_event_id"]), verdict_json=str(doc["verdict"]),
            trace_carrier=dict(doc.get("trace") or {}), status=doc.get("status", "open"),
            owner=Owner.from_doc(doc.get("owner")), lease_until=lease,
            attempt=int(doc.get("attempt", 0)), decision=doc.get("decision"),
            steps=dict(doc.get("steps") or {}), outbox=dict(doc.get("outbox") or {}),
            rescue=dict(doc.get("rescue") or {}), handover=doc.get("handover"),
            resumptions=int(doc.get("resumptions", 0)),
            review_passed=bool(doc.get("review_passed")),
        )

    def expired(self, now: datetime) -> bool:
        return self.lease_until is None or self.lease_until < now


class ClaimStore:
    CLAIMS = "executor_claims"
    OPEN = "executor_open_claims"
    TICKETS = "executor_tickets"
    HANDOVERS = "executor_handovers"

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._claims = db[self.CLAIMS]
        self._open = db[self.OPEN]
        self._tickets = db[self.TICKETS]
        self._handovers = db[self.HANDOVERS]

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
        await self._open.update_one({"_id": claim_id},
                                    {"$setOnInsert": {"ticket_id": event.ticket_id,
                                                      "created_at": now}}, upsert=True)
        doc = {
            "_id": claim_id, "ticket_id": event.ticket_id, "revision": event.revision,
            "verdict_event_id": str(event.event_id), "verdict": verdict_json,
            "trace": dict(trace_carrier), "status": "open", "owner": owner.to_doc(),
            "lease_until": now + timedelta(seconds=lease_s), "attempt": 0, "decision": None,
            "steps": {}, "outbox": {}, "created_at": now,
        }
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

    async def get(self, claim_id: str) -> Claim | None:
        doc = await self._claims.find_one({"_id": claim_id})
        return Claim.from_doc(doc) if doc is not None else None

    async def latest_revision(self, ticket_id: str) -> int | None:
        doc = await self._tickets.find_one({"_id": ticket_id})
        return int(doc["latest_revision"]) if doc is not None else None

    async def acquire(self, claim_id: str, owner: Owner, *, lease_s: float) -> Claim | None:
        """Take the open claim to run it: ours already, lease expired, or owner gone.

        Compare-and-set on the current owner, so of two executors racing for an abandoned
        claim exactly one wins. Every successful acquire counts an attempt.
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
        if not (mine or current.expired(now) or (previous is not None
                                                  and previous.is_gone_locally())):
            return None
        condition: dict[str, Any] = {"_id": claim_id, "status": "open"}
        condition["owner.id"] = previous.id if previous is not None else None
        doc = await self._claims.find_one_and_update(
            condition,
            {"$set": {"owner": owner.to_doc(), "lease_until": now + timedelta(seconds=lease_s)},
             "$inc": {"attempt": 1}},
            return_document=ReturnDocument.AFTER)
        return Claim.from_doc(doc) if doc is not None else None

    async def renew(self, claim_id: str, owner: Owner, *, lease_s: float) -> None:
        result = await self._claims.update_one(
            {"_id": claim_id, "owner.id": owner.id, "status": "open"},
            {"$set": {"lease_until": datetime.now(UTC) + timedelta(seconds=lease_s)}})
        if result.matched_count == 0:
            raise LeaseLost(f"claim {claim_id} is no longer owned by {owner.id}")

    async def _owned_update(self, claim_id: str, owner: Owner, update: dict[str, Any]) -> None:
        result = await self._claims.update_one({"_id": claim_id, "owner.id": owner.id}, update)
        if result.matched_count == 0:
            raise LeaseLost(f"claim {claim_id} is no longer owned by {owner.id}")

    # --- journal, decision, outbox -----------------------------------------------------

    async def record_step(self, claim_id: str, owner: Owner, index: int,
                          entry: JournalEntry) -> None:
        await self._owned_update(claim_id, owner,
                                 {"$set": {f"steps.{index:03d}": entry.to_json()}})

    async def set_decision(self, claim_id: str, owner: Owner,
                           decision: dict[str, Any]) -> dict[str, Any]:
        """Store the access decision once; a resumed run keeps the first one."""
        result = await self._claims.update_one(
            {"_id": claim_id, "owner.id": owner.id, "decision": None},
            {"$set": {"decision": decision}})
        if result.matched_count:
            return decision
        claim = await self.get(claim_id)
        if claim is None or claim.owner is None or claim.owner.id != owner.id:
            raise LeaseLost(f"claim {claim_id} is no longer owned by {owner.id}")
        return claim.decision or decision

    async def stage(self, claim_id: str, owner: Owner, key: str, event_json: str) -> str:
        """Put an event in the outbox unless one is there under ``key``; return the one kept."""
        result = await self._claims.update_one(
            {"_id": claim_id, "owner.id": owner.id, f"outbox.{key}": {"$exists": False}},
            {"$set": {f"outbox.{key}": {"event": event_json, "published": False}}})
        if result.matched_count:
            return event_json
        claim = await self.get(claim_id)
        if claim is None or claim.owner is None or claim.owner.id != owner.id:
            raise LeaseLost(f"claim {claim_id} is no longer owned by {owner.id}")
        return str(claim.outbox[key]["event"])

    async def record_rescue(self, claim_id: str, owner: Owner, key: str,
                            value: Mapping[str, Any]) -> None:
        await self._owned_update(claim_id, owner, {"$set": {f"rescue.{key}": dict(value)}})

    async def pass_review(self, claim_id: str, owner: Owner) -> None:
        """The engineer approved automation: decide the access anew, without the review."""
        await self._owned_update(claim_id, owner, {"$set": {
            "review_passed": True, "decision": None, "handover": None}})

    async def mark_published(self, claim_id: str, key: str) -> None:
        await self._claims.update_one({"_id": claim_id},
                                      {"$set": {f"outbox.{key}.published": True}})

    async def close(self, claim_id: str, owner: Owner, status: ClaimStatus, *,
                    outcome: str | None = None, handover: Mapping[str, Any] | None = None,
                    ) -> None:
        """Finish, refuse or hand over the claim; it leaves the open set."""
        now = datetime.now(UTC)
        await self._owned_update(claim_id, owner, {"$set": {
            "status": status, "closed_at": now, "outcome": outcome,
            "handover": dict(handover) if handover else None}})
        if status == "handed_over" and handover is not None:
            await self._handovers.replace_one(
                {"_id": claim_id}, {"_id": claim_id, **dict(handover), "created_at": now},
                upsert=True)
        await self._open.delete_one({"_id": claim_id})

    async def reopen(self, claim_id: str) -> bool:
        """A parked claim becomes runnable again (an engineer reported, or a deadline passed).

        The open-set marker goes first, like in :meth:`create`: a crash in between leaves a
        marker the scan drops, never a runnable claim nobody scans. The lease is expired at
        once so whichever executor takes the claim next need not wait for it.
        """
        now = datetime.now(UTC)
        await self._open.update_one({"_id": claim_id}, {"$setOnInsert": {"created_at": now}},
                                    upsert=True)
        result = await self._claims.update_one(
            {"_id": claim_id, "status": "handed_over"},
            {"$set": {"status": "open", "lease_until": now, "reopened_at": now},
             "$inc": {"resumptions": 1}})
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
