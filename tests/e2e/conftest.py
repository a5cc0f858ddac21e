"""The whole system, once per session: four service processes, real Kafka and FerretDB, a
Synapse with an on-call room, and the demo customer's real servers (sshd processes, and a
rescue lab server with the provider's rescue API stand-in for the lock-out).

Set-up goes through the operator's commands (``intervene servers import``, ``executor
vault-key``, ``engineers add``); the tickets go through the public doors only — intake's
HTTP API and the helpdesk topic — and the engineer acts in the Matrix room. Every scenario
of ``intervene demo`` (:mod:`devstack.demo.scenarios`) is submitted at once when the first
test asks, and the tests then read what the system did: the records on every topic
(:class:`~devstack.demo.progress.BusRecorder`), the audit log, the span file, the room, the
service logs and the servers themselves.

The session's topics live under ``<session prefix>e2e.`` (deleted with the session's), its
store is ``<session database>_e2e`` (dropped at the end).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_system import Submitted, System
from synapse_fixture import Homeserver, synapse_homeserver_fixture  # noqa: F401

from devstack.demo import rescue_lab, targets
from devstack.demo.chat import OnCallRoom, open_on_call_room
from devstack.demo.estate import Estate, build_estate
from devstack.demo.helpdesk import HttpAnswer, post_ticket, publish_sealed
from devstack.demo.launch import (
    service_ports,
    start_services,
    stop_services,
    wait_healthy,
)
from devstack.demo.manifest import Manifest
from devstack.demo.operator import helpdesk_signer, set_up_customer
from devstack.demo.progress import BusRecorder
from devstack.demo.scenarios import SCENARIOS, Scenario
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import init_keys, load_sealing_public

SETTLE_TIMEOUT_S = 150.0


@pytest.fixture(scope="session")
def e2e_run(run_id: str) -> str:
    return run_id[:6]


@pytest.fixture(scope="session")
def estate(e2e_run: str) -> Iterator[Estate]:
    targets.install_missing_packages()  # nftables, iproute2: beyond the project bootstrap
    reason = targets.available(netns=True) or rescue_lab.available()
    if reason is not None:
        # A missing real part is a failure, never a skip: the suite proves nothing without it.
        pytest.fail(f"the demo servers cannot run here: {reason}")
    manifest = Manifest()
    try:
        yield build_estate(manifest, run=e2e_run, account_id=f"ACC-{e2e_run}", prefix="ive")
    finally:
        for _ in manifest.undo():
            pass


@pytest.fixture(scope="session")
def on_call(synapse_homeserver: Homeserver, e2e_run: str) -> OnCallRoom:
    return open_on_call_room(synapse_homeserver, run=e2e_run)


@pytest.fixture(scope="session")
def system(real_parts: Any, topic_prefix: str, database_name: str, estate: Estate,
           on_call: OnCallRoom, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("e2e")
    prefix = f"{topic_prefix}e2e."
    database = f"{database_name}_e2e"
    asyncio.run(ensure_topics(real_parts.bootstrap, prefix=prefix))
    keys = init_keys(workdir / "keys")
    span_file = workdir / "spans.jsonl"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": real_parts.bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
        "MONGODB_URI": real_parts.mongodb_uri, "MONGODB_DATABASE": database,
        "INTERVENTION_KEYS_DIR": str(keys.directory), "INTERVENE_SPAN_FILE": str(span_file),
        "HANDLER_RETRY_BACKOFF_S": "0.1",
        # A locked-out server is given up on after this long (production: 15 s).
        "EXECUTOR_CONNECT_TIMEOUT_S": "3", "EXECUTOR_SERVICE_SETTLE_S": "0.5",
        "NOTIFIER_TICKET_CONSUMERS": "1", "NOTIFIER_DELIVERY_ROUND_DELAY_S": "0.5",
        # The open-ticket gauges re-read every second (production: 15 s), so that a page
        # waiting a few seconds shows (test_dashboard_panels_live.py).
        "NOTIFIER_METRICS_REFRESH_S": "1",
        # On-site data-centre work is due in 15 s (production: 24 h), so that an SLA warning,
        # a breach and an overdue ticket happen for real. No demo scenario has that timeline:
        # only test_dashboard_panels_live.py's data-centre ticket does.
        "NOTIFIER_SLA_DATACENTER_MIN": "0.25",
        **on_call.notifier_env(),
        # edge-01's provider: the rescue API stand-in the estate runs, with lab timings.
        **estate.executor_env(),
    }
    set_up_customer(estate, env, workdir=workdir, on_call=on_call)
    ports = service_ports()
    log_dir = workdir / "logs"
    services = start_services(env, log_dir=log_dir, ports=ports)
    try:
        wait_healthy(services)
        yield System(prefix=prefix, database=database, mongodb_uri=real_parts.mongodb_uri,
                     bootstrap=real_parts.bootstrap, env=env, workdir=workdir,
                     span_file=span_file, log_dir=log_dir,
                     intake_url=f"http://127.0.0.1:{ports['intake']}", services=services,
                     signer=helpdesk_signer(estate, workdir))
    finally:
        stop_services(services)
        # Here rather than in e2e_db: the database exists even when no test got that far.
        with MongoClient(real_parts.mongodb_uri) as client:
            client.drop_database(database)


@pytest.fixture(scope="session")
async def bus(system: System) -> AsyncIterator[BusRecorder]:
    recorder = BusRecorder(system.bootstrap, system.prefix, from_beginning=True)
    await recorder.start()
    yield recorder
    await recorder.stop()


@pytest.fixture(scope="session")
async def e2e_db(system: System) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(system.mongodb_uri,
                                                                tz_aware=True)
    yield client[system.database]
    await client.close()


@pytest.fixture(scope="session")
async def submitted(system: System, bus: BusRecorder, estate: Estate) -> Submitted:
    """Every demo scenario submitted at once through its door; returns when all settled
    (or the timeout passed: each test then names its own stalled ticket)."""
    recipient = load_sealing_public(
        Path(system.env["INTERVENTION_KEYS_DIR"]) / "executor-sealing.pub")
    scenarios = {s.key: s for s in SCENARIOS}
    requests = {s.key: s.request(estate) for s in SCENARIOS}

    async def submit(scenario: Scenario) -> HttpAnswer | str:
        request = requests[scenario.key]
        if scenario.door == "http":
            return await post_ticket(system.intake_url, request, signer=system.signer)
        return await publish_sealed(request, recipient=recipient, bootstrap=system.bootstrap,
                                    prefix=system.prefix, signer=system.signer)

    answers = await asyncio.gather(*(submit(s) for s in SCENARIOS))
    result = Submitted(scenarios=scenarios, requests=requests,
                       answers=dict(zip(scenarios, answers, strict=True)))
    result.stalled = await bus.wait_for((result.ticket(k) for k in scenarios),
                                        timeout=SETTLE_TIMEOUT_S)
    return result
