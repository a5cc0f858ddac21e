"""Durable waits for engineers: a manual step is requested, the claim is parked, and the
engineer's report (ManualStepCompleted, from chat through the notifier) or the step's
deadline brings it back — in whichever executor process runs by then.

Nothing waits in memory. Per step, two ``_id``-keyed documents (FerretDB pushes only ``_id``
equality down, see :mod:`services.executor.claims`):

- ``executor_manual_steps`` (``_id = "<ticket>:<revision>:<step_id>"``): what was asked,
  its deadline, and its state — ``waiting``, then ``done``/``failed`` (the engineer's
  report) or ``timed_out``. The first report wins; later ones are audited and change
  nothing. "First" is decided by an insert into ``executor_manual_decisions`` (same
  ``_id``), not by a conditional update, which several concurrent writers all "win" on
  FerretDB 1.24: the inserter's decision is then copied onto the step by whoever gets
  there, the same values every time;
- ``executor_manual_waiting``: one small marker per step whose result the claim has not
  consumed yet. :meth:`ManualSweep.sweep` scans only these markers — every
  ``EXECUTOR_RESCAN_S`` in every executor — to time out steps past their deadline and to
  re-open claims whose report arrived while they were being parked, or before a crash.
  The claim deletes the marker once it has closed with the result.

A restart loses nothing: the claim, the step and the marker are all in the store, and the
sweep runs again as soon as any executor is up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.events import ManualStepCompleted
from services.executor.claim_integrity import ClaimSealer
from services.executor.claims import ClaimStore, Owner
from services.runtime.audit import AuditLog
from services.runtime.consumer import Delivery

log = logging.getLogger(__name__)

WaitStatus = Literal["waiting", "done", "failed", "timed_out"]


def wait_id(claim_id: str, step_id: str) -> str:
    return f"{claim_id}:{step_id}"


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value))


@dataclass(frozen=True, kw_only=True)
class ManualWait:
    id: str
    claim_id: str
    ticket_id: str
    revision: int
    step_id: str
    kind: str
    method: str
    title: str
    requested_at: datetime
    deadline: datetime
    status: WaitStatus
    report: dict[str, Any] | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ManualWait:
        return cls(id=str(doc["_id"]), claim_id=str(doc["claim_id"]),
                   ticket_id=str(doc["ticket_id"]), revision=int(doc["revision"]),
                   step_id=str(doc["step_id"]), kind=str(doc["kind"]),
                   method=str(doc["method"]), title=str(doc.get("title") or doc["step_id"]),
                   requested_at=_utc(doc["requested_at"]), deadline=_utc(doc["deadline"]),
                   status=doc["status"], report=doc.get("report"))

    def overdue(self, now: datetime) -> bool:
        return self.status == "waiting" and now >= self.deadline


class ManualSteps:
    STEPS = "executor_manual_steps"
    WAITING = "executor_manual_waiting"

    DECISIONS = "executor_manual_decisions"

    def __init__(self, db: AsyncDatabase[dict[str, Any]],
                 sealer: ClaimSealer | None = None) -> None:
        # Decisions are signed by the executor (claim_integrity) and checked when the claim
        # reads them: one inserted by someone else is never an engineer's word.
        self._sealer = sealer
        self._steps = db[self.STEPS]
        self._waiting = db[self.WAITING]
        self._decisions = db[self.DECISIONS]

    async def open(self, *, claim_id: str, ticket_id: str, revision: int, step_id: str,
                   kind: str, method: str, title: str, deadline: datetime) -> ManualWait:
        """Start waiting (idempotent: a resumed run gets the wait it already started)."""
        key = wait_id(claim_id, step_id)
        now = datetime.now(UTC)
        # The marker first: a crash after it leaves a marker the sweep drops; the other
        # order could leave a step no sweep ever times out.
        await self._waiting.update_one({"_id": key}, {"$setOnInsert": {
            "claim_id": claim_id, "deadline": deadline}}, upsert=True)
        doc = await self._steps.find_one_and_update(
            {"_id": key},
            {"$setOnInsert": {"claim_id": claim_id, "ticket_id": ticket_id,
                              "revision": revision, "step_id": step_id, "kind": kind,
                              "method": method, "title": title, "requested_at": now,
                              "deadline": deadline, "status": "waiting", "report": None}},
            upsert=True, return_document=ReturnDocument.AFTER)
        assert doc is not None  # an upsert always returns the document
        return ManualWait.from_doc(doc)

    async def get(self, key: str) -> ManualWait | None:
        doc = await self._steps.find_one({"_id": key})
        return ManualWait.from_doc(doc) if doc is not None else None

    async def report(self, event: ManualStepCompleted) -> tuple[ManualWait | None, bool]:
        """Record an engineer's report: ``(the step, whether this report decided it)``."""
        key = wait_id(f"{event.ticket_id}:{event.revision}", event.step_id)
        report = {"status": event.status, "notes": event.notes, "engineer_id": event.engineer_id,
                  "display_name": event.display_name, "channel": event.channel,
                  "event_id": str(event.event_id), "at": event.occurred_at}
        decision = await self._decide(key, {"status": event.status, "report": report,
                                            "reported_at": datetime.now(UTC)})
        if decision is None:
            return await self.get(key), False
        # A redelivery of the report that decided (its handler crashed after the insert)
        # still counts as the deciding one.
        mine = (decision.get("report") or {}).get("event_id") == str(event.event_id)
        return await self.get(key), mine

    async def expire(self, key: str) -> ManualWait | None:
        """Time a waiting step out, unless a report (or another sweep) decided it first."""
        await self._decide(key, {"status": "timed_out", "timed_out_at": datetime.now(UTC)})
        return await self.get(key)

    async def _decide(self, key: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Decide a waiting step once: insert ``fields`` as its decision (the first insert
        wins), then copy the winning decision onto the step. Returns the winning decision,
        None when there is no such step or it was decided before decisions were inserted."""
        step = await self._steps.find_one({"_id": key}, {"status": 1})
        if step is None:
            return None
        decision = await self._decisions.find_one({"_id": key})
        if decision is None:
            if step.get("status") != "waiting":
                return None
            if self._sealer is not None:
                fields = {**fields, "seal": self._sealer.seal(key, "manual_decision", fields)}
            try:
                await self._decisions.insert_one({"_id": key, **fields})
                decision = {"_id": key, **fields}
            except DuplicateKeyError:
                decision = await self._decisions.find_one({"_id": key})
        if decision is None:  # pragma: no cover - decisions are never deleted
            return None
        # Racing writers all copy the same decision, so the last write agrees with the
        # first whatever the order (a whole-document write on FerretDB).
        await self._steps.update_one({"_id": key},
                                     {"$set": {k: v for k, v in decision.items() if k != "_id"}})
        return decision

    async def decision_problem(self, key: str, status: str) -> str | None:
        """Why the decision that made step ``key`` ``status`` is not the executor's (None:
        it is). A decided step without a signed decision of the same status was written
        into the store by someone else."""
        if self._sealer is None:
            return "no key to check decisions with"
        doc = await self._decisions.find_one({"_id": key})
        if doc is None:
            return f"the step is {status} without a recorded decision"
        fields = {k: v for k, v in doc.items() if k not in ("_id", "seal")}
        if fields.get("status") != status:
            return f"the step is {status}, its decision {fields.get('status')}"
        return self._sealer.problem(doc.get("seal"), key, "manual_decision", fields)

    async def unconsumed(self) -> list[str]:
        return [str(doc["_id"]) async for doc in self._waiting.find({}, {"_id": 1})]

    async def consumed(self, key: str) -> None:
        await self._waiting.delete_one({"_id": key})


@dataclass(frozen=True, kw_only=True)
class _Audited:
    audit: AuditLog
    owner: Owner

    async def _audit(self, ticket_id: str, record_id: str, kind: str,
                     data: dict[str, Any]) -> None:
        await self.audit.append(ticket_id, record_id=record_id, kind=kind,
                                actor=f"executor:{self.owner.id}", data=data)


@dataclass(frozen=True, kw_only=True)
class ManualReports(_Audited):
    """The ManualStepCompleted subscriber: the first report decides; its claim is re-opened
    and offered to the worker at once."""

    steps: ManualSteps
    claims: ClaimStore
    offer: Callable[[str], bool]

    async def accept(self, event: ManualStepCompleted, delivery: Delivery) -> None:
        wait, decided = await self.steps.report(event)
        data = {"revision": event.revision, "step_id": event.step_id, "status": event.status,
                "engineer_id": event.engineer_id, "display_name": event.display_name,
                "channel": event.channel, "notes": event.notes,
                "report_event_id": str(event.event_id)}
        if wait is None:
            await self._audit(event.ticket_id, f"manual-unknown:{event.event_id}",
                              "manual_step_report_ignored",
                              {**data, "reason": "no such manual step is awaited"})
            return
        if not decided:
            await self._audit(event.ticket_id, f"manual-late:{event.event_id}",
                              "manual_step_report_ignored",
                              {**data, "reason": f"the step was already {wait.status}"})
            return
        await self._audit(event.ticket_id, f"manual-reported:{wait.id}", "manual_step_reported",
                          data)
        if await self.claims.reopen(wait.claim_id):
            self.offer(wait.claim_id)


@dataclass(frozen=True, kw_only=True)
class ManualSweep(_Audited):
    """The periodic sweep, run by the worker's scan of open claims before it lists them: it
    times out overdue steps and re-opens claims whose step has a result, which that same scan
    then offers (so the sweep needs no worker)."""

    steps: ManualSteps
    claims: ClaimStore
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def sweep(self) -> int:
        """Time out overdue steps; re-open claims whose step has a result. Returns how many
        claims were re-opened."""
        now = self.clock()
        reopened = 0
        for key in await self.steps.unconsumed():
            wait = await self.steps.get(key)
            if wait is None:
                await self.steps.consumed(key)
                continue
            if wait.overdue(now):
                wait = await self.steps.expire(key)
                if wait is not None and wait.status == "timed_out":
                    await self._audit(wait.ticket_id, f"manual-timeout:{wait.id}",
                                      "manual_step_timed_out",
                                      {"revision": wait.revision, "step_id": wait.step_id,
                                       "deadline": wait.deadline.isoformat()})
            if wait is not None and wait.status != "waiting":
                reopened += await self.claims.reopen(wait.claim_id)
        return reopened


def deadline_after(timeout_s: float, now: datetime | None = None) -> datetime:
    # Whole seconds: the deadline travels in ManualStepRequested and must survive a
    # round trip through the staged event unchanged.
    return ((now or datetime.now(UTC)) + timedelta(seconds=timeout_s)).replace(microsecond=0)

