"""Auth's wiring: one subscriber, on ``intervention.ticket-submitted``.

Each TicketSubmitted gets exactly one verdict event (AuthorizationVerified, signed;
AuthorizationRejected; or ClarificationRequested) whose id derives from the ticket event's
id, so a redelivery after a crash republishes the same id and a duplicate is dropped. A
ticket is decided on only if intake's signature on it verifies (``AUTH_INTAKE_VERIFY_KEYS``):
an unsigned or forged one is audited (``fact_refused``) and dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from faststream import FastStream

from schemas.events import TicketSubmitted
from schemas.registry import topic_for, topics_produced_by
from services.auth.handlers import Dependencies, authorize_ticket, utc_now
from services.auth.history import VerdictHistory
from services.auth.inventory import CachedServerInventory, MongoServerInventory
from services.auth.settings import AuthSettings
from services.auth.signing import VerdictSigner
from services.runtime.consumer import Decoder, Delivery, subscribe
from services.runtime.facts import FactGate
from services.runtime.keys import load_verify_keys
from services.runtime.service import ServiceRuntime, event_decoder
from services.runtime.telemetry import Telemetry

SERVICE_NAME = "auth"


@dataclass(frozen=True, kw_only=True)
class AuthService:
    runtime: ServiceRuntime
    inventory: MongoServerInventory
    history: VerdictHistory
    deps: Dependencies

    async def ensure_indexes(self) -> None:
        await self.inventory.ensure_indexes()
        await self.history.ensure_indexes()

    async def start(self) -> None:
        await self.ensure_indexes()
        await self.runtime.start()

    async def stop(self) -> None:
        await self.runtime.stop()

    def app(self) -> FastStream:
        app = self.runtime.app()
        app.on_startup(self.ensure_indexes)
        return app


def build(
    settings: AuthSettings | None = None,
    *,
    telemetry: Telemetry | None = None,
    clock: Callable[[], datetime] = utc_now,
    service_name: str = SERVICE_NAME,
    group: str | None = None,
) -> AuthService:
    """Wire auth. The signing key is loaded first, so a missing or unsafe key file stops
    the service at start instead of at its first ticket. ``group`` (default: the service
    name) is the Kafka consumer group, and the key its processed events are remembered by.
    """
    settings = settings or AuthSettings()
    signer = VerdictSigner.from_file(settings.signing_key_path)
    intake_keys = load_verify_keys(*settings.intake_verify_key_paths)
    runtime = ServiceRuntime(service_name, settings, telemetry=telemetry,
                             produces=topics_produced_by(SERVICE_NAME))
    inventory = MongoServerInventory(runtime.db)
    policy = settings.policy()
    history = VerdictHistory(
        runtime.db, retention=timedelta(days=settings.auth_decision_retention_days),
        window=policy.review_window, clock=clock)
    deps = Dependencies(
        inventory=CachedServerInventory(inventory,
                                        check_interval_s=settings.auth_inventory_check_s),
        history=history, signer=signer, policy=policy, clock=clock,
    )

    async def on_ticket_submitted(ticket: TicketSubmitted, delivery: Delivery) -> None:
        # The decision is recorded while it is made (services.auth.history): a crash before
        # the publish re-decides the same revision on redelivery, with the same verdict id.
        verdict = await authorize_ticket(ticket, deps, event_id=delivery.derive_event_id("verdict"))
        await delivery.publish(verdict)

    subscribe(
        runtime,
        topic_for(TicketSubmitted),
        on_ticket_submitted,
        group=group,
        # event_decoder(model) yields exactly that model (parse_event refuses any other).
        decoder=cast("Decoder[TicketSubmitted]", event_decoder(TicketSubmitted)),
        # Only a ticket intake signed is decided on: whoever can write the bus cannot hand
        # auth a request that never passed intake's checks (services.runtime.facts).
        verify=FactGate(trusted=intake_keys, audit=runtime.audit, actor=service_name).check,
    )
    return AuthService(runtime=runtime, inventory=inventory, history=history, deps=deps)


def create_app() -> FastStream:
    return build().app()
