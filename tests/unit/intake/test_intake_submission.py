"""The intake use case with in-memory parts: once per revision, duplicates, conflicts, crashes.

The same code runs against the real broker and store in tests/integration; here each
branch of the idempotency rules is pinned down in milliseconds.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import TicketRejected, TicketSubmitted, parse_helpdesk_request
from services.intake.examples import example_request
from services.intake.metrics import IntakeMetrics
from services.intake.outbox import Entry
from services.intake.sealing import Sealer, seal_request
from services.intake.store import Claim
from services.intake.submission import (
    Accepted,
    Intake,
    Refused,
    Rejected,
    Unnamed,
    fingerprint,
    read_topic_message,
    submitted_event_id,
)
from services.runtime.crypto import PrivateSealingKey, open_text
from services.runtime.redaction import Redactor

KEY = PrivateSealingKey.generate()
CANARY = "Canary-Submit-93ab"
T0 = datetime.now(UTC)


class MemoryStore:
    def __init__(self) -> None:
        self.claims: dict[tuple[str, int], Claim] = {}
        self.heads: dict[str, int] = {}

    async def ensure_indexes(self) -> None:
        return None

    async def get(self, ticket_id: str, revision: int) -> Claim | None:
        return self.claims.get((ticket_id, revision))

    async def latest_revision(self, ticket_id: str) -> int | None:
        return self.heads.get(ticket_id)

    async def record_revision(self, ticket_id: str, revision: int) -> int | None:
        before = self.heads.get(ticket_id)
        self.heads[ticket_id] = max(before or 0, revision)
        return before

    async def claim(self, claim: Claim) -> Claim | None:
        key = (claim.ticket_id, claim.revision)
        if key in self.claims:
            return self.claims[key]
        self.claims[key] = claim
        return None


class MemoryOutbox:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.fail = False

    async def put(self, entry: Entry) -> Entry | None:
        if self.fail:
            raise ConnectionError("store unavailable")
        if entry.key in self.entries:
            return self.entries[entry.key]
        self.entries[entry.key] = entry
        return None

    async def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    async def unpublished(self) -> list[Entry]:
        return list(self.entries.values())

    async def remove(self, key: str) -> None:
        self.entries.pop(key, None)


class MemoryAudit:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str, dict[str, Any]]] = []

    async def append(self, ticket_id: str, *, record_id: str, kind: str, actor: str,
                     data: dict[str, Any]) -> None:
        if not any(r[1] == record_id for r in self.records):
            self.records.append((ticket_id, record_id, kind, data))


class Harness:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.outbox = MemoryOutbox()
        self.audit = MemoryAudit()
        self.published: list[TicketSubmitted | TicketRejected] = []
        self.fail_publish = False
        self.now = T0
        self.redactor = Redactor()
        self.intake = Intake(publisher=self.publish, audit=self.audit,  # type: ignore[arg-type]
                             store=self.store, outbox=self.outbox, metrics=IntakeMetrics(),
                             redactor=self.redactor, clock=lambda: self.now)
        self.intake.use_sealer(Sealer(KEY.public, self.redactor))

    async def publish(self, event: TicketSubmitted | TicketRejected) -> None:
        if self.fail_publish:
            raise ConnectionError("broker unavailable")
        self.published.append(event)


def plain(**changes: Any) -> Any:
    return parse_helpdesk_request(example_request(
        credentials={"username": "root", "password": CANARY}, **changes))


def sealed_document(**changes: Any) -> dict[str, Any]:
    return seal_request(example_request(credentials={"username": "root", "password": CANARY},
                                        **changes), recipient=KEY.public)


async def test_http_submission_is_sealed_classified_audited_and_published_once() -> None:
    h = Harness()
    outcome = await h.intake.submit(plain(), source="http", edge="http")
    assert isinstance(outcome, Accepted)
    assert not outcome.duplicate
    (event,) = h.published
    assert isinstance(event, TicketSubmitted)
    assert event.event_id == submitted_event_id("HD-20261122-0001", 1) == outcome.event_id
    assert (event.category, event.scope, event.category_source) == (
        "diagnostics", "included", "form")
    assert open_text(event.credentials.sealed, {KEY.key_id: KEY}) == CANARY
    assert CANARY not in event.model_dump_json()
    assert h.audit.records == []  # the runtime audits the event itself when publishing
    assert h.store.claims[("HD-20261122-0001", 1)].status == "submitted"
    assert h.outbox.entries == {}  # published entries leave the outbox
    assert h.redactor.redact_text(CANARY) == "[REDACTED]"


async def test_the_same_revision_twice_is_one_event_and_a_duplicate_answer() -> None:
    h = Harness()
    first = await h.intake.submit(plain(), source="http", edge="http")
    again = await h.intake.submit(plain(), source="http", edge="http")
    assert isinstance(again, Accepted)
    assert again.duplicate
    assert again.event_id == first.event_id  # type: ignore[union-attr]
    assert len(h.published) == 1


async def test_a_resealed_retry_from_the_helpdesk_is_still_a_duplicate() -> None:
    h = Harness()
    await h.intake.submit(parse_helpdesk_request(sealed_document()), source="topic",
                          edge="topic")
    again = await h.intake.submit(parse_helpdesk_request(sealed_document()), source="topic",
                                  edge="topic")
    assert isinstance(again, Accepted)
    assert again.duplicate
    assert len(h.published) == 1


async def test_a_higher_revision_is_a_new_submission() -> None:
    h = Harness()
    await h.intake.submit(plain(), source="http", edge="http")
    second = await h.intake.submit(plain(revision=2, description="Still no SSH after your "
                                         "reboot, please check again."), source="http",
                                   edge="http")
    assert isinstance(second, Accepted)
    assert not second.duplicate
    assert [e.revision for e in h.published] == [1, 2]
    assert h.published[0].event_id != h.published[1].event_id


async def test_different_content_under_an_accepted_revision_is_a_conflict() -> None:
    h = Harness()
    await h.intake.submit(plain(), source="http", edge="http")
    outcome = await h.intake.submit(plain(description="Something else entirely went wrong "
                                          "today."), source="http", edge="http")
    assert isinstance(outcome, Refused)
    assert outcome.reason == "conflict"
    assert "revision 2" in outcome.errors[0].message
    assert len(h.published) == 1


async def test_a_revision_below_the_latest_is_stale() -> None:
    h = Harness()
    await h.intake.submit(plain(revision=3), source="http", edge="http")
    outcome = await h.intake.submit(plain(revision=2), source="http", edge="http")
    assert isinstance(outcome, Refused)
    assert outcome.reason == "stale"
    assert "revision 4" in outcome.errors[0].message


async def test_rule_violations_are_rejected_and_nothing_is_claimed() -> None:
    h = Harness()
    outcome = await h.intake.submit(plain(channel="live_chat"), source="http", edge="http")
    assert isinstance(outcome, Rejected)
    assert [e.code for e in outcome.errors] == ["channel_not_allowed"]
    assert h.published == []
    assert h.store.claims == {}


async def test_a_broker_outage_after_the_entry_is_durable_still_accepts_and_publishes_later(
) -> None:
    h = Harness()
    h.fail_publish = True
    outcome = await h.intake.submit(plain(), source="http", edge="http")
    assert isinstance(outcome, Accepted)
    assert not outcome.duplicate
    assert h.published == []
    (entry,) = h.outbox.entries.values()
    assert CANARY not in entry.event  # the durable copy is sealed
    retry = await h.intake.submit(plain(), source="http", edge="http")
    assert isinstance(retry, Accepted)
    assert retry.duplicate  # the original is durable
    with pytest.raises(ConnectionError):
        await h.intake.relay.drain(everything=True)
    assert h.intake.relay.state.failing_since is not None
    h.fail_publish = False
    assert await h.intake.relay.drain(everything=True) == 0
    (event,) = h.published
    assert event.event_id == outcome.event_id
    assert h.outbox.entries == {}
    assert h.store.claims[("HD-20261122-0001", 1)].status == "submitted"
    assert h.intake.relay.state.failing_since is None


async def test_a_store_failure_before_the_entry_is_durable_gives_the_revision_back() -> None:
    h = Harness()
    h.outbox.fail = True
    with pytest.raises(ConnectionError):
        await h.intake.submit(plain(), source="http", edge="http")
    assert h.store.claims == {}
    h.outbox.fail = False
    outcome = await h.intake.submit(plain(), source="http", edge="http")
    assert isinstance(outcome, Accepted)
    assert not outcome.duplicate
    assert len(h.published) == 1


def entry_of(request: Any, *, event: str = '{"crashed": true}') -> Entry:
    claim = Claim(ticket_id=request.ticket_id, revision=1, fingerprint=fingerprint(request),
                  event_id=submitted_event_id(request.ticket_id, 1), source="http",
                  account_id="ACC-1001", category="diagnostics", category_source="form",
                  scope="included", confidence="high", status="pending", claimed_at=T0)
    return Entry(ticket_id=request.ticket_id, revision=1, fingerprint=claim.fingerprint,
                 event=event, claim=claim, accepted_at=T0)


async def test_an_entry_whose_writer_died_before_its_accepted_record_is_published_by_the_relay(
) -> None:
    """Killed between the outbox insert and the accepted record: the entry is durable, so
    the relay writes the record and publishes it; the helpdesk's retry is a duplicate."""
    h = Harness()
    h.fail_publish = True
    request = plain()
    await h.intake.submit(request, source="http", edge="http")
    (entry,) = h.outbox.entries.values()
    h.store.claims.clear()  # as if killed before the accepted record
    h.fail_publish = False
    assert await h.intake.relay.drain(everything=True) == 0
    (event,) = h.published
    assert event.model_dump_json() == entry.event
    assert h.store.claims[(request.ticket_id, 1)].event_digest == entry.digest
    again = await h.intake.submit(request, source="http", edge="http")
    assert isinstance(again, Accepted)
    assert again.duplicate
    assert len(h.published) == 1
    assert h.outbox.entries == {}  # the retry's own entry was a copy: removed unpublished


async def test_different_content_racing_for_a_revision_in_flight_is_a_conflict() -> None:
    h = Harness()
    h.outbox.entries["HD-20261122-0001:1"] = entry_of(plain())  # another request's, in flight
    changed = plain(description="Actually the disk is full, please look at it.")
    refused = await h.intake.submit(changed, source="http", edge="http")
    assert isinstance(refused, Refused)
    assert refused.reason == "conflict"
    assert h.published == []
    assert h.store.claims == {}


async def test_an_entry_that_lost_its_revision_is_never_published() -> None:
    """Its writer inserted it after the revision's winner had been published and removed,
    then died before deleting it: the accepted record names other bytes, so the relay
    deletes it unpublished - one revision, one set of bytes."""
    h = Harness()
    first = await h.intake.submit(plain(), source="http", edge="http")
    assert isinstance(first, Accepted)
    changed = plain(description="Actually the disk is full, please look at it.")
    loser = entry_of(changed, event='{"loser": true}')
    h.outbox.entries[loser.key] = loser
    copy = entry_of(plain(), event='{"copy": true}')  # same request, other bytes
    assert await h.intake.relay.drain(everything=True) == 0
    h.outbox.entries[copy.key] = copy
    assert await h.intake.relay.drain(everything=True) == 0
    assert len(h.published) == 1
    assert h.outbox.entries == {}


async def test_the_relay_republishes_the_accepted_bytes_after_a_crash_before_the_delete(
) -> None:
    h = Harness()
    h.fail_publish = True
    await h.intake.submit(plain(), source="http", edge="http")
    h.fail_publish = False
    (entry,) = h.outbox.entries.values()
    assert await h.intake.relay.drain(everything=True) == 0
    h.outbox.entries[entry.key] = entry  # published, then killed before the delete
    assert await h.intake.relay.drain(everything=True) == 0
    assert [e.model_dump_json() for e in h.published] == [entry.event, entry.event]
    assert h.outbox.entries == {}


async def test_a_retry_of_a_durable_revision_is_a_duplicate_after_a_newer_one_came() -> None:
    """Killed after its entry was durable but before its accepted record, then revision 2
    arrived: the retry of revision 1 is still a duplicate, not stale."""
    h = Harness()
    h.fail_publish = True
    first = plain()
    await h.intake.submit(first, source="http", edge="http")
    h.store.claims.clear()  # killed before the accepted record
    h.fail_publish = False
    await h.intake.submit(plain(revision=2, description="Still no SSH after your reboot, "
                                "please check again."), source="http", edge="http")
    again = await h.intake.submit(first, source="http", edge="http")
    assert isinstance(again, Accepted)
    assert again.duplicate


async def test_a_ticket_the_edge_just_bound_costs_no_revision_read() -> None:
    """The edge's owner insert recorded the first revision as the ticket's latest, so the
    submission neither reads nor raises it."""
    h = Harness()
    outcome = await h.intake.submit(plain(revision=2), source="http", edge="http",
                                    new_ticket=True)
    assert isinstance(outcome, Accepted)
    assert h.store.heads == {}  # record_revision was not called
    assert [e.revision for e in h.published] == [2]


async def test_the_relay_leaves_fresh_entries_to_their_request_but_takes_all_at_start() -> None:
    h = Harness()
    h.fail_publish = True
    await h.intake.submit(plain(), source="http", edge="http")
    h.fail_publish = False
    assert await h.intake.relay.drain() == 1  # within the grace: its request may publish it
    assert h.published == []
    assert await h.intake.relay.drain(everything=True) == 0
    assert len(h.published) == 1


# --- the topic -------------------------------------------------------------------------


async def test_topic_request_with_sealed_credentials_is_submitted() -> None:
    h = Harness()
    message = read_topic_message(json.dumps(sealed_document()).encode())
    outcome = await h.intake.receive(message, rejected_event_id=uuid.uuid4())
    assert isinstance(outcome, Accepted)
    assert isinstance(h.published[0], TicketSubmitted)


async def test_plaintext_on_the_topic_is_rejected_and_copied_nowhere() -> None:
    h = Harness()
    body = json.dumps(example_request(credentials={"username": "root", "password": CANARY}))
    message = read_topic_message(body.encode())
    assert CANARY not in repr(message)
    rejected_id = uuid.uuid4()
    outcome = await h.intake.receive(message, rejected_event_id=rejected_id)
    assert isinstance(outcome, Rejected)
    (event,) = h.published
    assert isinstance(event, TicketRejected)
    assert event.event_id == rejected_id
    assert [e.code for e in event.errors] == ["credentials_not_sealed"]
    assert CANARY not in event.model_dump_json()
    assert h.redactor.redact_text(CANARY) == "[REDACTED]"


async def test_structurally_broken_topic_request_that_names_its_ticket_is_rejected() -> None:
    h = Harness()
    document = sealed_document(language="it")
    del document["authorization"]
    document["server"] = {"ip": "not an ip"}
    outcome = await h.intake.receive(read_topic_message(json.dumps(document).encode()),
                                     rejected_event_id=uuid.uuid4())
    assert isinstance(outcome, Rejected)
    (event,) = h.published
    assert isinstance(event, TicketRejected)
    assert event.language == "it"
    assert {e.field for e in event.errors} == {"server.ip", "authorization"}


async def test_plaintext_in_a_broken_request_is_still_named_as_the_problem() -> None:
    document = example_request(credentials={"username": "", "password": CANARY})
    document["department"] = ""
    message = read_topic_message(json.dumps(document).encode())
    assert [e.field for e in message.errors] == ["department", "credentials"]
    assert message.errors[-1].code == "credentials_not_sealed"
    assert message.plaintext == (CANARY,)


async def test_a_rejected_message_for_a_revision_being_worked_on_is_refused_instead() -> None:
    h = Harness()
    await h.intake.submit(plain(), source="http", edge="http")
    body = json.dumps(example_request(credentials={"username": "root", "password": CANARY}))
    outcome = await h.intake.receive(read_topic_message(body.encode()),
                                     rejected_event_id=uuid.uuid4())
    assert isinstance(outcome, Refused)
    assert outcome.reason == "conflict"
    assert len(h.published) == 1  # no TicketRejected for a submitted revision
    assert h.audit.records[-1][2] == "intake.refused"


@pytest.mark.parametrize("body", [
    b"",
    b"not json",
    b"[1, 2, 3]",
    b'{"ticket_id": "HD 1", "revision": 1}',
    b'{"ticket_id": "HD-1", "revision": 0}',
    b'{"ticket_id": "HD-1", "revision": true}',
    b'{"ticket_id": "HD-1"}',
    b'{"ticket_id": "HD-1", "revision": NaN}',
    b"[" * 100_000,
])
def test_a_message_that_names_no_ticket_is_unnamed(body: bytes) -> None:
    with pytest.raises(Unnamed) as caught:
        read_topic_message(body)
    assert caught.value.errors


def test_unnamed_message_keeps_plaintext_for_the_redactor_only() -> None:
    body = json.dumps({"revision": 1, "credentials": {"username": "r", "password": CANARY}})
    with pytest.raises(Unnamed) as caught:
        read_topic_message(body.encode())
    assert caught.value.plaintext == (CANARY,)
    assert CANARY not in str(caught.value)


def test_fingerprint_ignores_key_order_and_the_secret_but_not_the_content() -> None:
    a = sealed_document()
    b = json.loads(json.dumps(dict(reversed(list(a.items())))))
    b["credentials"] = seal_request(example_request(credentials={
        "username": "root", "password": "another"}), recipient=KEY.public)["credentials"]
    assert fingerprint(parse_helpdesk_request(a)) == fingerprint(parse_helpdesk_request(b))
    c = dict(a, description="A different description of the problem.")
    assert fingerprint(parse_helpdesk_request(a)) != fingerprint(parse_helpdesk_request(c))


def test_idempotency_key_changes_when_plaintext_is_replaced_by_sealed() -> None:
    document = example_request(credentials={"username": "root", "password": CANARY})
    plain_key = read_topic_message(json.dumps(document).encode()).idempotency_key
    sealed_key = read_topic_message(json.dumps(
        seal_request(document, recipient=KEY.public)).encode()).idempotency_key
    assert plain_key != sealed_key
    assert plain_key.startswith("HD-20261122-0001:1:")
