"""Every service, run as ``python -m services.<name>``, refuses a Kafka it cannot use the way
an operator can act on: exit status 2 and one line on stderr, ``<service>: <cause>``, with
no traceback and never the SASL password.

Two refusals each: nothing listening on the bootstrap port, and TLS with SASL spoken to the
real broker's plaintext listener (a wrong ``KAFKA_SECURITY_PROTOCOL``). The store is the real
one (a service creates its indexes before it reaches Kafka), in a database dropped at the
end. The settings-error path is ``tests/unit/runtime/test_kafka_settings.py``'s last test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from secure_kafka import make_pki

from services.runtime.keys import init_keys

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PASSWORD = f"refusal-Sasl-{uuid.uuid4().hex[:12]}"
SERVICES = ["auth", "executor", "notifier", "intake"]
# Each refusal is decided within connect_failure's 10 s probe; a service start is ~2 s.
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def base_env(real_parts: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, str]]:
    directory = tmp_path_factory.mktemp("refusals")
    keys = init_keys(directory / "keys")
    database = f"refusals_{uuid.uuid4().hex[:10]}"
    mongodb_uri: str = real_parts.mongodb_uri  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "OTEL_", "OPS_", "MONGODB_", "INTAKE_", "MATRIX_",
                                "SLACK_", "TELEGRAM_", "EXECUTOR_"))}
    env.update({"MONGODB_URI": mongodb_uri, "MONGODB_DATABASE": database,
                "INTERVENTION_KEYS_DIR": str(keys.directory), "INTAKE_HTTP_PORT": "0",
                "KAFKA_TOPIC_PREFIX": f"refusals{uuid.uuid4().hex[:6]}.",
                "PYTHONPATH": str(REPO)})
    yield env
    client: MongoClient[dict[str, object]] = MongoClient(mongodb_uri)
    try:
        client.drop_database(database)
    finally:
        client.close()


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def refusals(real_parts: object, tmp_path_factory: pytest.TempPathFactory) -> dict[
        str, tuple[dict[str, str], str]]:
    """Name -> (the Kafka variables, what the one line must say)."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    plaintext: str = real_parts.bootstrap  # type: ignore[attr-defined]
    closed = _closed_port()
    return {
        "nothing listening": ({"KAFKA_BOOTSTRAP_SERVERS": closed},
                              f"cannot connect to Kafka at {closed} (PLAINTEXT)"),
        "TLS to a plaintext listener": (
            {"KAFKA_BOOTSTRAP_SERVERS": plaintext, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
             "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": PASSWORD,
             "KAFKA_SSL_CAFILE": str(pki.ca_file)},
            f"cannot connect to Kafka at {plaintext} (SASL_SSL, PLAIN as 'svc'"),
    }


@pytest.mark.parametrize("refusal", ["nothing listening", "TLS to a plaintext listener"])
@pytest.mark.parametrize("service", SERVICES)
def test_a_service_refuses_a_kafka_it_cannot_use_in_one_line(
        service: str, refusal: str, base_env: dict[str, str],
        refusals: dict[str, tuple[dict[str, str], str]]) -> None:
    variables, cause = refusals[refusal]
    done = subprocess.run([sys.executable, "-m", f"services.{service}"],
                          env={**base_env, **variables}, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False, cwd=REPO)

    assert done.returncode == 2, done.stderr[-3000:]
    # Structured log records (JSON, one per line) may come before; the refusal itself is
    # the one plain line.
    plain = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert len(plain) == 1, done.stderr[-3000:]
    [line] = plain
    assert line.startswith(f"{service}: {cause}"), line
    for record in done.stderr.splitlines():
        if record.startswith("{"):
            json.loads(record)
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
