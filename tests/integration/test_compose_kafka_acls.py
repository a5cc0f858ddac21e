"""deploy/compose.yaml's broker, run for real: its Kafka settings and the `acls` one-shot's
grants on a broker from the local stack's jars (no Docker engine runs here).

The broker gets exactly the compose file's ``KAFKA_*`` settings (SASL on every listener,
the StandardAuthorizer, only the administrator a super user) with its JAAS file from
``intervene keys kafka``; only the addresses become free loopback ports. The grants are read
from the compose file's script. Then auth, as its own principal with only those ACLs,
starts (topics only checked), appends and anchors its audit heads, while the notifier's
principal may not write auth's topic. A second broker process, on free ports: nothing of
the shared stack is touched.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from secure_kafka import GROUP, LITERAL, PREFIXED, READ, TOPIC, WRITE, Acl, create_acls

from devstack import localstack
from services.auth.app import build
from services.auth.settings import AuthSettings
from services.runtime.kafka_admin import cluster_metadata, ensure_topics
from services.runtime.kafka_credentials import init_kafka_credentials
from services.runtime.kafka_security import kafka_security_options
from services.runtime.keys import KeySetPaths, init_keys
from services.runtime.settings import RuntimeSettings

pytestmark = pytest.mark.integration

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml")
                         .read_text(encoding="utf-8"))
GRANT = re.compile(r"^\s*grant (\S+) (Read|Write) (literal|prefixed) (topic|group) (\S+)\s*$")
# Settings of the image's environment that are about the container, not the broker.
_CONTAINER_ONLY = {"KAFKA_OPTS", "KAFKA_HEAP_OPTS", "CLUSTER_ID", "KAFKA_NODE_ID",
                   "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_LOG_DIRS"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_properties(port: int, controller: int) -> str:
    """The compose file's broker settings as server.properties (the apache/kafka image maps
    ``KAFKA_FOO_BAR`` to ``foo.bar``), on loopback ports."""
    props = {name.removeprefix("KAFKA_").lower().replace("_", "."): str(value)
             for name, value in COMPOSE["services"]["kafka"]["environment"].items()
             if name not in _CONTAINER_ONLY}
    props.update({
        "node.id": "1", "log.dirs": "${LOG_DIR}", "num.partitions": "1",
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port}",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller}"})
    return "".join(f"{k}={v}\n" for k, v in props.items())


def compose_grants() -> dict[str, list[Acl]]:
    script = "\n".join(COMPOSE["services"]["acls"]["command"])
    grants: dict[str, list[Acl]] = {}
    for line in script.splitlines():
        if (m := GRANT.match(line)) is None:
            continue
        principal, operation, pattern, kind, name = m.groups()
        grants.setdefault(principal, []).append(Acl(
            resource_type=TOPIC if kind == "topic" else GROUP, name=name,
            operation=READ if operation == "Read" else WRITE,
            pattern=LITERAL if pattern == "literal" else PREFIXED))
    return grants


@dataclass
class ComposeBroker:
    bootstrap: str
    keys: KeySetPaths

    def settings(self, role: str, **extra: Any) -> dict[str, Any]:
        password = (self.keys.directory / f"kafka-{role}.password").read_text().strip()
        # No topic prefix: the compose ACLs name the real topics (the session's
        # KAFKA_TOPIC_PREFIX, set for the other suites, must not leak in).
        return {"kafka_bootstrap_servers": self.bootstrap, "kafka_topic_prefix": "",
                "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": f"intervention-{role}", "kafka_sasl_password": password,
                **extra}


@pytest.fixture(scope="module")
def compose_broker(tmp_path_factory: pytest.TempPathFactory,
                   real_parts: Any) -> Iterator[ComposeBroker]:
    directory = tmp_path_factory.mktemp("compose-kafka")
    keys = init_keys(directory / "keys")
    init_kafka_credentials(keys.directory)
    port, controller = _free_port(), _free_port()
    broker = ComposeBroker(bootstrap=f"127.0.0.1:{port}", keys=keys)
    admin = RuntimeSettings(**broker.settings("admin"))

    def ready() -> bool:
        try:
            return asyncio.run(cluster_metadata(broker.bootstrap, timeout=3.0,
                                                settings=admin)) is not None
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    # The image passes KAFKA_OPTS (the JAAS file) to the JVM; the jars' JVM reads the same
    # option from JAVA_TOOL_OPTIONS.
    jaas = keys.directory / "kafka-broker-jaas.conf"
    before = os.environ.get("JAVA_TOOL_OPTIONS")
    os.environ["JAVA_TOOL_OPTIONS"] = f"-Djava.security.auth.login.config={jaas}"
    try:
        process = localstack.start_kafka_broker(
            broker_properties(port, controller), directory / "kafka", ready=ready,
            ready_timeout=120.0)
    finally:
        if before is None:
            os.environ.pop("JAVA_TOOL_OPTIONS", None)
        else:
            os.environ["JAVA_TOOL_OPTIONS"] = before
    try:
        yield broker
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def granted(compose_broker: ComposeBroker) -> ComposeBroker:
    admin = RuntimeSettings(**compose_broker.settings("admin"))
    await ensure_topics(compose_broker.bootstrap, prefix="", settings=admin)  # `topics`
    for principal, acls in compose_broker_grants().items():  # `acls`
        await create_acls(admin, f"User:{principal}", acls)
    return compose_broker


def compose_broker_grants() -> dict[str, list[Acl]]:
    grants = compose_grants()
    assert grants, "the acls one-shot grants nothing"
    return grants


async def test_auth_with_only_the_compose_acls_starts_and_anchors_against_the_compose_broker(
        granted: ComposeBroker, real_parts: Any, database_name: str) -> None:
    service = build(AuthSettings(**granted.settings(
        "auth", kafka_create_topics=False, mongodb_uri=real_parts.mongodb_uri,
        mongodb_database=database_name, intervention_keys_dir=str(granted.keys.directory))))
    await service.start()  # checks its topics, as its own principal
    try:
        await service.runtime.audit.append("HD-COMPOSE-1", record_id="r1", kind="check",
                                           actor="auth", data={})
        assert await service.runtime.anchors.flush() == 1  # Write on the anchor topic
    finally:
        await service.stop()


async def test_a_service_may_not_write_another_services_topic_on_the_compose_broker(
        granted: ComposeBroker) -> None:
    notifier = RuntimeSettings(**granted.settings("notifier"))
    producer = AIOKafkaProducer(bootstrap_servers=granted.bootstrap,
                                **kafka_security_options(notifier))
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(producer.send_and_wait(
                "intervention.authorization-verified", b"forged", key=b"HD-1"), 20)
    finally:
        await producer.stop()
