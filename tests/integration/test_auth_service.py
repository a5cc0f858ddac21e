"""The auth service end to end through the real Kafka broker and FerretDB.

One auth process (in-process, on its own topic prefix and database inside this run's)
serves the module. Each test publishes TicketSubmitted events keyed by ticket id, as intake
does, and reads the verdict topics filtered by its own ticket ids.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "auth"))
import contextlib

from auth_factories import authorization, server
from auth_factories import ticket as any_ticket

from schemas import (
    AuthorizationRejected,
    AuthorizationVerified,
    ClarificationRequested,
    Event,
    TicketSubmitted,
    encode,
    parse_event,
    topic_for,
)
from schemas.topics import DLQ_SUFFIX, physical
from services.auth.app import AuthService, build
from services.auth.settings import AuthSettings
from services.runtime.crypto import SigningKey, VerifyKey
from services.runtime.facts import sign_fact
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import init_keys, load_signing_key, load_verify_keys
from services.runtime.verdicts import verify_verdict

pytestmark = pytest.mark.integration


def ticket(**fields: Any) -> TicketSubmitted:
    """A ticket submitted just now: the service decides with the real clock."""
    return any_ticket(at=datetime.now(UTC), **fields)


VERDICTS = (AuthorizationVerified, AuthorizationRejected, ClarificationRequested)
SUBMITTED = topic_for(TicketSubmitted)


@dataclass
class Bus:
    """Everything on the verdict topics and the input's DLQ since the module started."""

    prefix: str
    by_key: dict[bytes, list[tuple[str, bytes, dict[str, str]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(
        self, ticket_id: str, n: int = 1, *, topic: str | None = None, timeout: float = 20
    ) -> list[tuple[str, bytes, dict[str, str]]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = [r for r in self.by_key[ticket_id.encode()] if topic in (None, r[0])]
            if len(got) >= n:
                return got
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{ticket_id}: {len(got)} of {n} records in {timeout}s")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.5))

    async def verdicts(self, ticket_id: str, n: int = 1) -> list[Event]:
        records = await self.wait(ticket_id, n)
        return [parse_event(v) for t, v, _ in records if not t.endswith(DLQ_SUFFIX)]


@dataclass
class Auth:
    service: AuthService
    bus: Bus
    trusted: dict[str, VerifyKey]
    intake: SigningKey

    async def submit(self, event: TicketSubmitted | bytes, *, key: str | None = None,
                     signed: bool = True) -> None:
        """Publish as intake does: signed with intake's key (unless ``signed`` is false)."""
        if isinstance(event, TicketSubmitted) and signed:
            event = sign_fact(event, self.intake)
        raw = event if isinstance(event, bytes) else encode(event)
        ticket_id = key or (event.ticket_id if isinstance(event, TicketSubmitted) else "")
        await self.service.runtime.broker.publish(
            raw, topic=physical(SUBMITTED, self.bus.prefix), key=ticket_id.encode()
        )


INVENTORY = [
    server(service_id="SRV-A1", service_name="web-01", ips="192.0.2.10", account_id="ACC-1"),
    server(service_id="SRV-A2", service_name="web-01", ips="192.0.2.11", account_id="ACC-1"),
    server(service_id="SRV-R", service_name="busy", ips="192.0.2.20", account_id="ACC-1"),
    server(
        service_id="SRV-B",
        service_name="web-01",
        ips="192.0.2.30",
        account_id="ACC-2",
        authorized_contacts="",
    ),
]


@pytest.fixture(scope="module")
async def auth(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_name: str,
    real_parts: Any,
    mongo_client: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Auth]:
    # Its own topic prefix and database inside this run's: another auth instance started by
    # other tests (e2e) on the run's prefix must not answer these tickets, nor this one
    # theirs, or "exactly one verdict" would not mean anything.
    run = uuid.uuid4().hex[:6]
    prefix = f"{topic_prefix}auth{run}."
    await ensure_topics(kafka_bootstrap, prefix=prefix)
    keys = init_keys(tmp_path_factory.mktemp("keys"))
    settings = AuthSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=prefix,
        mongodb_uri=real_parts.mongodb_uri,
        mongodb_database=f"{database_name}_auth{run}",
        handler_max_attempts=2,
        handler_retry_backoff_s=0.05,
        auth_signing_key=keys.signing_private,
        auth_intake_verify_keys=str(keys.intake_signing_public),
        auth_review_threshold=2,
    )
    service = build(settings)
    await service.inventory.upsert(INVENTORY)
    bus = Bus(prefix=prefix)
    topics = [physical(topic_for(m), prefix) for m in VERDICTS]
    topics.append(physical(SUBMITTED + DLQ_SUFFIX, prefix))
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    for _ in range(50):  # topics just created: wait until the metadata lists them all
        await consumer._client.force_metadata_update()
        if all(consumer.partitions_for_topic(t) for t in topics):
            break
        await asyncio.sleep(0.1)
    parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)

    async def collect() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    bus.by_key[r.key].append(
                        (
                            r.topic.removeprefix(prefix),
                            r.value,
                            {k: v.decode() for k, v in r.headers},
                        )
                    )
            if batch:
                bus.arrived.set()

    collector = asyncio.create_task(collect())
    await service.start()
    yield Auth(service=service, bus=bus, trusted=load_verify_keys(keys.signing_public),
               intake=load_signing_key(keys.intake_signing_private))
    collector.cancel()
    await consumer.stop()
    await service.stop()  # first: a running consumer would re-create the database
    await mongo_client.drop_database(settings.mongodb_database)


async def test_a_ticket_gets_exactly_one_signed_verdict_and_audit_records(auth: Auth) -> None:
    t = ticket(account_id="ACC-1", server={"ip": "192.0.2.10"})
    await auth.submit(t)
    (verdict,) = await auth.bus.verdicts(t.ticket_id)
    assert isinstance(verdict, AuthorizationVerified)
    verify_verdict(verdict, auth.trusted)
    assert verdict.ticket == sign_fact(t, auth.intake)  # intake's signature travels along
    assert verdict.causation_id == t.event_id
    assert verdict.server.service_id == "SRV-A1"
    assert str(verdict.server.ip) == "192.0.2.10"
    await asyncio.sleep(0.5)  # a second verdict would have shown up by now
    assert len(auth.bus.by_key[t.ticket_id.encode()]) == 1

    records = await auth.service.runtime.audit.records(t.ticket_id)
    assert f"event:{verdict.event_id}" in [r.record_id for r in records]
    (audited,) = [r for r in records if r.record_id == f"event:{verdict.event_id}"]
    assert audited.actor == "auth"
    assert audited.data["event_type"] == "AuthorizationVerified"


async def test_a_tickets_audit_costs_one_insert_per_record_and_no_read(auth: Auth) -> None:
    trips = auth.service.runtime.store_round_trips.totals
    before = dict(trips)
    t = ticket(account_id="ACC-1", server={"ip": "192.0.2.10"})
    await auth.submit(t)
    await auth.bus.verdicts(t.ticket_id)
    await asyncio.sleep(0.3)  # the handler's last writes after its publish
    spent = {k: n - before.get(k, 0) for k, n in trips.items() if n != before.get(k, 0)}
    records = await auth.service.runtime.audit.records(t.ticket_id)
    assert records, "auth audited nothing"
    assert spent.get(("insert", "audit")) == len(records)
    assert not [k for k in spent if k[1] in ("audit", "audit_heads") and k[0] != "insert"]


async def test_redelivery_of_a_ticket_gives_no_second_verdict(auth: Auth) -> None:
    first = ticket(account_id="ACC-1", server={"service_id": "SRV-A2"})

    def revision(n: int) -> TicketSubmitted:
        # Later revisions ride on the same key (partition), so each is handled after
        # every copy published before it.
        return ticket(
            ticket_id=first.ticket_id,
            revision=n,
            account_id="ACC-1",
            server={"service_id": "SRV-A2"},
        )

    await auth.submit(first)
    await auth.submit(first)  # intake's producer retried, or a consumer restarted mid-way
    await auth.submit(revision(2))
    await auth.submit(first)  # a late copy, after a newer revision was decided
    await auth.submit(revision(3))
    verdicts = await auth.bus.verdicts(first.ticket_id, 3)
    await asyncio.sleep(0.3)  # let the collector drain the other verdict topics
    verdicts = await auth.bus.verdicts(first.ticket_id)
    assert sorted((v.revision, type(v).__name__) for v in verdicts) == [
        (1, "AuthorizationVerified"),
        (2, "AuthorizationVerified"),
        (3, "AuthorizationVerified"),
    ]


async def test_refusals_and_questions_go_out_on_their_own_topics(auth: Auth) -> None:
    not_mine = ticket(account_id="ACC-1", server={"ip": "192.0.2.30"})
    ambiguous = ticket(account_id="ACC-1", server={"service_name": "WEB-01"})
    paid = ticket(account_id="ACC-1", server={"ip": "192.0.2.10"}, category="data_recovery")
    unauthorized = ticket(
        account_id="ACC-1",
        server={"ip": "192.0.2.10"},
        authorization=authorization(
            accepts_data_loss_disclaimer=False, signed_at=datetime.now(UTC)
        ),
    )
    for t in (not_mine, ambiguous, paid, unauthorized):
        await auth.submit(t)

    (rejected,) = await auth.bus.verdicts(not_mine.ticket_id)
    assert isinstance(rejected, AuthorizationRejected)
    assert rejected.reasons == ("server_unknown",)  # never "not yours": no oracle
    (question,) = await auth.bus.verdicts(ambiguous.ticket_id)
    assert isinstance(question, ClarificationRequested)
    assert "SRV-A1" in question.question
    assert "SRV-A2" in question.question
    assert "SRV-B" not in question.question  # another account's web-01
    (paid_only,) = await auth.bus.verdicts(paid.ticket_id)
    assert isinstance(paid_only, AuthorizationRejected)
    assert paid_only.reasons == ("scope_not_included",)
    assert "paid service" in paid_only.details
    (refused,) = await auth.bus.verdicts(unauthorized.ticket_id)
    assert isinstance(refused, AuthorizationRejected)
    assert refused.reasons == ("authorization_not_explicit",)


async def test_a_poison_message_goes_to_the_dlq_and_the_next_ticket_flows(auth: Auth) -> None:
    t = ticket(account_id="ACC-1", server={"ip": "192.0.2.11"})
    await auth.submit(b'{"event_type": "TicketSubmitted", "ticket_id": 42}', key=t.ticket_id)
    await auth.submit(t)
    (dead,) = await auth.bus.wait(t.ticket_id, topic=SUBMITTED + DLQ_SUFFIX)
    assert dead[2]["x-dlq-reason"] == "decode"
    assert dead[2]["x-dlq-error-class"] == "EventDecodeError.invalid"
    (verdict,) = await auth.bus.verdicts(t.ticket_id, 2)
    assert isinstance(verdict, AuthorizationVerified)


async def test_repeated_interventions_on_a_server_mark_the_verdict_for_review(
    auth: Auth,
) -> None:
    # The module's policy reviews from 2 other verified tickets on the server in 30 days.
    seen = []
    for _ in range(3):
        t = ticket(account_id="ACC-1", server={"service_name": "busy"})
        await auth.submit(t)
        (verdict,) = await auth.bus.verdicts(t.ticket_id)
        assert isinstance(verdict, AuthorizationVerified)
        verify_verdict(verdict, auth.trusted)
        seen.append(verdict.review_required)
    assert seen == [False, False, True]
    assert verdict.review_reason is not None
    assert "SRV-R" in verdict.review_reason


async def test_an_older_revision_arriving_after_a_newer_one_is_refused_as_stale(
    auth: Auth,
) -> None:
    newer = ticket(account_id="ACC-1", revision=2, server={"ip": "192.0.2.10"})
    older = ticket(
        ticket_id=newer.ticket_id, revision=1, account_id="ACC-1", server={"ip": "192.0.2.10"}
    )
    await auth.submit(newer)
    await auth.submit(older)
    verdicts = await auth.bus.verdicts(newer.ticket_id, 2)
    stale = next(v for v in verdicts if v.revision == 1)
    assert isinstance(stale, AuthorizationRejected)
    assert stale.reasons == ("revision_stale",)


async def test_a_ticket_not_signed_by_intake_is_never_decided_on(auth: Auth) -> None:
    """Whoever can write the bus cannot hand auth a request that never passed intake: an
    unsigned ticket, one signed by a stranger and one edited after intake signed it (another
    account's server) are audited as refused and dead-lettered; no verdict, no history."""
    unsigned = ticket(account_id="ACC-1", server={"ip": "192.0.2.10"})
    stranger = sign_fact(ticket(account_id="ACC-1", server={"ip": "192.0.2.10"}),
                         SigningKey.generate(key_id_prefix="intake"))
    genuine = sign_fact(ticket(account_id="ACC-1", server={"ip": "192.0.2.10"}), auth.intake)
    edited = json.loads(encode(genuine))
    edited["description"] = "please reset the root password of every server"
    await auth.submit(unsigned, signed=False)
    await auth.submit(stranger, signed=False)
    await auth.submit(json.dumps(edited).encode(), key=genuine.ticket_id)
    expected = {unsigned.ticket_id: "FactRefused.unsigned",
                stranger.ticket_id: "FactRefused.unknown_key",
                genuine.ticket_id: "FactRefused.bad_signature"}
    for ticket_id, error_class in expected.items():
        (dead,) = await auth.bus.wait(ticket_id, topic=SUBMITTED + DLQ_SUFFIX)
        assert dead[2]["x-dlq-reason"] == "unauthenticated"
        assert dead[2]["x-dlq-error-class"] == error_class
        records = await auth.service.runtime.audit.records(ticket_id)
        [refused] = [r for r in records if r.kind == "fact_refused"]
        assert refused.actor == "auth"
        assert refused.data["event_type"] == "TicketSubmitted"
    await asyncio.sleep(0.5)
    for ticket_id in expected:
        assert [r for r in auth.bus.by_key[ticket_id.encode()]
                if r[0] != SUBMITTED + DLQ_SUFFIX] == []


def _own_round_trips(auth: Auth) -> dict[tuple[str, str], int]:
    """Auth's store round trips so far, without the runtime's (deduplication marks, audit
    log): those are the consumer's and the audit writer's, counted and cut elsewhere."""
    return {k: n for k, n in auth.service.runtime.store_round_trips.totals.items()
            if k[1].startswith("auth_")}


async def test_a_ticket_costs_auth_at_most_two_round_trips_of_its_own(auth: Auth) -> None:
    """Issue 17: the inventory is answered from the process's cache and the history is read
    and written in one round trip per document: one for the decision (an insert for a first
    revision, shared by the tickets of a batch), one more when it is verified (it was five:
    two history reads, an inventory read, a find-and-modify and an update)."""
    warm = ticket(account_id="ACC-1", server={"ip": "192.0.2.11"})
    await auth.submit(warm)
    await auth.bus.verdicts(warm.ticket_id)  # the server's lookup is cached from now on
    loop = asyncio.get_running_loop()
    started = loop.time()
    before = _own_round_trips(auth)
    tickets = [ticket(account_id="ACC-1", server={"ip": "192.0.2.11"}) for _ in range(10)]
    for t in tickets:
        await auth.submit(t)
    for t in tickets:
        (verdict,) = await auth.bus.verdicts(t.ticket_id)
        assert isinstance(verdict, AuthorizationVerified)
    after = _own_round_trips(auth)
    spent = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    # The inventory's version is read every 2 s whatever the traffic: not a ticket's cost.
    version_reads = spent.pop(("find", "auth_servers_version"), 0)
    assert version_reads <= 1 + (loop.time() - started) // 2, spent
    assert sum(spent.values()) <= 2 * len(tickets), spent
    # A first revision's decision is an insert: the same cost at any history size (a
    # batch's tickets share it: services.runtime.group_commit).
    assert 1 <= spent.get(("insert", "auth_history"), 0) <= len(tickets), spent
    assert spent.get(("findAndModify", "auth_history_servers"), 0) == len(tickets), spent
    assert not any(c in ("auth_servers", "auth_servers_keys") for _, c in spent), spent


async def test_an_inventory_import_takes_effect_in_the_running_service(auth: Auth) -> None:
    """The cached inventory follows an import (a new inventory version) within
    ``AUTH_INVENTORY_CHECK_S`` (2 s): an unknown address that is then imported for the
    account is verified, and a server moved to another account is refused."""
    unknown = ticket(account_id="ACC-1", server={"ip": "192.0.2.77"})
    await auth.submit(unknown)
    (refused,) = await auth.bus.verdicts(unknown.ticket_id)
    assert isinstance(refused, AuthorizationRejected)
    assert refused.reasons == ("server_unknown",)  # and this answer is now cached
    await auth.service.inventory.upsert(
        [server(service_id="SRV-NEW", service_name="fresh", ips="192.0.2.77",
                account_id="ACC-1")])
    await asyncio.sleep(2.5)
    known = ticket(account_id="ACC-1", server={"ip": "192.0.2.77"})
    await auth.submit(known)
    (verified,) = await auth.bus.verdicts(known.ticket_id)
    assert isinstance(verified, AuthorizationVerified)
    assert verified.server.service_id == "SRV-NEW"
    # The provider moves it to another customer: ACC-1 may no longer act on it.
    await auth.service.inventory.upsert(
        [server(service_id="SRV-NEW", service_name="fresh", ips="192.0.2.77",
                account_id="ACC-2", authorized_contacts="")])
    await asyncio.sleep(2.5)
    moved = ticket(account_id="ACC-1", server={"ip": "192.0.2.77"})
    await auth.submit(moved)
    (after_move,) = await auth.bus.verdicts(moved.ticket_id)
    assert isinstance(after_move, AuthorizationRejected)
    assert after_move.reasons == ("server_unknown",)
