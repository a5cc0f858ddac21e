"""The executor as its real process (``python -m services.executor``) on a test's own topic
prefix and database, for the tests that kill and restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.database import AsyncDatabase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import executor_targets as targets

from schemas.envelope import EventEnvelope
from schemas.registry import encode, topic_for
from schemas.topics import physical
from services.runtime.kafka_admin import ensure_topics
from services.runtime.keys import KeySetPaths, init_keys

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    prefix: str
    database: str
    keys: KeySetPaths
    env: dict[str, str]
    logs: Path
    bus: targets.EventBus
    db: AsyncDatabase[dict[str, Any]]
    bootstrap: str

    async def publish(self, event: EventEnvelope) -> None:
        await self.publish_raw(event, encode(event))  # type: ignore[arg-type]

    async def publish_raw(self, event: EventEnvelope, value: bytes) -> None:
        """``value`` onto ``event``'s topic, keyed by its ticket: what anyone who can write
        the bus can do (an edited or forged payload included)."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(physical(topic_for(event), self.prefix),  # type: ignore[arg-type]
                                         value, key=event.ticket_id.encode())
        finally:
            await producer.stop()


@asynccontextmanager
async def executor_stack(name: str, *, kafka_bootstrap: str, topic_prefix: str,
                         database_name: str, mongodb_uri: str, mongo_client: Any,
                         tmp_path: Path, env: dict[str, str]) -> AsyncIterator[Stack]:
    """Topics, keys, a recorder of every topic and the environment for executor processes;
    ``env`` adds the test's own executor settings."""
    run = uuid.uuid4().hex[:6]
    prefix = f"{topic_prefix}{name}{run}."
    database = f"{database_name}_{name}{run}"
    await ensure_topics(kafka_bootstrap, prefix=prefix)
    keys = init_keys(tmp_path / "keys")
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full.update({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC_PREFIX": prefix,
        "MONGODB_URI": mongodb_uri, "MONGODB_DATABASE": database,
        "INTERVENTION_KEYS_DIR": str(keys.directory), "PYTHONPATH": str(REPO), **env,
    })
    bus = targets.EventBus(kafka_bootstrap, prefix)
    await bus.start()
    try:
        yield Stack(prefix=prefix, database=database, keys=keys, env=full, logs=tmp_path,
                    bus=bus, db=mongo_client[database], bootstrap=kafka_bootstrap)
    finally:
        await bus.stop()
        await mongo_client.drop_database(database)


@dataclass
class Executor:
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def start_executor(stack: Stack, started: list[Executor]) -> Executor:
    log = stack.logs / f"executor-{len(started)}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.executor"], cwd=REPO,
                                   env=stack.env, stdout=out, stderr=out,
                                   start_new_session=True)
    executor = Executor(process=process, log=log)
    started.append(executor)
    return executor
