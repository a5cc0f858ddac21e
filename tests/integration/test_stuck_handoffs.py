"""``intervene status --stuck`` sees a ticket from the first accepted byte: accepted but not
submitted (intake's outbox), submitted but not authorized, authorized but not claimed -
each with its age and the service it waits for - read from the real store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.auth.history import COLLECTION as AUTH_HISTORY
from services.cli.stuck import find_stalled_handoffs
from services.intake.outbox import OUTBOX
from services.intake.outbox import Entry as OutboxEntry
from services.intake.store import Claim
from services.notifier.board import BoardEntry, ClockEntry, to_document
from services.notifier.ledger import COLLECTION as LEDGER

pytestmark = pytest.mark.integration


async def put_board(db: AsyncDatabase[dict[str, Any]], ticket: str, since: datetime,
                    queued_at: datetime | None = None) -> None:
    entry = BoardEntry(ticket_id=ticket, phase="submitted", opened_at=since, progress_at=since,
                       clocks=(ClockEntry(name="initial_response", revision=1,
                                          deadline=since + timedelta(minutes=10),
                                          running=True),), queued_at=queued_at)
    # The board entry rides on the ticket's latest fact document (services/notifier/views.py).
    await db[LEDGER].insert_one({"_id": f"{ticket}#000001", "ticket_id": ticket, "seq": 1,
                                 "board": to_document(entry, facts=1)})


async def test_tickets_waiting_at_each_handoff_are_stuck_after_the_grace_with_who_they_wait_for(
        mongo_client: Any, database_name: str, unique: str, real_parts: Any) -> None:
    database = f"{database_name}_stuck{unique}"
    db: AsyncDatabase[dict[str, Any]] = mongo_client[database]
    now = datetime.now(UTC)
    old, fresh = now - timedelta(minutes=5), now - timedelta(seconds=20)
    try:
        for ticket, at in ((f"ACC-{unique}", old), (f"ACCF-{unique}", fresh)):
            claim = Claim(ticket_id=ticket, revision=1, fingerprint="f", event_id=uuid4(),
                          source="http", account_id="A", category="diagnostics",
                          category_source="form", scope="included", confidence="high",
                          status="pending", claimed_at=at)
            await db[OUTBOX].insert_one(OutboxEntry(
                ticket_id=ticket, revision=1, fingerprint="f", event="{}", claim=claim,
                accepted_at=at).to_document())
        await put_board(db, f"SUB-{unique}", old)
        await put_board(db, f"AUT-{unique}", old)
        await put_board(db, f"SUBF-{unique}", fresh)
        await put_board(db, f"QUE-{unique}", old, queued_at=old + timedelta(seconds=30))
        await db[AUTH_HISTORY].insert_one({"_id": f"ticket:AUT-{unique}", "latest_revision": 1})
        await db[AUTH_HISTORY].insert_one({"_id": f"ticket:QUE-{unique}", "latest_revision": 1})

        stalled = await find_stalled_handoffs(db, now)
        assert {(s.ticket_id, s.stage) for s in stalled} == {
            (f"ACC-{unique}", "accepted_not_submitted"),
            (f"SUB-{unique}", "submitted_not_authorized"),
            (f"AUT-{unique}", "authorized_not_claimed"),
            (f"QUE-{unique}", "claimed_queued")}
        by_ticket = {s.ticket_id: s for s in stalled}
        assert by_ticket[f"ACC-{unique}"].waits_for.startswith("intake")
        assert by_ticket[f"SUB-{unique}"].waits_for.startswith("auth")
        assert by_ticket[f"AUT-{unique}"].waits_for.startswith("executor")
        # Claimed and queued behind a saturated executor: waits for capacity, since queued.
        assert by_ticket[f"QUE-{unique}"].waits_for.startswith("executor capacity")
        queued_since = by_ticket[f"QUE-{unique}"].since - (old + timedelta(seconds=30))
        assert abs(queued_since) < timedelta(milliseconds=1)  # the store keeps milliseconds
        assert all(timedelta(minutes=4) < s.age < timedelta(minutes=6) for s in stalled)

        # The operator's command says the same, and fails (exit 1) while any waits.
        env = {**os.environ, "MONGODB_URI": real_parts.mongodb_uri,
               "MONGODB_DATABASE": database}
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli.main", "status", "--stuck"],
            env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1, done.stdout + done.stderr
        line = next(ln for ln in done.stdout.splitlines() if f"ACC-{unique}" in ln)
        assert "accepted_not_submitted" in line
        assert "waiting for intake" in line
        assert f"ACCF-{unique}" not in done.stdout
    finally:
        await mongo_client.drop_database(database)
