"""A service's operations endpoint answers from the real broker and store."""

from __future__ import annotations

import socket
from datetime import datetime

import httpx
import pytest

from schemas.events import TicketUpdated
from services.runtime.ops import OpsServer, health
from services.runtime.service import ServiceRuntime
from services.runtime.settings import RuntimeSettings

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_healthz_checks_kafka_and_store_and_metrics_show_published_events(
    kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: object, unique: str,
) -> None:
    settings = RuntimeSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_prefix=topic_prefix,
        mongodb_uri=real_parts.mongodb_uri, mongodb_database=database_name,  # type: ignore[attr-defined]
    )
    runtime = ServiceRuntime(f"ops-{unique}", settings)
    await runtime.start()
    port = _free_port()
    server = OpsServer(runtime, "127.0.0.1", port)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = await client.get("/healthz")
            assert health.status_code == 200
            assert health.json()["checks"] == {"kafka": True, "mongodb": True}

            await runtime.publish(TicketUpdated.new(
                ticket_id=f"HD-OPS-{unique}", revision=1, kind="other", message="hello",
                language="en"))
            metrics = (await client.get("/metrics")).text
        published = [line for line in metrics.splitlines()
                     if line.startswith("intervention_messages_published")
                     and "intervention.ticket-updated" in line]
        assert published, metrics[:2000]
        assert published[0].rstrip().endswith("1.0")
        assert f"HD-OPS-{unique}" not in metrics  # no ticket ids as labels
    finally:
        await server.stop()
        await runtime.stop()


async def test_healthz_is_503_naming_what_does_not_answer(
    kafka_bootstrap: str, unique: str,
) -> None:
    settings = RuntimeSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        mongodb_uri="mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300",
    )
    runtime = ServiceRuntime(f"ops-down-{unique}", settings)
    await runtime.broker.start()  # Kafka answers; the store on port 1 cannot
    port = _free_port()
    server = OpsServer(runtime, "127.0.0.1", port)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = await client.get("/healthz")
        assert health.status_code == 503
        body = health.json()
        assert body["checks"] == {"kafka": True, "mongodb": False}
        # Which dependency, since when and why.
        down = body["dependencies"]["mongodb"]
        assert down["ok"] is False
        assert "health probe" in down["error"]
        since = datetime.fromisoformat(down["since"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            again = (await client.get("/healthz")).json()["dependencies"]["mongodb"]
        assert datetime.fromisoformat(again["since"]) == since  # still the same outage
    finally:
        await server.stop()
        await runtime.stop()


async def test_a_health_probe_never_cancels_a_store_ping_that_hangs(
    kafka_bootstrap: str, unique: str,
) -> None:
    """Against a store that accepts connections and never answers (a silent TCP server), a
    probe gives up after its timeout but leaves the ping running - cancelling a pymongo
    operation in server selection can wedge the client for good - and the next probe waits
    on that same ping instead of piling up new ones."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    settings = RuntimeSettings(kafka_bootstrap_servers=kafka_bootstrap,
                               mongodb_uri=f"mongodb://127.0.0.1:{port}/?connectTimeoutMS=60000")
    runtime = ServiceRuntime(f"ops-silent-{unique}", settings)
    try:
        assert (await health(runtime, timeout=0.3))["mongodb"] is False
        first = runtime.store_ping
        assert first is not None
        assert (await health(runtime, timeout=0.3))["mongodb"] is False
        assert runtime.store_ping is first  # the same ping, still running
        assert not first.done()
        assert runtime.dependencies.status("mongodb").ok is False
    finally:
        if runtime.store_ping is not None:
            runtime.store_ping.cancel()  # the test's own cleanup, after the assertions
        await runtime.mongo.close()
        silent.close()
