"""What one ticket costs intake in store round trips, against the real broker and store.

Issue 17: FerretDB reads a whole collection for every operation but an insert, so a ticket's
path may only *insert* into collections that grow with history (owners, accepted records,
replay nonces) and touch by ``_id`` only the bounded outbox. Counted with the runtime's
command listener (``runtime.store_round_trips``, services/runtime/store_metrics.py); the
deduplication marks and the audit log are the runtime's and are counted elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from intake_rig import SUBMITTED, Intake, start_intake
from pymongo.asynchronous.database import AsyncDatabase

from schemas.topics import HELPDESK_REQUESTS
from services.intake.edge import REPLAY_PERIOD_S, REPLAYS, EdgeGuard, EdgeRefusal
from services.intake.examples import example_request
from services.runtime.kafka_admin import ensure_topics

pytestmark = pytest.mark.integration

# Collections that grow with every ticket ever seen: never read on a new ticket's path.
GROWING = ("intake_tickets", "intake_ticket_owners", "intake_ticket_heads")
TICKETS = 10


@pytest.fixture(scope="module")
async def intake(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
                 mongo_client: Any, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Intake]:
    run = uuid.uuid4().hex[:6]
    prefix = f"{topic_prefix}rt{run}."
    await ensure_topics(kafka_bootstrap, prefix=prefix)
    async for running in start_intake(kafka_bootstrap, prefix, f"{database_name}_rt{run}",
                                      real_parts, tmp_path_factory):
        yield running
    await mongo_client.drop_database(f"{database_name}_rt{run}")


def _intake_round_trips(intake: Intake) -> Counter[tuple[str, str]]:
    return Counter({k: n for k, n in intake.service.runtime.store_round_trips.totals.items()
                    if k[1].startswith("intake_")})


# Read once per CACHE_TTL_S (5 s) per integration and customer, whatever the traffic.
CACHED = ("intake_integrations", "intake_account_map")


async def _spent_on(intake: Intake, submit: Any, ticket_ids: list[str]
                    ) -> Counter[tuple[str, str]]:
    """Intake's round trips while ``ticket_ids`` are submitted and published, without the
    time-driven ones: the relay's listing of the outbox (once a second whatever the
    traffic), expired nonce periods dropped, and the cache refreshes (checked separately
    against the elapsed time)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    before = _intake_round_trips(intake)
    await asyncio.gather(*(submit(t) for t in ticket_ids))
    await intake.tap.wait(lambda: [r for t in ticket_ids for r in intake.tap.on(SUBMITTED, t)],
                          n=len(ticket_ids))
    for _ in range(100):  # the relay's deletes after the last publish
        if _intake_round_trips(intake)[("delete", "intake_outbox")] - before[
                ("delete", "intake_outbox")] >= len(ticket_ids):
            break
        await asyncio.sleep(0.1)
    spent = _intake_round_trips(intake)
    spent.subtract(before)
    refreshes = sum(n for (_, c), n in spent.items() if c in CACHED)
    assert refreshes <= len(CACHED) * (1 + (loop.time() - started) // 5), spent
    # Dropping an expired nonce period (once per 10 minutes) is housekeeping too.
    return Counter({k: n for k, n in spent.items()
                    if n and k != ("find", "intake_outbox") and k[1] not in CACHED
                    and k[0] != "drop"})


async def test_a_new_ticket_over_http_costs_intake_at_most_five_inserts_and_deletes(
        intake: Intake, unique: str) -> None:
    """Nonce, owner (with the ticket's latest revision), outbox entry, accepted record,
    outbox delete: no read, no update (it was seven, two of them scans of intake_tickets,
    plus the nonce). Requests at the same moment share the owner, outbox and accepted
    inserts and the outbox deletes (services.runtime.group_commit); each nonce is its own
    test-and-set."""
    ids = [f"HD-{unique}-h{n}" for n in range(TICKETS)]
    await intake.http.post("/v1/tickets", json=example_request(ticket_id=f"HD-{unique}-warm"))

    async def post(tid: str) -> None:
        answer = await intake.http.post("/v1/tickets", json=example_request(ticket_id=tid))
        assert answer.status_code == 202, answer.text

    spent = await _spent_on(intake, post, ids)
    replays = sum(n for (op, c), n in spent.items() if c.startswith(f"{REPLAYS}_"))
    assert replays == TICKETS, spent
    for shared in (("insert", "intake_ticket_owners"), ("insert", "intake_outbox"),
                   ("insert", "intake_tickets"), ("delete", "intake_outbox")):
        assert 1 <= spent[shared] <= TICKETS, spent
    assert sum(spent.values()) <= 5 * TICKETS, spent
    assert not [k for k in spent if k[1] in GROWING and k[0] != "insert"], spent


async def test_a_new_ticket_on_the_topic_costs_intake_at_most_four_round_trips_shared_in_a_batch(
        intake: Intake, unique: str) -> None:
    ids = [f"HD-{unique}-t{n}" for n in range(TICKETS)]
    bodies = {tid: json.dumps(intake.sealed(ticket_id=tid)).encode() for tid in ids}
    # Signed (and the portal customer mapped, through this process's client) beforehand.
    headers = {tid: await intake.desk.topic_headers(bodies[tid]) for tid in ids}

    async def publish(tid: str) -> None:
        await intake.producer.send_and_wait(intake.prefix + HELPDESK_REQUESTS, bodies[tid],
                                            key=tid.encode(), headers=headers[tid])

    spent = await _spent_on(intake, publish, ids)
    assert 1 <= spent[("insert", "intake_tickets")] <= TICKETS, spent
    # Owner, outbox entry, accepted record, outbox delete (the marks and the audit records
    # are the runtime's, one insert per batch): a batch's tickets share each of them.
    assert sum(spent.values()) <= 4 * TICKETS, spent
    assert not [k for k in spent if k[1] in GROWING and k[0] != "insert"], spent


async def test_a_replayed_signature_is_refused_and_expired_replay_periods_are_dropped(
        mongo_db: AsyncDatabase[dict[str, Any]]) -> None:
    """Nonces live in one collection per 10-minute period of the *signed* timestamp, so a
    replay meets its original, and a period nobody can still be fresh in is dropped whole
    (no delete scanning the collection)."""
    guard = EdgeGuard(mongo_db, cast(Any, None), cast(Any, None), cast(Any, None))
    now = datetime.now(UTC)
    signed_at = int(now.timestamp()) - 20
    await guard.admit_once("sig-1", signed_at, now)
    with pytest.raises(EdgeRefusal) as replayed:
        await guard.admit_once("sig-1", signed_at, now)
    assert replayed.value.code == "replayed"
    current = f"{REPLAYS}_{signed_at // REPLAY_PERIOD_S}"
    expired = f"{REPLAYS}_{signed_at // REPLAY_PERIOD_S - 3}"
    await mongo_db[expired].insert_one({"_id": "old"})
    await mongo_db[REPLAYS].insert_one({"_id": "legacy"})  # the single collection of before
    later = EdgeGuard(mongo_db, cast(Any, None), cast(Any, None), cast(Any, None))
    await later.admit_once("sig-2", int(now.timestamp()), now)
    names = set(await mongo_db.list_collection_names())
    assert current in names
    assert expired not in names
    assert REPLAYS not in names
