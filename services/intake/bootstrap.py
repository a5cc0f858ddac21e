"""Wiring of one intake process: runtime, store, limiter, metrics, the use case, the topic.

Construction does no I/O (so the OpenAPI document can be exported without a broker);
:meth:`IntakeService.start` loads the executor's public key, creates indexes and topics (or
checks them: ``KAFKA_CREATE_TOPICS``) and starts consuming; the HTTP app's lifespan calls
it, so one process serves HTTP and the helpdesk topic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter

from schemas.events import TicketRejected, TicketSubmitted
from schemas.registry import topics_produced_by
from services.intake import app as subscribers
from services.intake.accounts import AccountMap
from services.intake.edge import EdgeGuard
from services.intake.integrations import IntegrationKeyFile, IntegrationRegistry, keys_dir_of
from services.intake.metrics import IntakeMetrics
from services.intake.outbox import MongoOutbox
from services.intake.ratelimit import RateLimiter
from services.intake.sealing import Sealer, load_recipient
from services.intake.settings import IntakeSettings
from services.intake.store import MongoTicketStore, RevisionBook
from services.intake.submission import Intake
from services.runtime.crypto import SigningKey
from services.runtime.dependencies import Status
from services.runtime.facts import sign_fact
from services.runtime.keys import load_signing_key
from services.runtime.ops import health_report
from services.runtime.redaction import Redactor
from services.runtime.service import ServiceRuntime
from services.runtime.telemetry import setup_telemetry

SERVICE_NAME = "intake"

REDACTOR_SECRETS = 16
"""How many recent secrets intake's own redactor keeps masking.

Intake learns one new secret per ticket, and the shared :class:`Redactor` recompiles its
pattern over *all* learnt secrets after each new one: measured ~0.7 s of blocked event loop
per ticket with the process-wide default's 1024 secrets (enough to stall the consumer's
heartbeats into a rebalance), ~70 ms with 64, ~8 ms with 16. A plaintext is in intake's
hands only while its own request is handled, so the most recent 16 cover it.
"""


class IntakeService:
    def __init__(
        self,
        settings: IntakeSettings | None = None,
        *,
        span_exporter: SpanExporter | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.settings = settings or IntakeSettings()
        self.metrics = IntakeMetrics()
        telemetry = setup_telemetry(
            SERVICE_NAME, span_exporter=span_exporter, metric_readers=[self.metrics.otel_reader],
            registry=self.metrics.registry,
        )
        self.runtime = ServiceRuntime(
            SERVICE_NAME, self.settings, telemetry=telemetry,
            redactor=redactor if redactor is not None else Redactor(max_secrets=REDACTOR_SECRETS),
            produces=topics_produced_by(SERVICE_NAME),
        )
        self.store = MongoTicketStore(self.runtime.db)
        self.revisions = RevisionBook(self.runtime.db)
        self.limiter = RateLimiter(
            per_minute=self.settings.intake_rate_limit_per_minute,
            burst=self.settings.intake_rate_limit_burst,
            max_keys=self.settings.intake_rate_limit_accounts,
        )
        self.intake = Intake(
            publisher=self._publish, audit=self.runtime.audit, store=self.store,
            metrics=self.metrics, redactor=self.runtime.redactor,
            outbox=MongoOutbox(self.runtime.db),
        )
        # Intake's own key (integration secrets, account map MACs): read at start, and made
        # on a fresh machine's first start so `intervene up` works before any integration.
        self.integration_key = IntegrationKeyFile(
            keys_dir_of(self.settings.intervention_keys_dir),
            create=self.settings.intake_create_integration_key)
        self.guard = EdgeGuard(
            self.runtime.db, IntegrationRegistry(self.runtime.db, self.integration_key),
            AccountMap(self.runtime.db, self.integration_key), self.runtime.audit)
        subscribers.register(self.runtime, self.intake, self.metrics, self.guard)
        self.running = False
        self.started = datetime.now(UTC)
        self._signing_key: SigningKey | None = None  # read in start()

    async def _publish(self, event: TicketSubmitted | TicketRejected) -> None:
        """Publish, every TicketSubmitted signed with intake's key (auth checks it)."""
        if isinstance(event, TicketSubmitted):
            if self._signing_key is None:
                raise RuntimeError("intake publishes tickets only once started (signing key)")
            event = sign_fact(event, self._signing_key)
        await self.runtime.publish(event)

    async def start(self) -> None:
        # The key first: without it intake could accept but never seal, so fail fast.
        recipient = load_recipient(self.settings.sealing_key_path)
        self._signing_key = load_signing_key(self.settings.signing_key_path)
        self.intake.use_sealer(Sealer(recipient, self.runtime.redactor))
        self.integration_key()
        await self.store.ensure_indexes()
        await self.runtime.start()
        self.intake.relay.start()  # publishes what a previous process accepted, then loops
        self.running = True

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """``/healthz``: Kafka and the store (since when, why), the key and the outbox."""
        key = Status(ok=self.intake.sealer is not None and self.running, since=self.started,
                     error=None if self.running else "not started")
        return await health_report(self.runtime, {"sealing_key": key,
                                                  "outbox": self.intake.relay.status()})

    async def stop(self) -> None:
        self.running = False
        await self.intake.relay.stop()
        await self.runtime.stop()
