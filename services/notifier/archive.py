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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from services.notifier.claims import insert_new
from services.notifier.ledger import TicketLedger, facts_of

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class Archiver:
    def __init__(self, ledger: TicketLedger, *, clock: Clock, after: timedelta,
                 interval: timedelta = timedelta(seconds=10), batch: int = 500) -> None:
        self._ledger = ledger
        self._clock = clock
        self._after = after
        self._interval = interval
        self._batch = batch

    async def archive_once(self) -> list[str]:
        """Move the tickets closed for long enough; returns their ids."""
        cutoff = self._clock() - self._after
        closed = await self._ledger.latest({"open": False, "view_at": {"$lte": cutoff}},
                                           {"ticket_id": 1, "seq": 1})
        if not closed:
            return []
        wanted = sorted(closed)[:self._batch]
        # Every live document of those tickets: one closed document is the ticket's state
        # only if nothing came after it.
        runs: dict[str, list[dict[str, Any]]] = {}
        async for doc in self._ledger.coll.find({"ticket_id": {"$in": wanted}}):
            runs.setdefault(doc["ticket_id"], []).append(doc)
        moved: dict[str, list[dict[str, Any]]] = {
            ticket_id: docs for ticket_id, docs in runs.items()
            if max(int(d["seq"]) for d in docs) == int(closed[ticket_id]["seq"])}
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
        """Archive every ``interval`` until cancelled."""
        while True:
            try:
                await self.archive_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store may blip; the next round retries
                log.exception("archiving finished tickets failed")
            await asyncio.sleep(self._interval.total_seconds())
