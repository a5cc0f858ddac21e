"""The §4.1 example request, as a document to start from (tests, benchmark, demos).

:func:`example_request` returns a fresh ``dict`` every call, so callers may change it
freely, with ``authorization.signed_at`` a few minutes before now: a fixed date would
sooner or later be refused as signed in the future (intake) or too old (auth).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any, Final

EXAMPLE_REQUEST: Final[dict[str, Any]] = {
    "ticket_id": "HD-20261122-0001",
    "revision": 1,
    "account_id": "ACC-1001",
    "department": "technical_issues",
    "channel": "client_area",
    "language": "en",
    "server": {"ip": "203.0.113.10"},
    "category": "diagnostics",
    "description": "Server answers ping but SSH times out since this morning.",
    "error_messages": ["ssh: connect to host 203.0.113.10 port 22: Connection timed out"],
    "credentials": {"username": "admin", "password": "example-password-not-real"},
    "authorization": {
        "statement": (
            "I authorize the provider's support to perform OS-level intervention on this server."
        ),
        "accepts_backup_responsibility": True,
        "accepts_service_interruption": True,
        "accepts_data_loss_disclaimer": True,
        "signed_by": "Jane Doe",
        "signed_at": "2026-11-22T09:58:00Z",
    },
}


def example_request(**overrides: Any) -> dict[str, Any]:
    """A deep copy of :data:`EXAMPLE_REQUEST`, signed five minutes ago, with top-level
    ``overrides`` applied."""
    document = copy.deepcopy(EXAMPLE_REQUEST)
    signed = datetime.now(UTC) - timedelta(minutes=5)
    document["authorization"]["signed_at"] = signed.isoformat(timespec="seconds")
    document.update(copy.deepcopy(overrides))
    return document
