"""`intervene audit verify` against the real store: exit status and the first broken record."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.cli.main import main
from services.runtime.audit import AuditLog
from services.runtime.redaction import Redactor

pytestmark = pytest.mark.integration


async def test_audit_verify_names_the_first_edited_record_and_exits_nonzero(
    mongo_db: AsyncDatabase[dict[str, object]], real_parts: object, database_name: str,
    unique: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MONGODB_URI", real_parts.mongodb_uri)  # type: ignore[attr-defined]
    monkeypatch.setenv("MONGODB_DATABASE", database_name)
    # A keys directory without audit keys: these records are written unsigned (what this test
    # is about is the hash chain), and the checkout's var/keys may hold audit keys by now.
    monkeypatch.setenv("INTERVENTION_KEYS_DIR", str(tmp_path / "no-audit-keys"))
    ticket = f"HD-CLI-{unique}"
    audit = AuditLog(mongo_db, redactor=Redactor())
    for i in range(3):
        await audit.append(ticket, record_id=f"r{i}", kind="action", actor="executor",
                           data={"step": i})

    # main() runs its own event loop; run it in a worker thread, outside the test's loop.
    # The store's chain alone (--no-anchors): the session's anchor topic holds the insider
    # tests' forged anchors, which verify reports whatever ticket it is asked about
    # (anchors: tests/integration/test_audit_insider.py).
    import asyncio

    assert await asyncio.to_thread(main, ["audit", "verify", "--no-anchors", ticket]) == 0
    assert "audit chain OK" in capsys.readouterr().out

    await mongo_db["audit"].update_one({"ticket_id": ticket, "seq": 2},
                                       {"$set": {"data.step": 99}})
    assert await asyncio.to_thread(main, ["audit", "verify", "--no-anchors", ticket]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out
    assert ticket in out
    assert f"ticket {ticket}, executor record 2: hash mismatch" in out
    assert "edited" in out
