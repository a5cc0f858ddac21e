"""Finished tickets leave the hot collection: the ledger holds in-flight tickets only.

FerretDB 1.24 scans a whole collection for nearly every query, so a collection the ticket
path reads must not grow with history (issue 17: a store holding 7,000 old audit records
slowed a burst twenty-fold). :class:`Archiver` periodically moves every ticket whose latest
view is closed (no running clock, no waiting page: ``open`` is False, :mod:`.views`) and has
stayed so for ``after``, from ``notifier_ticket_facts`` into
``notifier_ticket_facts_archive``: one archive document per run of facts
(``_id = "<ticket_id>#<first>-<last>/<last fact id>"``, the facts in order), inserted first,
then the live documents deleted. Each round is three round trips whatever the number of
tickets moved, off the ticket path.

Crash safety without transactions: the archive insert is keyed by the run, so a round
repeated after a crash between insert and delete inserts nothing new and deletes what is
left. The delete names the exact documents archived, so a late fact appended meanwhile (at
the next position) stays live. The delay ``after`` leaves time for the stragglers of a
ticket (an acknowledgement or a start racing its completion across topics) to find the
ticket still live; one later than that starts a live run of its own, and the sweeper joins
the archived history back before it fires anything for it (:mod:`.ledger`).

Upgrading from the layout before views rode on the facts (a ``notifier_deadlines`` hint and
a ``notifier_ticket_board`` entry per open ticket, fact documents without views) is done by
:meth:`Archiver.adopt_legacy` once at start: the tickets those collections list get a
``restored`` marker fact whose document carries their view (so the sweeper finds their next
deadline), every other ticket's facts are archived, and the old collections are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from services.notifier.ledger import TicketLedger, facts_of
from services.notifier.sla import Fact
from services.runtime.store_ops import insert_new

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


LEGACY = ("notifier_deadlines", "notifier_ticket_board")
"""The per-ticket hint and board documents of the layout before views rode on the facts."""


class Archiver:
    def __init__(self, ledger: TicketLedger, *, clock: Clock, after: timedelta,
                 interval: timedelta = timedelta(seconds=10), batch: int = 1000) -> None:
        self._ledger = ledger
        self._clock = clock
        self._after = after
        self._interval = interval
        self._batch = batch

    async def archive_once(self) -> list[str]:
        """Move (up to a batch of) the tickets closed for long enough; returns their ids."""
        cutoff = self._clock() - self._after
        closed = await self._ledger.latest({"open": False, "view_at": {"$lte": cutoff}},
                                           {"ticket_id": 1, "seq": 1})
        # Every live document of those tickets: one closed document is the ticket's state
        # only if nothing came after it.
        runs = await self._runs(sorted(closed)[:self._batch])
        return await self._move({
            ticket_id: docs for ticket_id, docs in runs.items()
            if max(int(d["seq"]) for d in docs) == int(closed[ticket_id]["seq"])})

    async def adopt_legacy(self) -> list[str]:
        """Once, after an upgrade from the layout without views: give each ticket the old
        hint or board listed (in flight) a view, by appending a ``restored`` marker; archive
        the others' facts (finished); then drop the old collections. Repeatable after a
        crash midway (markers and archive runs are keyed). Returns the tickets archived."""
        db = self._ledger.coll.database
        legacy = [name for name in LEGACY if name in set(await db.list_collection_names())]
        if not legacy:
            return []
        in_flight = {str(doc["_id"]) for name in legacy
                     async for doc in db[name].find({}, {"_id": 1})}
        for ticket_id in sorted(in_flight):
            await self._ledger.record(ticket_id, Fact(
                fact_id=f"{ticket_id}:adopted", kind="restored", at=self._clock(),
                revision=0))
        finished = sorted({str(doc["ticket_id"]) async for doc in self._ledger.coll.find(
            {"view_at": {"$exists": False}}, {"ticket_id": 1})} - in_flight)
        moved: list[str] = []
        for start in range(0, len(finished), self._batch):
            moved += await self._move(await self._runs(finished[start:start + self._batch]))
        for name in legacy:
            await db.drop_collection(name)
        log.info("adopted the notifier's legacy layout: %d tickets in flight, %d archived",
                 len(in_flight), len(moved))
        return moved

    async def _runs(self, tickets: list[str]) -> dict[str, list[dict[str, Any]]]:
        runs: dict[str, list[dict[str, Any]]] = {}
        if tickets:
            async for doc in self._ledger.coll.find({"ticket_id": {"$in": tickets}}):
                runs.setdefault(doc["ticket_id"], []).append(doc)
        return runs

    async def _move(self, moved: dict[str, list[dict[str, Any]]]) -> list[str]:
        """Archive each ticket's run of live documents, then delete exactly those."""
        if not moved:
            return []
        now = self._clock()
        archive = []
        for ticket_id, docs in moved.items():
            seqs = sorted(int(d["seq"]) for d in docs)
            facts = facts_of(docs)
            archive.append({"_id": f"{ticket_id}#{seqs[0]:06d}-{seqs[-1]:06d}/"
                                   f"{facts[-1]['fact_id']}",
                            "ticket_id": ticket_id, "first": seqs[0], "last": seqs[-1],
                            "facts": facts, "archived_at": now})
        await insert_new(self._ledger.archive, archive)  # a run an earlier round archived
        await self._ledger.coll.delete_many(
            {"_id": {"$in": [d["_id"] for docs in moved.values() for d in docs]}})
        return sorted(moved)

    async def run(self) -> None:
        """Adopt a legacy layout once, then archive every ``interval`` until cancelled; a
        full batch is followed at once by the next (a backlog drains without waiting)."""
        adopted = False
        while True:
            try:
                if not adopted:
                    await self.adopt_legacy()
                    adopted = True
                while len(await self.archive_once()) >= self._batch:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # the store may blip; the next round retries
                log.exception("archiving finished tickets failed")
            await asyncio.sleep(self._interval.total_seconds())
