"""Topic names and partition counts: the one place they are set.

Every topic is keyed by ``ticket_id``. ``KAFKA_TOPIC_PREFIX`` (empty in production) lets
test runs and demos share a broker without seeing each other's messages.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

HELPDESK_REQUESTS = "helpdesk.ticket-requests"
DLQ_SUFFIX = ".dlq"
# Three partitions: three consumers per service group can share the load. Test runs set
# KAFKA_TOPIC_PARTITIONS=1: each run creates its own ~60 topics, and a broker's open files
# grow with every partition (the local broker died of "Too many open files" at ~20,000).
DEFAULT_PARTITIONS = 3


def default_partitions() -> int:
    """Read when topics are created, so a test session can set it after imports."""
    return int(os.environ.get("KAFKA_TOPIC_PARTITIONS", DEFAULT_PARTITIONS))


def event_topic(event_type: str) -> str:
    """``TicketSubmitted`` -> ``intervention.ticket-submitted``."""
    kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", event_type).lower()
    return f"intervention.{kebab}"


EVENT_TYPES: tuple[str, ...] = (
    "TicketSubmitted",
    "TicketRejected",
    "AuthorizationVerified",
    "AuthorizationRejected",
    "ClarificationRequested",
    "InterventionStarted",
    "ManualStepRequested",
    "InterventionCompleted",
    "HardwareEscalated",
    "EngineerAcknowledged",
    "ManualStepCompleted",
    "TicketUpdated",
    "SlaWarning",
    "SlaBreached",
)


@dataclass(frozen=True, kw_only=True)
class TopicSpec:
    name: str
    partitions: int = field(default_factory=default_partitions)


CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(name=HELPDESK_REQUESTS),
    *(TopicSpec(name=event_topic(t)) for t in EVENT_TYPES),
)


def topic_prefix() -> str:
    return os.environ.get("KAFKA_TOPIC_PREFIX", "")


def physical(name: str, prefix: str | None = None) -> str:
    """The topic name on the broker for a catalogue name."""
    return f"{topic_prefix() if prefix is None else prefix}{name}"


def all_topics(prefix: str | None = None) -> list[TopicSpec]:
    """Catalogue topics plus their dead-letter topics, with the prefix applied."""
    specs: list[TopicSpec] = []
    for spec in CATALOGUE:
        # Partition counts are resolved now, not at import (see default_partitions).
        specs.append(TopicSpec(name=physical(spec.name, prefix)))
        specs.append(TopicSpec(name=physical(spec.name + DLQ_SUFFIX, prefix)))
    return specs
