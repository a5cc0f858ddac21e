"""The notifier's wiring: subscribers, the deadline sweeper, chat delivery and bots.

Subscribers (one per topic, each idempotent on ``event_id`` through the shared runtime)
hand every event to :meth:`Notifier.handle`. Beside them run the deadline sweeper and the
archiver of finished tickets (both switched by ``run_sweeper``), one
delivery worker per enabled chat adapter, the adapters' own listeners (Matrix sync) and,
when Slack or Telegram is enabled, the HTTP endpoint their callbacks reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from faststream import FastStream

from schemas.events import (
    AuthorizationRejected,
    ChatChannel,
    ClarificationRequested,
    EngineerAcknowledged,
    Event,
    HardwareEscalated,
    InterventionCompleted,
    InterventionQueued,
    InterventionStarted,
    ManualStepCompleted,
    ManualStepRequested,
    TicketRejected,
    TicketSubmitted,
)
from schemas.registry import topic_for, topics_produced_by
from services.notifier.acks import (
    CLOSURES,
    STEP_REPORTS,
    EngineerDesk,
    EngineerDirectory,
    PageIndex,
)
from services.notifier.archive import Archiver
from services.notifier.board import TicketBoard
from services.notifier.bots.base import ChatBot
from services.notifier.bots.matrix import MatrixBot
from services.notifier.bots.slack import SlackBot
from services.notifier.bots.telegram import TelegramBot
from services.notifier.claims import Claims
from services.notifier.deadlines import ALERT_CLAIMS, Deadlines, Sweeper, utc_now
from services.notifier.delivery import DeliveryWorker, Outbox
from services.notifier.handlers import ClosedPages, Collaborators, Notifier
from services.notifier.http import create_http_app
from services.notifier.ledger import TicketLedger
from services.notifier.metrics import NotifierMetrics, TicketProjection
from services.notifier.settings import NotifierSettings
from services.notifier.views import ticket_view
from services.runtime.consumer import Decoder, Delivery, Handler, subscribe
from services.runtime.crypto import build_keyring
from services.runtime.facts import FactGate, signing_publisher
from services.runtime.keys import load_signing_key, load_verify_keys
from services.runtime.service import ServiceRuntime, event_decoder
from services.runtime.telemetry import Telemetry

log = logging.getLogger(__name__)

SERVICE_NAME = "notifier"

CONSUMED: tuple[type[Event], ...] = (
    TicketSubmitted,
    TicketRejected,
    AuthorizationRejected,
    ClarificationRequested,
    InterventionQueued,
    InterventionStarted,
    ManualStepRequested,
    ManualStepCompleted,
    InterventionCompleted,
    HardwareEscalated,
    EngineerAcknowledged,
)

SIGNED_FACTS: tuple[type[Event], ...] = (ManualStepCompleted, EngineerAcknowledged)

Clock = Callable[[], datetime]


@dataclass(kw_only=True)
class NotifierService:
    runtime: ServiceRuntime
    settings: NotifierSettings
    notifier: Notifier
    desk: EngineerDesk
    directory: EngineerDirectory
    ledger: TicketLedger
    deadlines: Deadlines
    sweeper: Sweeper
    archiver: Archiver
    outbox: Outbox
    bots: list[ChatBot]
    workers: list[DeliveryWorker]
    http_app: FastAPI | None
    projection: TicketProjection | None = None
    run_sweeper: bool = True
    serve_http: bool = True
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _http_server: uvicorn.Server | None = None

    async def start_background(self) -> None:
        """Bots, delivery, the sweeper and the HTTP endpoint (after the broker is up)."""
        for bot in self.bots:
            await bot.start()
        for worker in self.workers:
            self._tasks.append(asyncio.create_task(worker.run(), name=f"deliver-{worker.channel}"))
        if self.run_sweeper:
            self._tasks.append(asyncio.create_task(self.sweeper.run(), name="sla-sweeper"))
            self._tasks.append(asyncio.create_task(self.archiver.run(), name="archiver"))
        if self.projection is not None:
            interval = timedelta(seconds=self.settings.notifier_metrics_refresh_s)
            self._tasks.append(asyncio.create_task(self.projection.run(interval),
                                                   name="metrics-gauges"))
        if self.serve_http and self.http_app is not None:
            config = uvicorn.Config(self.http_app, host=self.settings.notifier_http_host,
                                    port=self.settings.notifier_http_port, log_level="warning",
                                    lifespan="off")
            self._http_server = uvicorn.Server(config)
            self._tasks.append(asyncio.create_task(self._http_server.serve(), name="http"))

    async def stop_background(self) -> None:
        if self._http_server is not None:
            self._http_server.should_exit = True
        for task in self._tasks:
            if task.get_name() != "http":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for bot in self.bots:
            await bot.stop()

    async def start(self) -> None:
        await self.runtime.start()
        await self.start_background()

    async def stop(self) -> None:
        await self.stop_background()
        await self.runtime.stop()

    def app(self) -> FastStream:
        app = self.runtime.app()
        app.after_startup(self.start_background)
        app.on_shutdown(self.stop_background)
        return app


def build(
    settings: NotifierSettings | None = None,
    *,
    telemetry: Telemetry | None = None,
    clock: Clock = utc_now,
    bots: Sequence[ChatBot] | None = None,
    run_sweeper: bool = True,
    serve_http: bool = True,
    service_name: str = SERVICE_NAME,
) -> NotifierService:
    """Wire the notifier. ``bots`` adds adapters built by the caller (tests); the ones the
    settings enable are built here."""
    settings = settings or NotifierSettings()
    # Read first: without its key the notifier cannot vouch for an engineer's word, and
    # the executor would refuse every report it publishes.
    signing_key = load_signing_key(settings.signing_key_path)
    trusted = build_keyring([signing_key.verify_key, *(
        load_verify_keys(*settings.fact_verify_key_paths).values()
        if settings.fact_verify_key_paths else ())])
    runtime = ServiceRuntime(service_name, settings, telemetry=telemetry,
                             produces=topics_produced_by(SERVICE_NAME))
    runtime.redactor.pin_all(settings.secrets())  # for the life of the process
    redact = runtime.redactor.redact_text
    policy = settings.sla_policy()
    lease = timedelta(seconds=settings.notifier_claim_lease_s)
    db = runtime.db

    # Every acknowledgement and step report leaves signed (services.runtime.facts).
    publish = signing_publisher(runtime.publish, signing_key, "notifier")
    ledger = TicketLedger(db, partial(ticket_view, policy=policy), clock=clock)
    deadlines = Deadlines(ledger, policy)
    archiver = Archiver(ledger, clock=clock,
                        after=timedelta(seconds=settings.notifier_archive_after_s),
                        interval=timedelta(seconds=settings.notifier_archive_interval_s))
    pages = PageIndex(db)
    directory = EngineerDirectory(db)
    switches: tuple[tuple[ChatChannel, bool], ...] = (
        ("matrix", settings.matrix_enabled), ("slack", settings.slack_enabled),
        ("telegram", settings.telegram_enabled))
    enabled = [channel for channel, on in switches if on]
    extra = list(bots or ())
    channels = [*enabled, *(b.channel for b in extra if b.channel not in enabled)]
    outbox = Outbox(db, channels, clock=clock, lease=lease)
    projection = TicketProjection(
        db=db, board=TicketBoard(ledger),
        metrics=NotifierMetrics(runtime.telemetry.meter_provider, policy), clock=clock)
    desk = EngineerDesk(
        directory=directory, pages=pages, closures=Claims(db, CLOSURES, lease=lease),
        step_reports=Claims(db, STEP_REPORTS, lease=lease), state_of=deadlines.state,
        publish=publish, on_closed=ClosedPages(outbox), clock=clock,
        tracer=runtime.telemetry.tracer())
    notifier = Notifier(Collaborators(
        publish=publish, ledger=ledger, deadlines=deadlines, pages=pages,
        directory=directory, outbox=outbox, policy=policy, clock=clock, redact=redact,
        projection=projection), desk=desk)
    sweeper = Sweeper(ledger=ledger, deadlines=deadlines,
                      claims=Claims(db, ALERT_CLAIMS, lease=lease), policy=policy,
                      fire=notifier.fire, clock=clock,
                      interval=timedelta(seconds=settings.notifier_sweep_interval_s),
                      owner=service_name, recorded=notifier.recorded)

    all_bots: list[ChatBot] = [*_configured_bots(settings, desk, outbox, runtime, redact), *extra]
    slack = next((b for b in all_bots if isinstance(b, SlackBot)), None)
    telegram = next((b for b in all_bots if isinstance(b, TelegramBot)), None)
    http_app = (create_http_app(slack=slack, telegram=telegram)
                if slack is not None or telegram is not None else None)
    workers = [DeliveryWorker(
        outbox, bot, attempts=settings.notifier_delivery_attempts,
        backoff_s=settings.notifier_delivery_backoff_s, rounds=settings.notifier_delivery_rounds,
        round_delay_s=settings.notifier_delivery_round_delay_s, clock=clock, owner=service_name,
    ) for bot in all_bots]

    async def on_event(event: Event, delivery: Delivery) -> None:
        await notifier.handle(event, delivery)

    async def on_request(event: Event, delivery: Delivery) -> None:
        assert isinstance(event, TicketSubmitted | TicketRejected)
        await notifier.acknowledge(event, delivery)

    # (model, group suffix, handler, consumers): each subscription is its own consumer group.
    # New tickets are consumed twice: once to answer the customer at once (a dedupe lookup,
    # the audit append, one publish), once for the slower SLA and paging bookkeeping, so a
    # burst of tickets or a slow store delays the bookkeeping, never the initial response.
    subscriptions: list[tuple[type[Event], str, Handler[Event], int]] = [
        (TicketSubmitted, ".acknowledgement", on_request, settings.notifier_ticket_consumers),
        (TicketRejected, ".acknowledgement", on_request, 1),
        *((model, "", on_event, 1) for model in CONSUMED if model is not TicketRejected),
    ]
    # The engineers' facts consumed back (they stop SLA clocks and close pages) count only
    # when signed by the notifier: a forgery on the bus is audited and dead-lettered.
    gate = FactGate(trusted=trusted, audit=runtime.audit, actor=service_name)
    for model, suffix, handler, consumers in subscriptions:
        topic = topic_for(model)
        # Several consumers in one group take the topic's partitions in parallel (what
        # FastStream's "concurrent between partitions" subscriber does); a ticket's events
        # share a partition, so its order holds.
        for _ in range(consumers):
            subscribe(runtime, topic, handler,
                      # event_decoder(model) yields exactly that model (one of Event).
                      decoder=cast("Decoder[Event]", event_decoder(model)),
                      # One consumer group per subscription: ten consumers sharing one group
                      # would rebalance the whole group each time one joins (measured: 31 s
                      # to start). Each group still scales out across notifier replicas.
                      group=f"{service_name}.{topic}{suffix}",
                      verify=gate.check if model in SIGNED_FACTS else None)

    return NotifierService(
        runtime=runtime, settings=settings, notifier=notifier, desk=desk, directory=directory,
        ledger=ledger, deadlines=deadlines, sweeper=sweeper, archiver=archiver, outbox=outbox,
        bots=all_bots,
        workers=workers, http_app=http_app, projection=projection, run_sweeper=run_sweeper,
        serve_http=serve_http)


def _configured_bots(settings: NotifierSettings, desk: EngineerDesk, outbox: Outbox,
                     runtime: ServiceRuntime, redact: Callable[[str], str]) -> list[ChatBot]:
    bots: list[ChatBot] = []
    if settings.matrix_enabled:
        assert settings.matrix_homeserver_url
        assert settings.matrix_user_id
        assert settings.matrix_room_id
        bots.append(MatrixBot(
            homeserver_url=settings.matrix_homeserver_url, user_id=settings.matrix_user_id,
            room_id=settings.matrix_room_id, desk=desk, outbox=outbox, db=runtime.db,
            password=_secret(settings.matrix_password),
            access_token=_secret(settings.matrix_access_token),
            device_id=settings.matrix_device_id, redact=redact,
            on_secret=runtime.redactor.pin))
    if settings.slack_enabled:
        bots.append(SlackBot(
            webhook_url=_required(settings.slack_webhook_url),
            signing_secret=_required(settings.slack_signing_secret), desk=desk, redact=redact))
    if settings.telegram_enabled:
        assert settings.telegram_chat_id
        bots.append(TelegramBot(
            api_url=settings.telegram_api_url, token=_required(settings.telegram_bot_token),
            chat_id=settings.telegram_chat_id,
            webhook_secret=_required(settings.telegram_webhook_secret), desk=desk,
            redact=redact))
    return bots


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


def _required(value: Any) -> str:
    secret = _secret(value)
    if secret is None:
        raise ValueError("a required chat setting is missing")
    return secret


def create_app() -> FastStream:
    return build().app()
