"""Auth's MongoDB adapters and `intervene servers import` against the real store (FerretDB)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "auth"))
from auth_factories import server, ticket

from schemas import ServerRef
from services.auth.history import PRUNE_BATCH, VerdictHistory
from services.auth.inventory import CachedServerInventory, MongoServerInventory
from services.cli.main import main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HEADER = (
    "service_id,service_name,ips,account_id,authorized_contacts,type,os_family,ipkvm,"
    "rescue,ssh_port,ssh_host_key,datacenter"
)


async def test_inventory_finds_servers_by_address_id_and_name(
    mongo_db: AsyncDatabase[dict[str, object]], unique: str
) -> None:
    inventory = MongoServerInventory(mongo_db, collection=f"servers_{unique}")
    await inventory.ensure_indexes()
    web = server(service_id="SRV-1", service_name="Web-01", ips="203.0.113.10 2001:db8::10")
    web_too = server(service_id="SRV-2", service_name="web-01", ips="203.0.113.20")
    db = server(service_id="SRV-3", service_name="db", ips="203.0.113.30")
    assert await inventory.upsert([web, web_too, db]) is not None

    async def ids(**ref: str) -> list[str]:
        return [s.service_id for s in await inventory.find(ServerRef.model_validate(ref))]

    assert await ids(ip="203.0.113.10") == ["SRV-1"]
    assert await ids(ip="2001:DB8:0:0::10") == ["SRV-1"]  # any spelling of the address
    assert await ids(service_id="SRV-3") == ["SRV-3"]
    assert await ids(service_name="  WEB-01 ") == ["SRV-1", "SRV-2"]
    assert await ids(ip="198.51.100.1") == []
    assert await ids(service_name="nothing") == []
    assert await ids(service_id="SRV-404") == []
    assert (await inventory.find(ServerRef(service_id="SRV-1")))[0] == web


async def test_lookups_follow_renames_and_moved_addresses(
    mongo_db: AsyncDatabase[dict[str, object]], unique: str
) -> None:
    inventory = MongoServerInventory(mongo_db, collection=f"servers_{unique}")
    await inventory.upsert([server(service_id="SRV-1", service_name="old", ips="10.9.0.1")])
    await inventory.upsert(
        [server(service_id="SRV-1", service_name="new", ips="10.9.0.2 10.9.0.3")]
    )

    async def ids(**ref: str) -> list[str]:
        return [s.service_id for s in await inventory.find(ServerRef.model_validate(ref))]

    assert await ids(ip="10.9.0.1") == []
    assert await ids(service_name="old") == []
    assert await ids(ip="10.9.0.3") == ["SRV-1"]
    assert await ids(service_name="NEW") == ["SRV-1"]
    # A stale lookup entry (an import that crashed between its writes) is filtered out.
    await mongo_db[f"servers_{unique}_keys"].update_one(
        {"_id": "ip:10.9.0.1"}, {"$addToSet": {"service_ids": "SRV-1"}}, upsert=True
    )
    assert await ids(ip="10.9.0.1") == []


async def test_upsert_is_idempotent_and_replaces_changed_rows(
    mongo_db: AsyncDatabase[dict[str, object]], unique: str
) -> None:
    inventory = MongoServerInventory(mongo_db, collection=f"servers_{unique}")
    records = [server(service_id=f"SRV-{i}", ips=f"10.0.0.{i}") for i in range(1, 6)]
    first = await inventory.upsert(records)
    again = await inventory.upsert(records)
    moved = await inventory.upsert([server(service_id="SRV-1", ips="10.0.1.1")])
    assert (first.created, first.updated, first.unchanged) == (5, 0, 0)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 5)
    assert (moved.created, moved.updated, moved.unchanged) == (0, 1, 0)
    assert await inventory.find(ServerRef(ip="10.0.0.1")) == ()
    assert [s.service_id for s in await inventory.find(ServerRef(ip="10.0.1.1"))] == ["SRV-1"]


async def test_history_counts_other_tickets_in_the_window_and_the_latest_revision(
    mongo_db: AsyncDatabase[dict[str, object]], unique: str
) -> None:
    history = VerdictHistory(mongo_db, collection=f"history_{unique}")
    await history.ensure_indexes()
    now = datetime.now(UTC)
    window = timedelta(days=30)
    current = ticket(ticket_id=f"HD-{unique}-now", occurred_at=now)
    for name, days_ago, service in [
        ("a", 1, "SRV-1"),
        ("b", 29, "SRV-1"),
        ("old", 31, "SRV-1"),  # outside the window
        ("other", 2, "SRV-2"),  # another server
    ]:
        past = ticket(ticket_id=f"HD-{unique}-{name}", occurred_at=now - timedelta(days=days_ago))
        assert await history.note_decision(past) is None  # never decided before
        await history.note_intervention(service, past, window=window)
    # A refused ticket is a decision, not an intervention.
    assert await history.note_decision(
        ticket(ticket_id=f"HD-{unique}-refused", occurred_at=now)) is None
    # Two revisions of one ticket are one intervention; recording twice is a no-op.
    a2 = ticket(ticket_id=f"HD-{unique}-a", revision=2, occurred_at=now - timedelta(hours=20))
    assert await history.note_decision(a2) == 1
    for _ in range(2):
        await history.note_intervention("SRV-1", a2, window=window)
        assert await history.note_decision(a2) == 2  # the same revision again: not stale
    # This ticket's own earlier revision does not count against it.
    await history.note_intervention(
        "SRV-1",
        ticket(ticket_id=current.ticket_id, occurred_at=now - timedelta(hours=1)),
        window=window,
    )

    # The count is of the others, and recording this ticket is part of the same write.
    assert await history.note_intervention("SRV-1", current, window=window) == 2
    assert await history.note_intervention("SRV-3", current, window=window) == 0
    # An older revision decided late sees the newer one and does not lower it.
    assert await history.note_decision(ticket(ticket_id=f"HD-{unique}-a", revision=1)) == 2
    assert await history.note_decision(a2) == 2
    assert await history.note_decision(
        ticket(ticket_id=f"HD-{unique}-refused", revision=2)) == 1


async def test_history_forgets_interventions_long_past_the_window_in_batches(
    mongo_db: AsyncDatabase[dict[str, object]], unique: str
) -> None:
    history = VerdictHistory(mongo_db, collection=f"history_{unique}")
    now = datetime.now(UTC)
    window = timedelta(days=30)
    stale = [ticket(ticket_id=f"HD-{unique}-old{i}", occurred_at=now - timedelta(days=100))
             for i in range(PRUNE_BATCH)]
    for old in stale:
        await history.note_intervention("SRV-1", old, window=window)
    doc = await mongo_db[f"history_{unique}_servers"].find_one({"_id": "server:SRV-1"})
    assert doc is not None
    assert len(doc["interventions"]) == PRUNE_BATCH  # none stale yet: all that old
    recent = ticket(ticket_id=f"HD-{unique}-new", occurred_at=now)
    assert await history.note_intervention("SRV-1", recent, window=window) == 0
    doc = await mongo_db[f"history_{unique}_servers"].find_one({"_id": "server:SRV-1"})
    assert doc is not None
    assert [e["ticket_id"] for e in doc["interventions"]] == [f"HD-{unique}-new"]


async def test_history_prunes_tickets_past_the_retention_and_idle_servers(
    mongo_db: AsyncDatabase[dict[str, object]], unique: str
) -> None:
    """What auth keeps does not grow with history: a ticket not decided on for the
    retention and a server without an intervention for twice the window are deleted."""
    clock = [datetime.now(UTC) - timedelta(days=70)]
    history = VerdictHistory(mongo_db, collection=f"history_{unique}",
                             retention=timedelta(days=8), window=timedelta(days=30),
                             clock=lambda: clock[0])
    # Written before documents had ``at`` (and the servers' counts lived here): pruned too.
    await mongo_db[f"history_{unique}"].insert_many([
        {"_id": f"ticket:HD-{unique}-legacy", "latest_revision": 2},
        {"_id": "server:SRV-LEGACY", "interventions": []}])
    old = ticket(ticket_id=f"HD-{unique}-old", occurred_at=clock[0])
    await history.note_decision(old)
    await history.note_intervention("SRV-OLD", old, window=timedelta(days=30))
    clock[0] += timedelta(days=69)  # an hour later than the last prune, 69 days on
    recent = ticket(ticket_id=f"HD-{unique}-new", occurred_at=clock[0])
    assert await history.note_decision(recent) is None
    await history.note_intervention("SRV-NEW", recent, window=timedelta(days=30))
    tickets = [d["_id"] async for d in mongo_db[f"history_{unique}"].find({})]
    servers = [d["_id"] async for d in mongo_db[f"history_{unique}_servers"].find({})]
    assert tickets == [f"ticket:HD-{unique}-new"]
    assert servers == ["server:SRV-NEW"]


async def test_cached_inventory_answers_from_memory_and_follows_an_import(
    mongo_db: AsyncDatabase[dict[str, object]], unique: str
) -> None:
    """Lookups cost no round trip once cached, and an import (which writes a new inventory
    version) takes effect at the next version check."""
    source = MongoServerInventory(mongo_db, collection=f"servers_{unique}")
    await source.upsert([server(service_id="SRV-1", account_id="ACC-1", ips="10.8.0.1")])
    clock = [0.0]
    cached = CachedServerInventory(source, check_interval_s=2.0, clock=lambda: clock[0])
    by_ip = ServerRef(ip="10.8.0.1")
    assert [s.account_id for s in await cached.find(by_ip)] == ["ACC-1"]
    assert await cached.find(ServerRef(ip="10.8.0.9")) == ()
    await mongo_db[f"servers_{unique}"].delete_many({})  # behind its back: not seen
    assert [s.account_id for s in await cached.find(by_ip)] == ["ACC-1"]
    # An import moves the server to another account and adds the unknown address.
    await source.upsert([server(service_id="SRV-1", account_id="ACC-2", ips="10.8.0.1"),
                         server(service_id="SRV-2", account_id="ACC-2", ips="10.8.0.9")])
    assert [s.account_id for s in await cached.find(by_ip)] == ["ACC-1"]  # not checked yet
    clock[0] += 2.0
    assert [s.account_id for s in await cached.find(by_ip)] == ["ACC-2"]
    assert [s.service_id for s in await cached.find(ServerRef(ip="10.8.0.9"))] == ["SRV-2"]
    # Re-importing the same rows changes nothing, so the cache is kept.
    version = await source.version()
    await source.upsert([server(service_id="SRV-2", account_id="ACC-2", ips="10.8.0.9")])
    assert await source.version() == version


@pytest.fixture
def store_env(monkeypatch: pytest.MonkeyPatch, real_parts: object, database_name: str) -> str:
    monkeypatch.setenv("MONGODB_URI", real_parts.mongodb_uri)  # type: ignore[attr-defined]
    monkeypatch.setenv("MONGODB_DATABASE", database_name)
    return database_name


async def test_cli_import_is_all_or_nothing_with_line_numbered_errors(
    store_env: str,
    mongo_db: AsyncDatabase[dict[str, object]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    unique: str,
) -> None:
    good = f"SRV-{unique}-1,web,192.0.2.1,ACC-1,,vps,linux,true,true,22,,MIL-1"
    bad_file = tmp_path / "servers.csv"
    bad_file.write_text(
        "\n".join(
            [
                HEADER,
                good,
                f"SRV-{unique}-2,web,192.0.2.300,ACC-1,,vps,linux,true,true,22,,MIL-1",
                f"SRV-{unique}-3,web,192.0.2.3,ACC-1,,cloud,linux,true,true,22,,MIL-1",
                f"SRV-{unique}-4,web,192.0.2.4,,,vps,linux,true,true,22,,MIL-1",
                f"SRV-{unique}-1,web,192.0.2.5,ACC-1,,vps,linux,true,true,22,,MIL-1",
                f"SRV-{unique}-6,web,192.0.2.6,ACC-1,,vps,linux,sure,true,22,,MIL-1",
            ]
        )
        + "\n"
    )
    # main() runs asyncio.run() itself, so it goes to a worker thread off the test's loop.
    status = await asyncio.to_thread(main, ["servers", "import", str(bad_file)])
    err = capsys.readouterr().err
    assert status == 1
    for line, field in [
        (3, "ips[0]"),
        (4, "type"),
        (5, "account_id"),
        (6, "service_id"),
        (7, "ipkvm"),
    ]:
        assert f"{bad_file}:{line}: {field}: " in err
    assert "nothing was imported" in err
    servers = mongo_db["auth_servers"]
    assert await servers.count_documents({"_id": {"$regex": f"^SRV-{unique}-"}}) == 0

    good_file = tmp_path / "good.csv"
    good_file.write_text(f"{HEADER}\n{good}\n")
    assert await asyncio.to_thread(main, ["servers", "import", str(good_file)]) == 0
    assert "1 new, 0 updated, 0 unchanged" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["servers", "import", str(good_file)]) == 0
    assert "0 new, 0 updated, 1 unchanged" in capsys.readouterr().out
    assert await servers.count_documents({"_id": {"$regex": f"^SRV-{unique}-"}}) == 1


async def test_cli_imports_the_demo_inventory(
    store_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = REPO / "deploy" / "local" / "demo-servers.csv"
    assert await asyncio.to_thread(main, ["servers", "import", str(demo)]) == 0
    assert "server(s):" in capsys.readouterr().out
