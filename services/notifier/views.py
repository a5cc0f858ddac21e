"""What each fact document says about its ticket after it: the fact's *view* (pure).

The notifier once kept a ticket's next deadline (``notifier_deadlines``) and its board entry
(``notifier_ticket_board``) as two more documents, rewritten after every fact and re-checked
against the ledger for a fact appended meanwhile: three reads and two writes per event, for
data that always changes with the facts. Now the fact's own insert carries them. The ledger
computes the view from the facts up to and including the new one; the insert at the next
position succeeding proves no other fact came in between (:mod:`.ledger`), so every view is
exact for its prefix, and the ticket's *latest* fact document is its current state. Views are
never rewritten, so two writers cannot overwrite each other's (FerretDB has no atomic
read-modify-write).

Fields: ``due_at`` (the next alert's time, absent when nothing is pending: the sweeper's
range query), ``board`` (the open-ticket board entry, absent when the ticket is not listed)
and ``open`` (False once nothing is pending and nothing listed: the archiver's cue).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.notifier.board import board_entry
from services.notifier.board import to_document as board_document
from services.notifier.sla import Fact, SlaPolicy, fold


def ticket_view(ticket_id: str, facts: Sequence[Fact], policy: SlaPolicy) -> dict[str, Any]:
    """The view written with the fact that made ``facts`` the ticket's history."""
    state = fold(ticket_id, facts, policy)
    entry = board_entry(ticket_id, facts, state)
    due = state.next_due(policy)
    return {"due_at": due, "open": entry.listed or due is not None,
            "board": board_document(entry, len(facts)) if entry.listed else None}
