"""Topic names and partition counts: the one place they are set.

Every topic is keyed by ``ticket_id``. ``KAFKA_TOPIC_PREFIX`` (empty in production) lets
test runs and demos share a broker without seeing each other's messages.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

HELPDESK_REQUESTS = "helpdesk.ticket-requests"
# Heads of the audit log's chains (one per ticket and producer), published by every service
# that appends to it (services.runtime.audit_anchors) and read by ``intervene audit verify``.
# Keyed ``<ticket>:<producer>`` and compacted: the newest anchor of each chain is kept for
# good, not for the retention period. No consumer group reads it, so it has no DLQ.
AUDIT_ANCHORED = "intervention.audit-anchored"
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
    "InterventionQueued",
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
    configs: tuple[tuple[str, str], ...] = ()  # topic configs set when it is created
    dlq: bool = True  # consumed by a service, so it has a dead-letter topic


# The topics of events (one model each, see schemas.registry).
CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec(name=HELPDESK_REQUESTS),
    *(TopicSpec(name=event_topic(t)) for t in EVENT_TYPES),
)
# Topics that carry no event model: the audit log's anchors.
AUDIT_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(name=AUDIT_ANCHORED, configs=(("cleanup.policy", "compact"),), dlq=False),
)


def spec_for(name: str, prefix: str | None = None) -> TopicSpec:
    """The physical spec of a catalogue topic (or of a DLQ): its configs kept."""
    for spec in (*CATALOGUE, *AUDIT_TOPICS):
        if spec.name == name:
            return TopicSpec(name=physical(name, prefix), configs=spec.configs, dlq=spec.dlq)
    return TopicSpec(name=physical(name, prefix))


def topic_prefix() -> str:
    return os.environ.get("KAFKA_TOPIC_PREFIX", "")


def physical(name: str, prefix: str | None = None) -> str:
    """The topic name on the broker for a catalogue name."""
    return f"{topic_prefix() if prefix is None else prefix}{name}"


def all_topics(prefix: str | None = None) -> list[TopicSpec]:
    """Catalogue topics plus their dead-letter topics, and the audit topics, with the prefix
    applied."""
    specs: list[TopicSpec] = []
    for spec in (*CATALOGUE, *AUDIT_TOPICS):
        # Partition counts are resolved now, not at import (see default_partitions).
        specs.append(spec_for(spec.name, prefix))
        if spec.dlq:
            specs.append(TopicSpec(name=physical(spec.name + DLQ_SUFFIX, prefix)))
    return specs
