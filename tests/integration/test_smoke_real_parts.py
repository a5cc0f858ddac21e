"""The real parts answer: Kafka through FastStream in a consumer group, FerretDB through PyMongo.

These run against the broker and store from ``tests/conftest.py`` (never an in-memory
substitute); the first lines of their output name where those came from.
"""

from __future__ import annotations

import asyncio

import pytest
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.topics import TopicSpec
from services.runtime.kafka_admin import ensure_topics

pytestmark = pytest.mark.integration


async def _consume_once(
    bootstrap: str, topic: str, group: str, *, fail: bool, seen: list[bytes], timeout: float = 20
) -> None:
    """One consumer-group member's life: start, handle what arrives, stop."""
    broker = KafkaBroker(bootstrap, graceful_timeout=5)
    got = asyncio.Event()

    @broker.subscriber(topic, group_id=group, ack_policy=AckPolicy.MANUAL,
                       auto_offset_reset="earliest")
    async def handle(body: bytes, msg: KafkaMessage) -> None:
        seen.append(body)
        got.set()
        if fail:
            raise RuntimeError("handler failed before its effects were durable")
        await msg.ack()

    await broker.start()
    try:
        await asyncio.wait_for(got.wait(), timeout)
        await asyncio.sleep(0.5)  # let a (wrong) auto-commit happen if one were configured
    finally:
        await broker.stop()


async def test_faststream_redelivers_after_restart_when_handler_failed(
    kafka_bootstrap: str, topic_prefix: str, unique: str, real_parts: object
) -> None:
    print(f"real parts: {real_parts}")
    topic = f"{topic_prefix}smoke-{unique}"
    group = f"smoke-{unique}"
    await ensure_topics(kafka_bootstrap, specs=[TopicSpec(name=topic, partitions=1)])

    publisher = KafkaBroker(kafka_bootstrap, enable_idempotence=True)
    await publisher.start()
    try:
        await publisher.publish(b"ticket-1", topic=topic, key=b"HD-1")
    finally:
        await publisher.stop()

    seen: list[bytes] = []
    await _consume_once(kafka_bootstrap, topic, group, fail=True, seen=seen)
    # Same group after a restart: the uncommitted message comes again, and this time succeeds.
    await _consume_once(kafka_bootstrap, topic, group, fail=False, seen=seen)
    assert seen == [b"ticket-1", b"ticket-1"]

    # Committed now: a third member of the group gets nothing.
    late: list[bytes] = []
    with pytest.raises(TimeoutError):
        await _consume_once(kafka_bootstrap, topic, group, fail=False, seen=late, timeout=6)
    assert late == []


async def test_ferretdb_round_trip_and_unique_index_enforced(
    mongo_db: AsyncDatabase[dict[str, object]], unique: str, real_parts: object
) -> None:
    print(f"real parts: {real_parts}")
    coll = mongo_db[f"smoke_{unique}"]
    await coll.create_index([("ticket_id", 1), ("revision", 1)], unique=True)
    await coll.insert_one({"ticket_id": "HD-1", "revision": 1, "note": "first"})

    with pytest.raises(DuplicateKeyError):
        await coll.insert_one({"ticket_id": "HD-1", "revision": 1, "note": "duplicate"})
    await coll.insert_one({"ticket_id": "HD-1", "revision": 2, "note": "next revision"})

    notes = [d["note"] async for d in coll.find({"ticket_id": "HD-1"}).sort("revision", 1)]
    assert notes == ["first", "next revision"]
    info = await mongo_db.command("buildInfo")
    print(f"store: {info.get('version')} ferretdb={'ferretdb' in str(info).lower()}")
