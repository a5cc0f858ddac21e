"""Intake's outbox: a 202 means the sealed TicketSubmitted is durable and will be published.

Before intake answers 202 (or lets the helpdesk topic's offset be committed), the
TicketSubmitted it built - credentials already sealed - is inserted into ``intake_outbox``
(``_id = <ticket_id>:<revision>``); then the revision's accepted record is inserted into
``intake_tickets`` (:mod:`services.intake.store`), naming the entry's exact bytes
(``event_digest``). Both inserts are first-wins, so of concurrent requests for one revision
one entry is in the outbox at a time and one set of bytes is ever accepted for it. The
:class:`Relay` then publishes each entry until the broker acknowledges it: at once, inline
with the request (bounded by ``inline_timeout_s``, so a broker outage does not hold the
helpdesk's connection), and from its loop, which runs from start-up for as long as intake
runs, so an entry left by a crash or an outage is published without anyone retrying.

Publishing an entry: (for an entry the loop found, whose writer may have died before the
accepted record) insert the accepted record or read the one there - an entry whose bytes
are not the accepted ones is a leftover and is deleted unpublished -, then audit + publish
(the runtime's ``publish``, idempotent on the event id), then delete the entry. So the
outbox holds only unpublished entries - FerretDB scans a collection for anything but an
``_id`` lookup, and the relay lists this one every second - and a ticket costs the outbox an
insert and a delete. A crash between the broker's acknowledgement and the delete republishes
the *same* bytes with the same ``event_id`` after restart (downstream drops the copy by
``event_id``).

Test-only fault injection: ``INTAKE_FAULT_AT`` (unset by default) names a point at which
the process SIGKILLs itself the first time it gets there - ``after_claim`` (the ticket's
revision head recorded, nothing durable yet), ``after_outbox`` (entry durable, no accepted
record, not published) or ``after_publish`` (broker acknowledged, entry not deleted). The
crash tests use it to kill a real intake process between receipt and publish; never set it
in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from opentelemetry import context as otel_context
from opentelemetry import propagate
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.events import TicketSubmitted
from schemas.registry import parse_event
from services.intake.store import Claim, TicketStore, claim_key
from services.runtime.dependencies import Status
from services.runtime.group_commit import GroupDelete, GroupInsert

log = logging.getLogger("intervention.intake.outbox")

OUTBOX = "intake_outbox"

FaultPoint = Literal["after_claim", "after_outbox", "after_publish"]
FAULT_ENV = "INTAKE_FAULT_AT"


def fault_point(name: FaultPoint) -> None:
    """Test-only: SIGKILL this process at ``name`` when ``INTAKE_FAULT_AT`` names it.

    Read on every call (not cached), so a test can arm it per process through the
    environment; the check is one dictionary lookup, so it costs nothing when unset."""
    if os.environ.get(FAULT_ENV) == name:
        log.warning("INTAKE_FAULT_AT=%s: killing this process (test-only fault injection)",
                    name)
        os.kill(os.getpid(), signal.SIGKILL)


def _ms(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One accepted, not yet published TicketSubmitted (credentials sealed)."""

    ticket_id: str
    revision: int
    fingerprint: str
    event: str
    """The TicketSubmitted's JSON, exactly as it will be published."""
    claim: Claim
    accepted_at: datetime
    carrier: dict[str, str] = field(default_factory=dict)
    """W3C trace context of the request, so the relay's publish stays in the ticket's trace."""

    @property
    def key(self) -> str:
        return claim_key(self.ticket_id, self.revision)

    @property
    def digest(self) -> str:
        """SHA-256 of the exact bytes this entry would publish."""
        return hashlib.sha256(self.event.encode("utf-8", "surrogatepass")).hexdigest()

    def accepted(self, *, at: datetime) -> Claim:
        """The revision's accepted record naming this entry's bytes."""
        return _replace(self.claim, status="submitted", submitted_at=at,
                        event_digest=self.digest)

    def to_document(self) -> dict[str, Any]:
        return {"_id": self.key, "ticket_id": self.ticket_id, "revision": self.revision,
                "fingerprint": self.fingerprint, "event": self.event,
                "claim": self.claim.to_document(), "accepted_at": _ms(self.accepted_at),
                "carrier": dict(self.carrier)}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Entry:
        return cls(ticket_id=doc["ticket_id"], revision=int(doc["revision"]),
                   fingerprint=doc["fingerprint"], event=doc["event"],
                   claim=Claim.from_document(doc["claim"]),
                   accepted_at=_aware(doc["accepted_at"]),
                   carrier={str(k): str(v) for k, v in (doc.get("carrier") or {}).items()})

    @classmethod
    def of(cls, claim: Claim, event: TicketSubmitted, *, at: datetime) -> Entry:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return cls(ticket_id=claim.ticket_id, revision=claim.revision,
                   fingerprint=claim.fingerprint, event=event.model_dump_json(), claim=claim,
                   accepted_at=at, carrier=carrier)


class Outbox(Protocol):
    async def put(self, entry: Entry) -> Entry | None:
        """Insert ``entry``; None when it is now durable, else the entry already there."""
        ...

    async def get(self, key: str) -> Entry | None: ...

    async def unpublished(self) -> list[Entry]: ...

    async def remove(self, key: str) -> None: ...


class MongoOutbox:
    """``intake_outbox``: only unpublished entries, each looked up and deleted by ``_id``."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], *, collection: str = OUTBOX) -> None:
        self._coll = db[collection]
        # A consumer batch's requests reach the outbox at the same moment: their inserts,
        # and their deletes once published, share round trips (services.runtime.group_commit).
        self._inserts = GroupInsert(self._coll)
        self._deletes = GroupDelete(self._coll)

    async def put(self, entry: Entry) -> Entry | None:
        try:
            await self._inserts.insert(entry.to_document())
        except DuplicateKeyError:
            existing = await self.get(entry.key)
            if existing is None:  # published and removed between our insert and read
                return entry
            return existing
        return None

    async def get(self, key: str) -> Entry | None:
        doc = await self._coll.find_one({"_id": key})
        return Entry.from_document(doc) if doc is not None else None

    async def unpublished(self) -> list[Entry]:
        return [Entry.from_document(doc) async for doc in self._coll.find({})]

    async def remove(self, key: str) -> None:
        await self._deletes.delete(key)


Publish = Callable[[TicketSubmitted], Awaitable[None]]


def names(accepted: Claim, entry: Entry) -> bool:
    """Whether ``accepted`` (a revision's accepted record) is the record of ``entry``'s
    bytes. A record written before records named bytes (no ``event_digest``) had one entry
    per revision, so its fingerprint decides."""
    if accepted.event_digest is None:
        return accepted.fingerprint == entry.fingerprint
    return accepted.event_digest == entry.digest


@dataclass
class RelayState:
    """What health and metrics say about the relay."""

    pending: int = 0
    oldest_accepted_at: datetime | None = None
    failing_since: datetime | None = None
    last_error: str | None = None
    published: int = 0


class Relay:
    """Publishes outbox entries until the broker acknowledges them (module doc)."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        store: TicketStore,
        publisher: Publish,
        interval_s: float = 1.0,
        max_backoff_s: float = 30.0,
        grace_s: float = 5.0,
        inline_timeout_s: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._outbox = outbox
        self._store = store
        self._publish = publisher
        self._interval = interval_s
        self._max_backoff = max_backoff_s
        # Entries younger than this are left to the request that wrote them (it publishes
        # inline), so two intake replicas do not both publish a fresh entry.
        self._grace = grace_s
        self._inline_timeout = inline_timeout_s
        self._clock = clock
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.state = RelayState()
        self._started = clock()

    # -- one entry ----------------------------------------------------------------------

    def publish_soon(self, entry: Entry, *, accepted: bool = False) -> asyncio.Task[None]:
        """Start publishing ``entry`` (once per process at a time) and return the task.
        ``accepted``: the caller inserted the entry's accepted record itself."""
        task = self._in_flight.get(entry.key)
        if task is None:
            task = asyncio.create_task(self._publish_one(entry, accepted=accepted),
                                       name=f"relay-{entry.key}")
            self._in_flight[entry.key] = task
            task.add_done_callback(lambda _: self._in_flight.pop(entry.key, None))
        return task

    async def publish_inline(self, entry: Entry) -> bool:
        """Publish a just-accepted entry, waiting at most ``inline_timeout_s``; True when the
        broker acknowledged it. A failure or timeout is not the caller's error: the entry is
        durable and the relay loop publishes it (the attempt goes on in the background)."""
        task = self.publish_soon(entry, accepted=True)
        try:
            await asyncio.wait_for(asyncio.shield(task), self._inline_timeout)
        except Exception as exc:  # noqa: BLE001 - the loop retries; say why, once
            self._failed(exc)
            self._wake.set()
            return False
        return True

    async def _publish_one(self, entry: Entry, *, accepted: bool) -> None:
        if not accepted:
            # Found by the loop: its writer may have died before inserting the accepted
            # record, or lost the race for the revision and died before deleting it.
            existing = await self._store.claim(entry.accepted(at=self._clock()))
            if existing is not None and not names(existing, entry):
                log.info("outbox entry %s is not the revision's accepted content; dropped "
                         "unpublished", entry.key)
                await self._outbox.remove(entry.key)
                return
        event = parse_event(entry.event, TicketSubmitted)
        token = otel_context.attach(propagate.extract(entry.carrier))
        try:
            await self._publish(event)
        finally:
            otel_context.detach(token)
        fault_point("after_publish")
        await self._outbox.remove(entry.key)
        self.state.published += 1
        self._recovered()

    # -- the loop -----------------------------------------------------------------------

    async def drain(self, *, everything: bool = False) -> int:
        """Publish what the outbox holds (entries past the grace, or ``everything``);
        returns how many are left. Raises the first failure."""
        entries = await self._outbox.unpublished()
        now = self._clock()
        self.state.pending = len(entries)
        self.state.oldest_accepted_at = min((e.accepted_at for e in entries), default=None)
        due = [e for e in entries
               if everything or (now - e.accepted_at).total_seconds() >= self._grace]
        for entry in sorted(due, key=lambda e: e.accepted_at):
            await self.publish_soon(entry)
        return len(entries) - len(due)

    async def run(self) -> None:
        """Forever: drain at start (everything: a previous process's entries are nobody's),
        then every ``interval_s`` or when woken; back off exponentially while the broker or
        the store fails, and never give up."""
        backoff = self._interval
        first = True
        while True:
            try:
                await self.drain(everything=first)
                first = False
                backoff = self._interval
                self._recovered()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an outage: report, wait, retry
                self._failed(exc)
                backoff = min(self._max_backoff, backoff * 2)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)

    def wake(self) -> None:
        """Drain now rather than at the next interval."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="intake-outbox-relay")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None

    def _failed(self, exc: BaseException) -> None:
        if self.state.failing_since is None:
            self.state.failing_since = self._clock()
            log.warning("outbox relay cannot publish (%s); retrying with backoff",
                        type(exc).__name__)
        self.state.last_error = f"{type(exc).__name__}: {exc}"[:300]

    def _recovered(self) -> None:
        if self.state.failing_since is not None:
            log.info("outbox relay publishing again after %.1fs",
                     (self._clock() - self.state.failing_since).total_seconds())
        self.state.failing_since = None
        self.state.last_error = None

    def status(self) -> Status:
        """For ``/healthz``: failing (since when, why) while entries cannot be published."""
        if self.state.failing_since is not None:
            return Status(ok=False, since=self.state.failing_since,
                          error=f"{self.state.pending} unpublished; {self.state.last_error}")
        return Status(ok=True, since=self._started)

    def oldest_age_s(self) -> float:
        oldest = self.state.oldest_accepted_at
        return 0.0 if oldest is None else max(0.0, (self._clock() - oldest).total_seconds())
