"""What counts as an outage of Kafka or the store, and how long it has lasted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    UnsupportedVersionError,
)
from pymongo.errors import AutoReconnect, DuplicateKeyError, ServerSelectionTimeoutError

from services.runtime.dependencies import Dependencies, outage_of


def test_lost_connections_and_retriable_errors_are_outages_of_their_dependency() -> None:
    assert outage_of(ServerSelectionTimeoutError("no servers")) == "mongodb"
    assert outage_of(AutoReconnect("connection reset")) == "mongodb"
    assert outage_of(KafkaConnectionError("refused")) == "kafka"
    assert outage_of(KafkaTimeoutError()) == "kafka"
    assert outage_of(NotLeaderForPartitionError()) == "kafka"


def test_an_outage_wrapped_by_a_handler_is_still_an_outage() -> None:
    wrapped = RuntimeError("could not record the claim")
    wrapped.__cause__ = AutoReconnect("reset")
    assert outage_of(wrapped) == "mongodb"


def test_bugs_bad_input_and_refused_commits_are_not_outages() -> None:
    assert outage_of(ValueError("bad field")) is None
    assert outage_of(DuplicateKeyError("dup")) is None
    assert outage_of(UnsupportedVersionError()) is None  # not retriable
    assert outage_of(CommitFailedError()) is None  # a rebalance: redelivered elsewhere
    assert outage_of(ConnectionRefusedError()) is None  # e.g. a customer's sshd


def test_an_outage_keeps_its_start_until_it_ends() -> None:
    now = [datetime(2026, 12, 6, 12, 0, tzinfo=UTC)]
    deps = Dependencies(clock=lambda: now[0])
    assert deps.status("kafka").ok
    deps.failed("kafka", KafkaConnectionError("refused"))
    began = now[0]
    now[0] += timedelta(seconds=40)
    deps.failed("kafka", "did not answer a health probe within 3s")
    status = deps.status("kafka")
    assert (status.ok, status.since) == (False, began)
    assert status.error == "did not answer a health probe within 3s"
    assert set(deps.down()) == {"kafka"}
    now[0] += timedelta(seconds=5)
    deps.recovered("kafka")
    assert deps.status("kafka").ok
    assert deps.status("kafka").since == now[0]
    assert deps.down() == {}
