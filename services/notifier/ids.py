"""Deterministic ids for what the notifier produces outside a Kafka delivery.

Events caused by a consumed event derive their ids through
:meth:`services.runtime.consumer.Delivery.derive_event_id`. Events caused by time (an SLA
alert) or by chat (an acknowledgement) derive theirs here, from the key of the claim that
makes them happen once, so a take-over after a crash re-publishes the same id.
"""

from __future__ import annotations

import uuid

_NOTIFIER_NS = uuid.UUID("0b6f3c52-8d1e-4a7f-9c33-5e2a7d41b9e6")


def derived_id(key: str) -> uuid.UUID:
    return uuid.uuid5(_NOTIFIER_NS, key)
