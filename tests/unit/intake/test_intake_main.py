"""``python -m services.intake`` refuses a Kafka it cannot use in one line, exit 2.

The subprocess tests against a real (refusing) broker are in
``tests/integration/test_service_refusals.py``; these cover the two places the refusal can
come from without one: building the service (the TLS context) and starting it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import services.intake.__main__ as intake_main
from services.runtime.kafka_security import KafkaConnectError
from services.runtime.redaction import Redactor

CAUSE = "cannot connect to Kafka at b:9093 (SSL, CA /ca.pem): b:9093: TLS handshake failed"


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
                 "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    saved = (logging.getLogRecordFactory(), list(root.handlers), list(root.filters), root.level)
    yield
    factory, handlers, filters, level = saved
    logging.setLogRecordFactory(factory)
    root.handlers[:] = handlers
    root.filters[:] = filters
    root.setLevel(level)


def test_a_kafka_refusal_while_building_the_service_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(_settings: object) -> None:
        raise KafkaConnectError(CAUSE)  # kafka_security.ssl_context: a file changed

    monkeypatch.setattr(intake_main, "IntakeService", refuse)

    assert intake_main.main([]) == 2

    assert capsys.readouterr().err.splitlines() == [f"intake: {CAUSE}"]


class _RefusingService:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.runtime = SimpleNamespace(redactor=Redactor())
        self.running = False
        self.stopped = 0

    async def start(self) -> None:
        raise KafkaConnectError(CAUSE)

    async def stop(self) -> None:
        self.stopped += 1


def test_a_kafka_refusal_at_start_is_one_line_not_uvicorns_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    services: list[_RefusingService] = []

    def build(settings: Any) -> _RefusingService:
        services.append(_RefusingService(settings))
        return services[-1]

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never served
        raise AssertionError("uvicorn must not start when the service cannot")

    monkeypatch.setattr(intake_main, "IntakeService", build)
    monkeypatch.setattr(intake_main, "create_app", lambda _service: app)

    assert intake_main.main([]) == 2

    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if not line.startswith("{")] == [
        f"intake: {CAUSE}"]
    assert "Traceback" not in err
    assert services[0].stopped == 1  # the half-started broker and store client are closed
