"""The open-ticket board: where each open ticket stands, what it waits for, its deadlines.

A read model of the ticket ledger (:mod:`.ledger`): every fact document carries the
ticket's board entry after it (:mod:`.views`), absent when the ticket is closed with nothing
waiting, so a ticket's entry is its latest fact document's. The ledger's live collection
holds only in-flight tickets (finished ones are archived), so reading it whole stays cheap
(FerretDB scans for any filter but ``_id``). It feeds the open-ticket gauges
(:mod:`.metrics`) and ``intervene status --stuck`` (:mod:`services.cli.stuck`).

The lifecycle phase is the latest lifecycle fact in time order, the same order the SLA fold
uses; pages and clocks come from the fold itself, so the board can never disagree with the
clocks the sweeper enforces. Entries are never rewritten: each is exact for the facts up to
its own (see :mod:`.ledger`), so no writer can overwrite a newer entry with an older one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pymongo.asynchronous.database import AsyncDatabase

from schemas.events import SlaClock as ClockName
from services.notifier.ledger import COLLECTION, TicketLedger, latest_documents
from services.notifier.sla import Fact, FactKind, PageKind, TicketState

Phase = Literal["submitted", "waiting_customer", "in_progress", "waiting_engineer"]
PHASES: Final[tuple[Phase, ...]] = (
    "submitted", "waiting_customer", "in_progress", "waiting_engineer")

WAITING_FOR: Final[dict[Phase, str]] = {
    "submitted": "authorization and pickup (auth, then the executor or an engineer)",
    "waiting_customer": "the customer's answer to a clarification",
    "in_progress": "the intervention to finish",
    "waiting_engineer": "an engineer to carry out a manual step",
}

# Lifecycle facts and the phase each leaves the ticket in (None: closed). Facts not listed
# (hardware escalations, acknowledgements, fired alerts) do not move the lifecycle.
LIFECYCLE: Final[dict[FactKind, Phase | None]] = {
    "submitted": "submitted",
    "auth_rejected": None,
    "clarification": "waiting_customer",
    "intervention_started": "in_progress",
    "manual_step": "waiting_engineer",
    "step_completed": "in_progress",
    "completed": None,
}


@dataclass(frozen=True, kw_only=True)
class ClockEntry:
    name: ClockName
    revision: int
    deadline: datetime
    running: bool  # False while paused for the customer: its deadline is not counting down


@dataclass(frozen=True, kw_only=True)
class PageEntry:
    kind: PageKind
    opened_at: datetime


@dataclass(frozen=True, kw_only=True)
class BoardEntry:
    ticket_id: str
    phase: Phase | None
    opened_at: datetime | None  # when the current open stretch began (a reopen restarts it)
    progress_at: datetime | None  # the latest lifecycle fact
    clocks: tuple[ClockEntry, ...] = ()  # running or paused clocks
    pages: tuple[PageEntry, ...] = ()  # pages nobody acknowledged or resolved yet
    # When the executor queued the current stretch's intervention for a free worker
    # (InterventionQueued), until the next lifecycle fact: it waits for executor capacity.
    queued_at: datetime | None = None

    @property
    def listed(self) -> bool:
        return self.phase is not None or bool(self.pages)

    def overdue(self, now: datetime) -> tuple[ClockEntry, ...]:
        return tuple(c for c in self.clocks if c.running and c.deadline < now)


def board_entry(ticket_id: str, facts: Iterable[Fact], state: TicketState) -> BoardEntry:
    """Pure: the ticket's board entry from its facts and their fold."""
    seen: set[str] = set()
    ordered: list[Fact] = []
    for fact in facts:
        if fact.fact_id not in seen:
            seen.add(fact.fact_id)
            ordered.append(fact)
    ordered.sort(key=lambda f: f.at)  # stable, as in sla.fold
    phase: Phase | None = None
    opened_at: datetime | None = None
    progress_at: datetime | None = None
    queued_at: datetime | None = None
    for fact in ordered:
        if fact.kind == "queued":
            queued_at = fact.at
        if fact.kind not in LIFECYCLE:
            continue
        queued_at = None
        new = LIFECYCLE[fact.kind]
        if phase is None and new is not None:
            opened_at = fact.at
        elif new is None:
            opened_at = None
        phase, progress_at = new, fact.at
    return BoardEntry(
        ticket_id=ticket_id, phase=phase, opened_at=opened_at, progress_at=progress_at,
        clocks=tuple(ClockEntry(name=c.name, revision=c.revision, deadline=c.deadline,
                                running=c.running) for c in state.clocks if not c.stopped),
        pages=tuple(PageEntry(kind=p.kind, opened_at=p.opened_at) for p in state.open_pages()),
        queued_at=queued_at if phase == "submitted" else None,
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def to_document(entry: BoardEntry, facts: int) -> dict[str, Any]:
    return {
        "phase": entry.phase, "opened_at": entry.opened_at, "progress_at": entry.progress_at,
        "clocks": [{"name": c.name, "revision": c.revision, "deadline": c.deadline,
                    "running": c.running} for c in entry.clocks],
        "pages": [{"kind": p.kind, "opened_at": p.opened_at} for p in entry.pages],
        "queued_at": entry.queued_at,
        "facts": facts,
    }


def from_document(doc: dict[str, Any]) -> BoardEntry:
    def when(value: Any) -> datetime | None:
        return _aware(value) if isinstance(value, datetime) else None

    return BoardEntry(
        ticket_id=str(doc["_id"]), phase=doc.get("phase"), opened_at=when(doc.get("opened_at")),
        progress_at=when(doc.get("progress_at")),
        clocks=tuple(ClockEntry(name=c["name"], revision=int(c["revision"]),
                                deadline=_aware(c["deadline"]), running=bool(c["running"]))
                     for c in doc.get("clocks") or ()),
        pages=tuple(PageEntry(kind=p["kind"], opened_at=_aware(p["opened_at"]))
                    for p in doc.get("pages") or ()),
        queued_at=when(doc.get("queued_at")),
    )


class TicketBoard:
    def __init__(self, ledger: TicketLedger) -> None:
        self._ledger = ledger

    async def entries(self) -> list[BoardEntry]:
        return _listed(await self._ledger.latest(projection=_FIELDS))


_FIELDS = {"ticket_id": 1, "seq": 1, "board": 1}


def _listed(latest: dict[str, dict[str, Any]]) -> list[BoardEntry]:
    return [from_document({"_id": ticket_id, **doc["board"]})
            for ticket_id, doc in latest.items() if doc.get("board")]


async def read_board(db: AsyncDatabase[dict[str, Any]], *, collection: str = COLLECTION
                     ) -> list[BoardEntry]:
    """Every entry on the board, for readers that do not write it (the CLI)."""
    return _listed(await latest_documents(db[collection], projection=_FIELDS))
