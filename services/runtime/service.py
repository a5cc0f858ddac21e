"""Bootstrap of one service process: settings, telemetry, broker, store, audit, redaction.

Each service's ``app.py`` builds a :class:`ServiceRuntime`, registers its handlers with
:func:`services.runtime.consumer.subscribe`, and runs ``runtime.app()``. Everything that
must be the same in all four services — idempotent producer, manual commits, explicit
topics, the audit record of every published event — is decided here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from faststream import FastStream
from faststream.kafka import KafkaBroker
from pydantic import BaseModel
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from schemas.envelope import EventEnvelope
from schemas.registry import EventDecodeError, encode, parse_event, topic_for
from schemas.topics import AUDIT_ANCHORED, DLQ_SUFFIX, TopicSpec, physical, spec_for
from services.runtime import mongo_patch
from services.runtime.audit import AuditLog, AuditSigner
from services.runtime.audit_anchors import FINAL_EVENT_TYPES, AnchorBook
from services.runtime.decoding import Decoded, DecodeError
from services.runtime.dependencies import Dependencies
from services.runtime.idempotency import ProcessedEvents
from services.runtime.kafka_admin import TopicsError, ensure_topics, require_topics
from services.runtime.kafka_security import KafkaConnectError, faststream_security
from services.runtime.kafka_telemetry import kafka_telemetry_middleware
from services.runtime.keys import (
    KeyFileError,
    audit_private_file,
    default_keys_dir,
    load_audit_signing_key,
)
from services.runtime.loop_lag import LoopLag
from services.runtime.metrics import RuntimeMetrics
from services.runtime.ops import OpsServer
from services.runtime.redaction import Redactor, default_redactor
from services.runtime.settings import RuntimeSettings, SettingsError
from services.runtime.store_metrics import StoreRoundTrips
from services.runtime.telemetry import (
    Telemetry,
    configure_logging,
    current_trace_id,
    setup_telemetry,
)

log = logging.getLogger(__name__)

# Before any client exists: pymongo's condition waits made safe to cancel (see the module).
mongo_patch.apply()

E = TypeVar("E", bound=EventEnvelope)


class ServiceRuntime:
    def __init__(
        self,
        service_name: str,
        settings: RuntimeSettings,
        *,
        telemetry: Telemetry | None = None,
        redactor: Redactor | None = None,
        produces: Iterable[str] = (),
    ) -> None:
        """``produces``: the catalogue topics the service publishes to (its apps pass
        :func:`schemas.registry.topics_produced_by`); the topics it consumes are recorded by
        :func:`services.runtime.consumer.subscribe`. Together they are the topics the
        service ensures (or checks) at start: :meth:`topic_specs`."""
        self.service_name = service_name
        self.settings = settings
        # Every service anchors the heads of the audit chains it appends to.
        self.produced_topics: set[str] = {*produces, AUDIT_ANCHORED}
        self.consumed_topics: set[str] = set()
        self.telemetry = telemetry or setup_telemetry(service_name)
        self.redactor = redactor or default_redactor()
        secret = settings.kafka_sasl_secret()
        if secret is not None:  # never in a log line, an audit record or a span
            self.redactor.pin(secret.get_secret_value())
        self.metrics = RuntimeMetrics(self.telemetry.meter_provider, service_name)
        # The executor's runbook step spans become step-duration metrics (other services
        # open no step spans, so for them this does nothing).
        self.telemetry.tracer_provider.add_span_processor(self.metrics.runbook_steps)
        # Kept: the batch consumer records its per-message metrics through it.
        self.kafka_middleware = kafka_telemetry_middleware(
            self.telemetry.tracer_provider, self.telemetry.meter_provider)
        self.broker = KafkaBroker(
            settings.kafka_bootstrap_servers,
            client_id=service_name,
            # TLS and SASL (KAFKA_SECURITY_PROTOCOL and friends); None for PLAINTEXT.
            security=faststream_security(settings),
            # Idempotent producer: acks=all and no duplicates from the producer's own retries.
            enable_idempotence=True,
            allow_auto_create_topics=False,
            graceful_timeout=settings.graceful_timeout_s,
            middlewares=[self.kafka_middleware],
            logger=logging.getLogger(f"intervention.{service_name}.broker"),
        )
        # Every command sent to the store is counted (intervention.store.round_trips).
        self.store_round_trips = StoreRoundTrips(self.telemetry.meter_provider)
        self.mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            settings.mongodb_uri, tz_aware=True, event_listeners=[self.store_round_trips]
        )
        self.db: AsyncDatabase[dict[str, object]] = self.mongo[settings.mongodb_database]
        # The audit key is read in prepare() (construction does no I/O); from then on the
        # service's records and anchors are signed with it.
        self.anchors = AnchorBook(service=service_name, signer=None,
                                  publish=self._publish_anchor)
        self.audit = AuditLog(self.db, redactor=self.redactor, on_append=self.anchors.note)
        self.processed = ProcessedEvents(self.db)
        # Up or down since when, per dependency: /healthz says it, consumers report to it.
        self.dependencies = Dependencies()
        self.metrics.watch_dependencies(self.dependencies)
        self._on_start: list[Callable[[], object]] = []
        self._anchoring: asyncio.Task[None] | None = None
        self.loop_lag = LoopLag(self.telemetry.meter_provider)
        self._lag_watch: asyncio.Task[None] | None = None
        # The health probe's store ping still in flight (services.runtime.ops.health).
        self.store_ping: asyncio.Future[object] | None = None

    def consumes(self, topic: str) -> None:
        """Record that the service consumes the catalogue ``topic`` (and writes its DLQ)."""
        self.consumed_topics.add(topic)

    def topic_specs(self) -> list[TopicSpec]:
        """The physical topics this service uses: those it consumes, their DLQs (it writes
        them) and those it produces. Only these are created or checked at start, so under
        per-service ACLs a service never needs rights on another's topics."""
        names = (self.consumed_topics | {t + DLQ_SUFFIX for t in self.consumed_topics}
                 | self.produced_topics)
        return [spec_for(name, self.settings.kafka_topic_prefix) for name in sorted(names)]

    async def prepare(self) -> None:
        """Indexes and topics exist before the first message is consumed.

        ``KAFKA_CREATE_TOPICS=true`` creates the service's missing topics; ``false`` only
        checks them, and a missing one stops the start with a :class:`TopicsError`.
        """
        install_task_dump()
        self.use_audit_signer(audit_signer(self.service_name, self.settings))
        await self.audit.ensure_indexes()
        await self.processed.ensure_indexes()
        bootstrap = self.settings.kafka_bootstrap_servers
        if self.settings.kafka_create_topics:
            await ensure_topics(bootstrap, specs=self.topic_specs(), settings=self.settings)
        else:
            await require_topics(bootstrap, self.topic_specs(), settings=self.settings)

    async def start(self) -> None:
        await self.prepare()
        await self.broker.start()
        self.start_anchoring()

    async def stop(self) -> None:
        await self.stop_anchoring()
        await self.broker.stop()
        await self.mongo.close()
        self.telemetry.shutdown()

    def app(self) -> FastStream:
        app = FastStream(self.broker, logger=logging.getLogger(f"intervention.{self.service_name}"))
        app.on_startup(self.prepare)
        ops: list[OpsServer] = []

        @app.after_startup
        async def _start_ops() -> None:
            if self.settings.ops_http_port is not None:
                server = OpsServer(self, self.settings.ops_http_host, self.settings.ops_http_port)
                await server.start()
                ops.append(server)

        @app.after_startup
        async def _start_anchoring() -> None:
            self.start_anchoring()

        @app.on_shutdown
        async def _stop_ops() -> None:
            await self.stop_anchoring()  # the last heads go out while the broker is up
            for server in ops:
                await server.stop()

        @app.after_shutdown
        async def _close() -> None:
            await self.mongo.close()
            self.telemetry.shutdown()

        return app

    def use_audit_signer(self, signer: AuditSigner | None) -> None:
        self.audit.signer = signer
        self.anchors.signer = signer

    def start_anchoring(self) -> None:
        """Publish audit heads every ``AUDIT_ANCHOR_INTERVAL_S`` (idempotent); and measure
        the event loop's lag (:mod:`services.runtime.loop_lag`) for as long."""
        if self._anchoring is None or self._anchoring.done():
            self._anchoring = asyncio.create_task(
                self.anchors.run(self.settings.audit_anchor_interval_s),
                name=f"{self.service_name}-audit-anchors")
        if self._lag_watch is None or self._lag_watch.done():
            self._lag_watch = asyncio.create_task(self.loop_lag.run(),
                                                  name=f"{self.service_name}-loop-lag")

    async def stop_anchoring(self) -> None:
        for task in (self._anchoring, self._lag_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._anchoring = self._lag_watch = None
        await self.anchors.flush()

    async def _publish_anchor(self, key: str, value: bytes) -> None:
        # Keyed by chain (audit_anchors.anchor_key): compaction keeps each chain's newest.
        await self.broker.publish(
            value, topic=physical(AUDIT_ANCHORED, self.settings.kafka_topic_prefix),
            key=key.encode())

    async def publish(self, event: BaseModel) -> None:
        """Audit, then publish: both are idempotent on the event id, so a retry is safe.

        Inside a consumer's batch the record joins the batch's one audit insert, durable
        before the batch's offsets are committed (a crash re-runs the handler, which
        publishes and audits the same event id again). A final event is appended at once:
        its chain head is anchored right after the publish."""
        topic = topic_for(event)  # type: ignore[arg-type]
        if isinstance(event, EventEnvelope):
            final = event.EVENT_TYPE in FINAL_EVENT_TYPES
            append = self.audit.append if final else self.audit.append_later
            await append(
                event.ticket_id, record_id=f"event:{event.event_id}", kind="event",
                actor=self.service_name,
                data={"event_type": event.EVENT_TYPE, "topic": topic,
                      "trace_id": current_trace_id(),
                      "event": event.model_dump(mode="json")},
            )
            key: bytes | None = event.ticket_id.encode()
        else:
            key = None
        await self.broker.publish(
            encode(event), topic=physical(topic, self.settings.kafka_topic_prefix), key=key,  # type: ignore[arg-type]
        )
        self.metrics.published(topic)
        if isinstance(event, EventEnvelope) and final:
            # The ticket's last word: its head goes outside the store now, not in a minute.
            await self.anchors.flush(event.ticket_id)


def audit_signer(service_name: str, settings: RuntimeSettings) -> AuditSigner | None:
    """The service's audit key from the keys directory, or None (with a WARNING) when the
    file is absent: records are then unsigned, which the verifier reports once audit keys
    exist. A present but unusable file (mode, content) is an operator's error."""
    directory = (Path(settings.intervention_keys_dir).expanduser()
                 if settings.intervention_keys_dir else default_keys_dir())
    path = directory / audit_private_file(service_name)
    if not path.exists():
        log.warning("no audit key %s: %s writes unsigned audit records (`intervene keys "
                    "init` creates it)", path, service_name)
        return None
    return AuditSigner(service=service_name, key=load_audit_signing_key(path, service_name))


def install_task_dump() -> None:
    """``kill -USR1 <pid>`` logs every asyncio task's stack: what a service that is up but
    not progressing is waiting for (an operator's first question after an outage)."""
    import signal

    def chain(task: asyncio.Task[object]) -> str:
        # Follow the await chain down from the task's coroutine: the innermost line is
        # what it waits for.
        lines = []
        awaited: object = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} "
                             f"{frame.f_code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom",
                                                                      None)
        return "\n".join(lines) or "  (no frames)"

    def dump() -> None:
        for task in asyncio.all_tasks():
            log.warning("task %s:\n%s", task.get_name(), chain(task))

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)


def event_decoder(model: type[E]) -> Callable[[bytes], Decoded[E]]:
    """Decoder for an ``intervention.*`` topic: exactly ``model``, keyed by ``event_id``."""

    def decode(raw: bytes) -> Decoded[E]:
        try:
            event = parse_event(raw, model)
        except EventDecodeError as exc:
            raise DecodeError(str(exc), error_class=f"EventDecodeError.{exc.reason}") from None
        return Decoded(value=event, key=str(event.event_id), ticket_id=event.ticket_id)

    return decode


# An operator's fix, not a bug: impossible settings, an unreachable or refusing Kafka
# (credentials, TLS trust), missing topics or topics it may not create (ACLs).
OPERATOR_ERRORS: tuple[type[Exception], ...] = (SettingsError, KafkaConnectError, TopicsError,
                                                 KeyFileError)


def refused(service_name: str, exc: Exception) -> int:
    """Say an operator error in one line on stderr; returns the exit status, 2."""
    print(f"{service_name}: {exc}", file=sys.stderr)
    return 2


def run_service(service_name: str, create_app: Callable[[], FastStream], *,
                operator_errors: tuple[type[Exception], ...] = ()) -> None:
    """``python -m services.<name>``: run a FastStream service until interrupted.

    Impossible settings, an unreachable or refusing Kafka (credentials, TLS trust), missing
    topics or topics it may not create (ACLs) and the service's own ``operator_errors`` (a
    missing or unsafe key file) are an operator's fix: one line on stderr saying which, exit
    status 2, not a traceback.
    """
    configure_logging(service_name)
    refusals: tuple[type[Exception], ...] = (*OPERATOR_ERRORS, *operator_errors)
    try:
        asyncio.run(create_app().run())
    except refusals as exc:
        sys.exit(refused(service_name, exc))
