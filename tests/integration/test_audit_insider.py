"""An insider with write access to the audit store, against the real FerretDB and Kafka.

Two services (executor and notifier, as ``ServiceRuntime``s with their own audit keys)
append to the audit log, each to its own chain of the ticket, and anchor the chains' heads
in ``intervention.audit-anchored``. Then
someone with the database credential (and, for one case, the notifier's own key) rewrites,
truncates, deletes and forges records directly in the store. ``intervene audit verify``
must name each: what it checks against are the services' public audit keys and the anchors
in Kafka, neither of which the database writer controls.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from services.cli.main import main
from services.runtime.audit import AuditRecord, AuditSigner, new_record, record_key
from services.runtime.keys import KeySetPaths, init_keys, load_audit_signing_key
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "notifier"))

pytestmark = pytest.mark.integration

Db = AsyncDatabase[dict[str, Any]]


@dataclass
class Estate:
    executor: ServiceRuntime
    notifier: ServiceRuntime
    keys: KeySetPaths
    env: dict[str, str]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeySetPaths:
    return init_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
async def estate(kafka_bootstrap: str, topic_prefix: str, real_parts: Any, database_name: str,
                 keys: KeySetPaths) -> AsyncIterator[Estate]:
    settings = RuntimeSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=topic_prefix,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,
        intervention_keys_dir=str(keys.directory), audit_anchor_interval_s=0.2)
    runtimes = [ServiceRuntime(name, settings) for name in ("executor", "notifier")]
    for runtime in runtimes:
        await runtime.start()  # topics (the compacted anchor topic too), keys, anchoring
    try:
        yield Estate(executor=runtimes[0], notifier=runtimes[1], keys=keys, env={
            "MONGODB_URI": real_parts.mongodb_uri, "MONGODB_DATABASE": database_name,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC_PREFIX": topic_prefix,
            "INTERVENTION_KEYS_DIR": str(keys.directory)})
    finally:
        for runtime in runtimes:
            await runtime.stop()


@pytest.fixture
def cli(estate: Estate, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Any:
    async def verify(*args: str, keys_dir: Path | None = None) -> tuple[int, str]:
        for name, value in estate.env.items():
            monkeypatch.setenv(name, value)
        if keys_dir is not None:
            monkeypatch.setenv("INTERVENTION_KEYS_DIR", str(keys_dir))
        capsys.readouterr()
        # main() runs its own event loop: in a worker thread, outside the test's loop.
        status = await asyncio.to_thread(main, ["audit", "verify", *args])
        return status, capsys.readouterr().out

    return verify


async def history(estate: Estate, ticket: str, n: int = 4) -> list[AuditRecord]:
    """A ticket worked by the executor (its chain: records 1-3), then told to the customer
    by the notifier (its chain: record 1)."""
    records = [await estate.executor.audit.append(
        ticket, record_id=f"cmd-{i}", kind="command", actor="executor:exec-1",
        data={"command": f"step {i}", "exit_status": 0}) for i in range(1, n)]
    records.append(await estate.notifier.audit.append(
        ticket, record_id="update", kind="event", actor="notifier",
        data={"event_type": "TicketUpdated"}))
    for runtime in (estate.executor, estate.notifier):
        await runtime.anchors.flush(ticket)
    return records


async def insert(db: Db, record: AuditRecord) -> None:
    """The insider's write: a record straight into the store."""
    await db["audit"].insert_one(record.to_stored())


def forged(ticket: str, seq: int, prev: str, *, actor: str, signer: AuditSigner | None,
           data: dict[str, Any] | None = None) -> AuditRecord:
    return new_record(ticket_id=ticket, seq=seq, prev_hash=prev, record_id=f"forged-{seq}",
                       kind="command", actor=actor, at=datetime.now(UTC),
                       data=data or {"command": "passwd root", "exit_status": 0},
                       signer=signer)


async def test_an_untouched_history_verifies_with_keys_and_anchors_against_real_kafka_and_store(
        estate: Estate, cli: Any, unique: str) -> None:
    ticket = f"HD-OK-{unique}"
    await history(estate, ticket)
    status, out = await cli(ticket)
    assert status == 0, out
    assert "signatures: checked against 4 audit key(s)" in out
    assert "chains: executor 3 record(s), notifier 1 record(s)" in out
    assert "audit chain OK" in out


async def test_a_record_rewritten_and_consistently_rehashed_is_named(
        estate: Estate, cli: Any, unique: str, mongo_db: Db, tmp_path: Path) -> None:
    ticket = f"HD-RW-{unique}"
    records = await history(estate, ticket)
    # The insider changes what the executor's record 2 says and recomputes every hash after
    # it in that chain, keeping the signatures they cannot make.
    prev = records[0].hash
    for old in records[1:3]:
        new = new_record(ticket_id=ticket, seq=old.seq, prev_hash=prev,
                         record_id=old.record_id, kind=old.kind, actor=old.actor, at=old.at,
                         data={"command": "nothing happened"} if old.seq == 2 else old.data)
        replacement = AuditRecord(**{**new.model_dump(), "key_id": old.key_id,
                                     "signature": old.signature})
        await mongo_db["audit"].replace_one({"_id": record_key(ticket, "executor", old.seq)},
                                            replacement.to_document())
        prev = new.hash
    status, out = await cli(ticket)
    assert status == 1
    assert f"ticket {ticket}, executor record 2: bad signature" in out
    assert f"ticket {ticket}, notifier" not in out  # the notifier's chain is intact
    # Without the keys the anchors alone still see it.
    status, out = await cli(ticket, keys_dir=tmp_path)
    assert status == 1
    assert "signatures: NOT checked" in out
    assert f"ticket {ticket}, executor record 3: history rewritten" in out


async def test_a_deleted_ticket_history_is_named_from_its_anchor(
        estate: Estate, cli: Any, unique: str, mongo_db: Db) -> None:
    ticket = f"HD-DEL-{unique}"
    await history(estate, ticket)
    await mongo_db["audit"].delete_many({"ticket_id": ticket})
    status, out = await cli(ticket)
    assert status == 1
    assert f"ticket {ticket}, executor record 3: ticket deleted: its records are gone" in out
    assert f"ticket {ticket}, notifier record 1: ticket deleted: its records are gone" in out


async def test_one_services_chain_deleted_from_a_ticket_is_named(
        estate: Estate, cli: Any, unique: str, mongo_db: Db) -> None:
    ticket = f"HD-DCH-{unique}"
    await history(estate, ticket)
    await mongo_db["audit"].delete_many({"ticket_id": ticket, "producer": "notifier"})
    status, out = await cli(ticket)
    assert status == 1
    assert (f"ticket {ticket}, notifier record 1: chain deleted: the notifier records are "
            "gone, but record 1 was anchored by notifier") in out


async def test_a_truncated_tail_with_a_rolled_back_head_is_named(
        estate: Estate, cli: Any, unique: str, mongo_db: Db) -> None:
    ticket = f"HD-TR-{unique}"
    await history(estate, ticket)
    await mongo_db["audit"].delete_many({"_id": {"$in": [record_key(ticket, "executor", 2),
                                                         record_key(ticket, "executor", 3)]}})
    status, out = await cli(ticket, "--no-anchors")
    assert status == 0, out  # the store alone cannot tell: this is what anchors are for
    status, out = await cli(ticket)
    assert status == 1
    assert (f"ticket {ticket}, executor record 2: truncated: the chain ends at record 1, but "
            "record 3 was anchored by executor") in out


async def test_records_appended_under_another_services_name_are_named(
        estate: Estate, cli: Any, unique: str, mongo_db: Db) -> None:
    ticket = f"HD-WR-{unique}"
    records = await history(estate, ticket)
    # The notifier's database credential and its own audit key, claiming to be the executor.
    notifier_key = AuditSigner(service="notifier", key=load_audit_signing_key(
        estate.keys.audit_private("notifier"), "notifier"))
    as_executor = forged(ticket, 4, records[2].hash, actor="executor:exec-1",
                         signer=notifier_key)
    await insert(mongo_db, as_executor)
    status, out = await cli(ticket)
    assert status == 1
    assert (f"ticket {ticket}, executor record 4: written by the wrong service: actor "
            "'executor:exec-1' but signed with the notifier audit key") in out
    # The same claim filed in the notifier's own chain: its actor is not its producer.
    in_own_chain = forged(ticket, 2, records[3].hash, actor="executor:exec-1",
                          signer=notifier_key)
    await insert(mongo_db, AuditRecord(**{**in_own_chain.model_dump(), "producer": "notifier"}))
    status, out = await cli(ticket)
    assert status == 1
    assert (f"ticket {ticket}, notifier record 2: in the notifier chain, but its actor is "
            "'executor:exec-1': record moved between chains") in out
    # Without any key at all: an unsigned record.
    other = f"HD-UN-{unique}"
    records = await history(estate, other)
    await insert(mongo_db, forged(other, 4, records[2].hash, actor="executor", signer=None))
    status, out = await cli(other)
    assert status == 1
    assert f"ticket {other}, executor record 4: unsigned record" in out


async def test_heads_are_anchored_periodically_without_an_explicit_flush(
        estate: Estate, cli: Any, unique: str, mongo_db: Db) -> None:
    ticket = f"HD-PER-{unique}"
    await estate.executor.audit.append(ticket, record_id="r1", kind="command",
                                       actor="executor:exec-1", data={"step": 1})
    for _ in range(50):  # AUDIT_ANCHOR_INTERVAL_S is 0.2 s here
        if ticket not in estate.executor.anchors.pending:
            break
        await asyncio.sleep(0.1)
    assert ticket not in estate.executor.anchors.pending
    await mongo_db["audit"].delete_many({"ticket_id": ticket})
    status, out = await cli(ticket)
    assert status == 1
    assert "ticket deleted" in out


async def test_a_tickets_final_event_anchors_its_head_at_once(
        estate: Estate, kafka_bootstrap: str, topic_prefix: str, real_parts: Any,
        database_name: str, cli: Any, mongo_db: Db) -> None:
    from notifier_factories import auth_rejected, submitted

    from schemas.registry import topics_produced_by

    # Auth with an hour between periodic anchors: only the final event can anchor now.
    settings = RuntimeSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=topic_prefix,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,
        intervention_keys_dir=str(estate.keys.directory), audit_anchor_interval_s=3600)
    auth = ServiceRuntime("auth", settings, produces=topics_produced_by("auth"))
    await auth.start()
    try:
        rejection = auth_rejected(submitted(at=datetime.now(UTC)), at=datetime.now(UTC))
        await auth.publish(rejection)  # AuthorizationRejected: the ticket's last word
        assert rejection.ticket_id not in auth.anchors.pending
        assert auth.anchors.published >= 1
    finally:
        await auth.stop()
    await mongo_db["audit"].delete_many({"ticket_id": rejection.ticket_id})
    status, out = await cli(rejection.ticket_id)
    assert status == 1
    assert f"ticket {rejection.ticket_id}, auth record 1: ticket deleted" in out
    assert "anchored by auth" in out
