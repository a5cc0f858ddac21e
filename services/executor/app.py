"""The executor's wiring: one subscriber (verify → claim → enqueue) and the worker pool.

Keys are loaded first, so a missing or unsafe key file stops the service at start instead
of at its first ticket. On start the worker offers every open claim: interventions
interrupted by a crash or restart are resumed from their journal (or handed to an
engineer), never started over.

A second subscriber takes the engineers' reports on manual steps (ManualStepCompleted, from
the notifier), each checked against the notifier's signing keys first: an unsigned or
wrongly signed report is audited (``fact_refused``) and dead-lettered, never acted on
(:mod:`services.runtime.facts`). The worker's periodic scan first sweeps manual steps
(deadlines, reports that arrived while their claim was being parked), so a wait survives any
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from faststream import FastStream

from schemas.events import AuthorizationVerified, ManualStepCompleted
from schemas.registry import topic_for, topics_produced_by
from services.executor.claim_integrity import ClaimSealer
from services.executor.claim_queue import QUEUE_RETENTION_MARGIN
from services.executor.claims import ClaimStore, Owner
from services.executor.handlers import Acceptance, utc_now
from services.executor.intervention import Dependencies, Interventions
from services.executor.manual import ManualReports, ManualSteps, ManualSweep
from services.executor.queue_notice import QueueNotices
from services.executor.rescue.provider import HttpRescueProvider, RescueProvider
from services.executor.settings import ExecutorSettings
from services.executor.ssh import HostKeyPins, SshConnector
from services.executor.vault import MongoCredentialVault
from services.executor.worker import Worker
from services.runtime.consumer import Decoder, subscribe
from services.runtime.facts import FactGate
from services.runtime.keys import (
    KeyFileError,
    audit_private_file,
    load_sealing_keyring,
    load_verify_keys,
)
from services.runtime.service import ServiceRuntime, audit_signer, event_decoder
from services.runtime.telemetry import Telemetry

SERVICE_NAME = "executor"
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExecutorService:
    runtime: ServiceRuntime
    settings: ExecutorSettings
    claims: ClaimStore
    worker: Worker
    interventions: Interventions
    acceptance: Acceptance
    vault: MongoCredentialVault
    owner: Owner
    manual: ManualSteps
    reports: ManualReports
    sweep: ManualSweep

    async def start_worker(self) -> None:
        await self.worker.start()
        resumed = await self.worker.scan_now()
        if resumed:
            log.info("offered %d open claims for resumption", resumed)

    async def stop_worker(self) -> None:
        # Running interventions get the graceful period to finish; whatever is still
        # running after it is cancelled and resumed from its journal on the next start.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.worker.idle(), self.settings.graceful_timeout_s)
        await self.worker.stop()

    async def start(self) -> None:
        await self.runtime.start()
        await self.start_worker()

    async def stop(self) -> None:
        await self.stop_worker()
        await self.runtime.stop()

    def app(self) -> FastStream:
        app = self.runtime.app()
        app.after_startup(self.start_worker)
        app.on_shutdown(self.stop_worker)
        return app


def build(settings: ExecutorSettings | None = None, *, telemetry: Telemetry | None = None,
          clock: Callable[[], datetime] = utc_now,
          service_name: str = SERVICE_NAME) -> ExecutorService:
    settings = settings or ExecutorSettings()
    sealing_keys = load_sealing_keyring(*settings.sealing_key_paths)
    verify_keys = load_verify_keys(*settings.verify_key_paths)
    fact_keys = load_verify_keys(*settings.fact_verify_key_paths)
    runtime = ServiceRuntime(service_name, settings, telemetry=telemetry,
                             produces=topics_produced_by(SERVICE_NAME))
    owner = Owner.this_process()
    sealer = claim_sealer(settings)
    # A queued claim outlives its verdict's age limit (then a run refuses it, on the
    # record) by a day before its partition may go.
    claims = ClaimStore(runtime.db, sealer, queue_retention=timedelta(
        seconds=settings.executor_verdict_max_age_s) + QUEUE_RETENTION_MARGIN)
    vault = MongoCredentialVault(runtime.db,
                                 load_verify_keys(*settings.operator_verify_key_paths))
    manual = ManualSteps(runtime.db, sealer)
    pins = HostKeyPins(runtime.db, sealer)
    connector = SshConnector(
        pins=pins, connect_timeout_s=settings.executor_connect_timeout_s,
        command_timeout_s=settings.executor_command_timeout_s,
        per_host_connects=settings.executor_host_connects,
        global_connects=settings.executor_global_connects)
    interventions = Interventions(Dependencies(
        runtime=runtime, claims=claims, connector=connector, vault=vault,
        sealing_keys=sealing_keys, verify_keys=verify_keys, settings=settings, owner=owner,
        manual=manual, pins=pins, sealer=sealer, rescue=_rescue_provider(settings, runtime),
        clock=clock))

    sweep = ManualSweep(steps=manual, claims=claims, audit=runtime.audit, owner=owner)

    async def scan() -> list[str]:
        await sweep.sweep()  # re-opens claims whose step has a result: listed just below
        return await claims.open_claim_ids()

    worker = Worker(interventions.run, concurrency=settings.executor_concurrency,
                    queue_size=settings.executor_queue_size, scan=scan,
                    rescan_s=settings.executor_rescan_s, is_queued=claims.is_queued)
    runtime.metrics.watch_work(
        queued=lambda: worker.waiting, running=lambda: worker.running,
        oldest_wait=worker.oldest_wait_s,
        concurrency=settings.executor_concurrency, queue_size=settings.executor_queue_size)
    reports = ManualReports(steps=manual, claims=claims, audit=runtime.audit, owner=owner,
                            offer=worker.offer)
    acceptance = Acceptance(
        claims=claims, audit=runtime.audit, verify_keys=verify_keys, owner=owner,
        offer=worker.offer, slot=worker.slot, lease_s=settings.executor_lease_s,
        max_age=timedelta(seconds=settings.executor_verdict_max_age_s),
        clock_skew=timedelta(seconds=settings.executor_clock_skew_s), clock=clock,
        announce=QueueNotices(worker=worker, publish=runtime.publish, clock=clock,
                              default_run_s=settings.executor_typical_run_s).announce)
    subscribe(
        runtime, topic_for(AuthorizationVerified), acceptance.accept,
        decoder=cast("Decoder[AuthorizationVerified]", event_decoder(AuthorizationVerified)),
        on_duplicate=acceptance.replayed,
    )
    subscribe(
        runtime, topic_for(ManualStepCompleted), reports.accept,
        decoder=cast("Decoder[ManualStepCompleted]", event_decoder(ManualStepCompleted)),
        verify=FactGate(trusted=fact_keys, audit=runtime.audit,
                        actor=f"executor:{owner.id}").check,
    )
    return ExecutorService(runtime=runtime, settings=settings, claims=claims, worker=worker,
                           interventions=interventions, acceptance=acceptance, vault=vault,
                           owner=owner, manual=manual, reports=reports,
                           sweep=sweep)


def claim_sealer(settings: ExecutorSettings) -> ClaimSealer:
    """The executor signs its claim records with its own audit key (claim_integrity): without
    it no claim could be trusted after a restart, so the executor does not start."""
    signer = audit_signer(SERVICE_NAME, settings)
    if signer is None:
        raise KeyFileError(
            f"the executor signs its claims with {audit_private_file(SERVICE_NAME)} in the "
            "keys directory (INTERVENTION_KEYS_DIR), which is missing: run `intervene keys "
            "init` (an existing key set gets the missing pairs added)")
    return ClaimSealer(signer.key)


def _rescue_provider(settings: ExecutorSettings, runtime: ServiceRuntime) -> RescueProvider | None:
    if not settings.executor_rescue_api_url:
        return None
    token = settings.executor_rescue_api_token or ""
    if token:
        runtime.redactor.pin(token)  # never in a log line, an audit record or a span
    return HttpRescueProvider(settings.executor_rescue_api_url, token=token,
                              timeout_s=settings.executor_rescue_http_timeout_s)


def create_app() -> FastStream:
    return build().app()
