"""Kafka TLS and SASL against a real broker (``secure_kafka.py``: SASL_SSL and mutual TLS).

- a service runtime publishes and consumes over SASL_SSL (SCRAM-SHA-512), its topics
  ensured over the same connection, and its ``/healthz`` sees the broker;
- ``intervene submit --via kafka``'s producer works over SASL_SSL with PLAIN;
- mutual TLS works with the client certificate and fails without it;
- a wrong password and an untrusted CA fail in bounded time with an error that says which;
- the SASL password is in no log record, span, error, health answer or settings repr;
- under ACLs (the broker runs an authorizer), a service principal allowed only its own
  topics starts and works once an administrator has created the topics, creating and
  checking only its own; a missing topic or ACL stops it with one line naming the topics.

One broker per session (about 10-20 s to start on the 2-core machine).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from secure_kafka import (
    GROUP,
    PREFIXED,
    READ,
    SERVICE_USERNAME,
    TOPIC,
    USERNAME,
    WRITE,
    Acl,
    SecureBroker,
    create_acls,
    start_secure_broker,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "auth"))
from auth_factories import ticket as any_ticket

from schemas.events import (
    AuthorizationRejected,
    AuthorizationVerified,
    ClarificationRequested,
    TicketSubmitted,
    TicketUpdated,
)
from schemas.registry import encode, topic_for, topics_produced_by
from schemas.topics import (
    AUDIT_ANCHORED,
    DLQ_SUFFIX,
    HELPDESK_REQUESTS,
    TopicSpec,
    all_topics,
    physical,
)
from services.auth.app import build as build_auth
from services.auth.settings import AuthSettings
from services.cli.commands_intake import publish_request
from services.runtime.consumer import Delivery, subscribe
from services.runtime.facts import sign_fact
from services.runtime.kafka_admin import TopicsError, ensure_topics
from services.runtime.kafka_security import KafkaConnectError, kafka_client_options
from services.runtime.keys import init_keys, load_signing_key
from services.runtime.ops import health
from services.runtime.redaction import Redactor
from services.runtime.service import ServiceRuntime, event_decoder
from services.runtime.settings import RuntimeSettings
from services.runtime.telemetry import setup_telemetry

pytestmark = pytest.mark.integration

# A failure must be an error within seconds, never a hang until some outer timeout.
FAIL_FAST_S = 20.0


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = start_secure_broker(tmp_path_factory.mktemp("secure-kafka"))
    try:
        yield broker
    finally:
        broker.process.stop()


def _all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter()
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(vars(record)))  # args, extras, anything attached
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
    return "\n".join(parts)


def _capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("aiokafka", "faststream", "intervention", "services"):
        caplog.set_level(logging.DEBUG, logger=name)


def _span_text(spans: InMemorySpanExporter) -> str:
    return "\n".join(
        repr((span.name, dict(span.attributes or {}), [(e.name, dict(e.attributes or {}))
                                                        for e in span.events],
              dict(span.resource.attributes), span.status.description))
        for span in spans.get_finished_spans())


def _update(ticket: str) -> TicketUpdated:
    return TicketUpdated.new(ticket_id=ticket, revision=1, kind="acknowledgement",
                             message="We are looking at it.", language="en")


async def test_service_round_trip_over_sasl_ssl_with_scram(
    secure_broker: SecureBroker, real_parts: object, database_name: str, mongo_db: object,
    unique: str, caplog: pytest.LogCaptureFixture,
) -> None:
    _capture_everything(caplog)
    prefix = f"s{unique}."
    settings = secure_broker.sasl_settings(
        mechanism="SCRAM-SHA-512", kafka_topic_prefix=prefix,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,  # type: ignore[attr-defined]
    )
    spans = InMemorySpanExporter()
    redactor = Redactor()  # of its own: the records below are checked before any redaction
    runtime = ServiceRuntime(f"secure-{unique}", settings, redactor=redactor,
                             telemetry=setup_telemetry(f"secure-{unique}", span_exporter=spans))
    received: asyncio.Queue[TicketUpdated] = asyncio.Queue()

    async def handle(event: TicketUpdated, delivery: Delivery) -> None:
        await received.put(event)

    topic = topic_for(TicketUpdated)
    subscribe(runtime, topic, handle, decoder=event_decoder(TicketUpdated))
    await runtime.start()  # ensures its topics over SASL_SSL, then connects
    try:
        event = _update(f"HD-{unique}")
        await runtime.publish(event)
        got = await asyncio.wait_for(received.get(), 60)
        assert got.event_id == event.event_id
        checks = await health(runtime)
        assert checks == {"kafka": True, "mongodb": True}
        # The runtime's topics (the one it consumes, its DLQ) exist on the secure broker:
        # nothing is left to create.
        specs = runtime.topic_specs()
        # (and the audit anchors it publishes its heads to)
        assert sorted(s.name for s in specs) == sorted([
            physical(topic, prefix), physical(topic + DLQ_SUFFIX, prefix),
            physical(AUDIT_ANCHORED, prefix)])
        assert await ensure_topics(settings.kafka_bootstrap_servers, specs=specs,
                                   settings=settings) == []
    finally:
        await runtime.stop()

    password = secure_broker.password
    assert password not in json.dumps(checks)
    assert password not in _all_log_text(caplog)
    assert any(r.name.startswith("aiokafka") for r in caplog.records)  # the capture saw it
    assert password not in _span_text(spans)
    assert spans.get_finished_spans()  # spans were recorded, and checked
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert password not in text
    assert redactor.redact_text(f"pw={password}") != f"pw={password}"  # the redactor knows it


async def test_cli_producer_over_sasl_ssl_with_plain(
    secure_broker: SecureBroker, unique: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # PLAIN sends the password itself (inside TLS): aiokafka's DEBUG request log must not.
    _capture_everything(caplog)
    settings = secure_broker.sasl_settings(mechanism="PLAIN")
    prefix = f"p{unique}."
    topic = physical(HELPDESK_REQUESTS, prefix)
    await ensure_topics(settings.kafka_bootstrap_servers, settings=settings,
                        specs=[TopicSpec(name=topic, partitions=1)])
    document = {"ticket_id": f"HD-{unique}", "revision": 1}
    assert await publish_request(document, prefix=prefix, settings=settings) == topic

    consumer = AIOKafkaConsumer(**kafka_client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        batch = await consumer.getmany(partition, timeout_ms=10_000)
    finally:
        await consumer.stop()
    [record] = batch[partition]
    assert record.key == f"HD-{unique}".encode()
    assert json.loads(record.value) == document
    logs = _all_log_text(caplog)
    assert "SaslAuthenticateRequest" in logs  # the request was logged, its payload masked
    assert secure_broker.password not in logs


async def test_mutual_tls_needs_the_client_certificate(
    secure_broker: SecureBroker, unique: str,
) -> None:
    settings = secure_broker.mtls_settings()
    spec = TopicSpec(name=f"m{unique}.topic", partitions=1)
    assert await ensure_topics(settings.kafka_bootstrap_servers, specs=[spec],
                               settings=settings) == [spec.name]

    without = secure_broker.mtls_settings(with_client_cert=False)
    began = time.monotonic()
    with pytest.raises(KafkaConnectError) as failure:
        await asyncio.wait_for(ensure_topics(without.kafka_bootstrap_servers, specs=[spec],
                                             settings=without), FAIL_FAST_S)
    assert time.monotonic() - began < FAIL_FAST_S
    assert "KAFKA_SSL_CERTFILE" in str(failure.value)


async def test_wrong_password_fails_fast_with_a_clear_error(
    secure_broker: SecureBroker, real_parts: object, database_name: str, unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _capture_everything(caplog)
    wrong = f"wrong-{unique}-password"
    settings = secure_broker.sasl_settings(
        mechanism="SCRAM-SHA-256", password=wrong, kafka_topic_prefix=f"w{unique}.",
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,  # type: ignore[attr-defined]
    )
    runtime = ServiceRuntime(f"wrong-{unique}", settings, redactor=Redactor(),
                             telemetry=setup_telemetry(f"wrong-{unique}"))
    began = time.monotonic()
    try:
        with pytest.raises(KafkaConnectError) as failure:
            await asyncio.wait_for(runtime.start(), FAIL_FAST_S)
    finally:
        await runtime.stop()
    assert time.monotonic() - began < FAIL_FAST_S
    message = str(failure.value)
    assert "SASL authentication failed" in message
    assert repr(USERNAME) in message
    assert "SCRAM-SHA-256" in message
    assert secure_broker.sasl_bootstrap in message

    # The CLI's producer: the same cause, PLAIN this time.
    plain = secure_broker.sasl_settings(mechanism="PLAIN", password=wrong)
    with pytest.raises(KafkaConnectError, match="SASL authentication failed"):
        await asyncio.wait_for(publish_request({"ticket_id": "HD-x"}, settings=plain),
                               FAIL_FAST_S)

    logs = _all_log_text(caplog)
    for secret in (wrong, secure_broker.password):
        assert secret not in message
        assert secret not in logs


async def test_a_client_that_does_not_trust_the_ca_is_refused(
    secure_broker: SecureBroker,
) -> None:
    for trust in ("rogue", "system"):  # a CA that signed something else; the system's CAs
        settings = secure_broker.sasl_settings(trust=trust)  # type: ignore[arg-type]
        began = time.monotonic()
        with pytest.raises(KafkaConnectError) as failure:
            await asyncio.wait_for(ensure_topics(settings.kafka_bootstrap_servers,
                                                 specs=[], settings=settings), FAIL_FAST_S)
        assert time.monotonic() - began < FAIL_FAST_S
        message = str(failure.value)
        assert "TLS certificate is not trusted" in message
        assert "KAFKA_SSL_CAFILE" in message
        assert secure_broker.password not in message


def test_settings_never_show_the_password(secure_broker: SecureBroker, tmp_path: Path) -> None:
    password = secure_broker.password
    settings = secure_broker.sasl_settings()
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(password + "\n")
    from_file = RuntimeSettings(
        kafka_bootstrap_servers=secure_broker.sasl_bootstrap,
        kafka_security_protocol="SASL_SSL", kafka_sasl_username=USERNAME,
        kafka_sasl_password_file=secret_file, kafka_ssl_cafile=secure_broker.pki.ca_file,
    )
    for each in (settings, from_file):
        for text in (repr(each), str(each), each.model_dump_json(), repr(each.model_dump())):
            assert password not in text
        secret = each.kafka_sasl_secret()
        assert secret is not None
        assert secret.get_secret_value() == password


def _auth_acls(prefix: str, *, skip: tuple[str, ...] = ()) -> list[Acl]:
    """Auth's ACLs as docs/operations.md lists them: Read on what it consumes, Write on its
    DLQ, on what it produces and on the audit anchors (each implies Describe), Read on its
    consumer groups."""
    submitted = topic_for(TicketSubmitted)
    acls = [Acl(resource_type=TOPIC, name=physical(submitted, prefix), operation=READ),
            Acl(resource_type=TOPIC, name=physical(submitted + DLQ_SUFFIX, prefix),
                operation=WRITE),
            *(Acl(resource_type=TOPIC, name=physical(t, prefix), operation=WRITE)
              for t in (*topics_produced_by("auth"), AUDIT_ANCHORED)),
            Acl(resource_type=GROUP, name=f"{prefix}auth", operation=READ, pattern=PREFIXED)]
    return [a for a in acls if a.name.removeprefix(prefix) not in skip]


async def test_a_service_allowed_only_its_own_topics_starts_and_works(
    secure_broker: SecureBroker, real_parts: object, database_name: str, mongo_db: object,
    unique: str, tmp_path: Path,
) -> None:
    prefix = f"acl{unique}."
    admin = secure_broker.sasl_settings(kafka_topic_prefix=prefix)
    # The administrator creates every topic (what `intervene topics create` does) and grants
    # auth's principal its ACLs: nothing on the other services' topics, no Create.
    created = await ensure_topics(admin.kafka_bootstrap_servers, prefix=prefix, settings=admin)
    assert len(created) == len(all_topics(prefix))
    await create_acls(admin, f"User:{SERVICE_USERNAME}", _auth_acls(prefix))
    keys = init_keys(tmp_path / "keys")
    settings = secure_broker.service_settings(
        AuthSettings, kafka_topic_prefix=prefix, kafka_create_topics=False,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,  # type: ignore[attr-defined]
        intervention_keys_dir=str(keys.directory))

    # What every service did at start before: ensure the whole catalogue. Under ACLs the
    # other services' topics look missing to this principal, and it may not create them.
    with pytest.raises(TopicsError) as refused:
        await ensure_topics(settings.kafka_bootstrap_servers, prefix=prefix, settings=settings)
    assert f"not authorized to create Kafka topics for user '{SERVICE_USERNAME}'" in str(
        refused.value)
    assert physical(topic_for(TicketSubmitted), prefix) not in str(refused.value)

    # With KAFKA_CREATE_TOPICS=true (the default) too, it only looks at its own topics: all
    # there, so it asks for no Create.
    defaults = build_auth(secure_broker.service_settings(  # type: ignore[arg-type]
        AuthSettings, kafka_topic_prefix=prefix, mongodb_uri=settings.mongodb_uri,
        mongodb_database=database_name, intervention_keys_dir=str(keys.directory)))
    try:
        await defaults.runtime.prepare()
    finally:
        await defaults.stop()

    service = build_auth(settings)  # type: ignore[arg-type]
    await service.start()
    try:
        assert await health(service.runtime) == {"kafka": True, "mongodb": True}
        # A ticket, published by the administrator as intake would (signed with intake's
        # key, which auth checks): auth consumes it (Read on the topic and its group) and
        # publishes its verdict (Write, idempotent producer).
        ticket = sign_fact(any_ticket(at=datetime.now(UTC)),
                           load_signing_key(keys.intake_signing_private))
        producer = AIOKafkaProducer(**kafka_client_options(admin))
        await producer.start()
        try:
            await producer.send_and_wait(physical(topic_for(TicketSubmitted), prefix),
                                         encode(ticket), key=ticket.ticket_id.encode())
        finally:
            await producer.stop()
        verdict = await asyncio.wait_for(_first_record_for(admin, prefix, ticket.ticket_id),
                                         60)
        assert verdict in {topic_for(m) for m in (AuthorizationVerified, AuthorizationRejected,
                                                  ClarificationRequested)}
    finally:
        await service.stop()


async def _first_record_for(admin: RuntimeSettings, prefix: str, key: str) -> str:
    """The catalogue topic of the first record keyed ``key`` on auth's verdict topics."""
    topics = [physical(t, prefix) for t in topics_produced_by("auth")]
    consumer = AIOKafkaConsumer(**kafka_client_options(admin), enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, 0) for t in topics]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key == key.encode():
                        return str(record.topic).removeprefix(prefix)
    finally:
        await consumer.stop()


async def test_a_missing_topic_or_acl_stops_a_service_naming_them(
    secure_broker: SecureBroker, real_parts: object, database_name: str, mongo_db: object,
    unique: str, tmp_path: Path,
) -> None:
    prefix = f"acm{unique}."
    admin = secure_broker.sasl_settings(kafka_topic_prefix=prefix)
    missing = topic_for(AuthorizationRejected)  # not created; its ACL is granted
    unlisted = topic_for(ClarificationRequested)  # created; no ACL for auth
    service_topics = [topic_for(TicketSubmitted), topic_for(TicketSubmitted) + DLQ_SUFFIX,
                      *topics_produced_by("auth"), AUDIT_ANCHORED]
    await ensure_topics(admin.kafka_bootstrap_servers, settings=admin, specs=[
        TopicSpec(name=physical(t, prefix)) for t in service_topics if t != missing])
    await create_acls(admin, f"User:{SERVICE_USERNAME}", _auth_acls(prefix, skip=(unlisted,)))
    keys = init_keys(tmp_path / "keys")
    messages = {}
    for create in (False, True):
        service = build_auth(secure_broker.service_settings(  # type: ignore[arg-type]
            AuthSettings, kafka_topic_prefix=prefix, kafka_create_topics=create,
            mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,  # type: ignore[attr-defined]
            intervention_keys_dir=str(keys.directory)))
        try:
            with pytest.raises(TopicsError) as refused:
                await asyncio.wait_for(service.start(), FAIL_FAST_S)
        finally:
            await service.stop()
        messages[create] = str(refused.value)
    checked, creating = messages[False], messages[True]
    assert "\n" not in checked + creating
    assert (f"missing on {secure_broker.sasl_bootstrap}: {physical(missing, prefix)}; not "
            f"authorized for user '{SERVICE_USERNAME}' (no Describe, Read or Write ACL): "
            f"{physical(unlisted, prefix)}.") in checked
    assert (f"not authorized to create Kafka topics for user '{SERVICE_USERNAME}': "
            f"{physical(missing, prefix)}, {physical(unlisted, prefix)}.") in creating
    for name in service_topics:
        if name not in (missing, unlisted):
            assert physical(name, prefix) not in checked + creating
    assert secure_broker.service_password not in checked + creating
