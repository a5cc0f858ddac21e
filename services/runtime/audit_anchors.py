"""Audit chain heads anchored outside the store: the compacted Kafka topic
``intervention.audit-anchored``, keyed by chain (``<ticket>:<producer>``).

Someone who can write MongoDB can rewrite a chain's records consistently (re-hashed),
delete them, or cut its tail. Kafka is a second system with its own credentials and ACLs
(a service may only append to this topic), so each service publishes the heads of the
chains it wrote there, signed with its audit key
(:class:`~services.runtime.audit_signing.AuditSigner`):

- :class:`AnchorBook` keeps, per chain (ticket and producer), the newest record this
  process appended and publishes the pending heads every ``AUDIT_ANCHOR_INTERVAL_S`` and
  at once when a ticket's final event is appended (:data:`FINAL_EVENT_TYPES`). A publish
  that fails keeps the head pending for the next round: anchoring never blocks or fails an
  append, and costs the append path no store round trip.
- :func:`read_anchors` reads the whole topic (compaction keeps at least the newest anchor of
  each ticket) for ``intervene audit verify``, which checks the store against them
  (:func:`services.runtime.audit.verify_chain`).

The value is JSON: ``ticket_id``, ``producer``, ``seq``, ``hash``, ``service``,
``anchored_at``, ``key_id``, ``signature`` (Ed25519 over ``b"intervention-audit-anchor:v2:"``
+ the canonical JSON of the first six; anchors from before per-producer chains have no
``producer`` and sign ``v1`` over the other five). With audit keys, an anchor that is
unsigned, signed by an unknown key or by another service's key than it names, or that
anchors another service's chain, is not trusted and is reported.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.topics import AUDIT_ANCHORED, physical
from services.runtime.audit_records import AuditRecord
from services.runtime.audit_signing import Anchor, AuditKeys, AuditSigner, check_signature
from services.runtime.kafka_security import kafka_security_options, start_client
from services.runtime.settings import RuntimeSettings

__all__ = ["FINAL_EVENT_TYPES", "AnchorBook", "AnchorRead", "anchor_key", "anchor_ticket",
           "decode_anchor", "encode_anchor", "read_anchors"]

log = logging.getLogger(__name__)

# A ticket's last word from its service: anchored at once, not at the next interval.
FINAL_EVENT_TYPES = frozenset({"InterventionCompleted", "TicketRejected",
                               "AuthorizationRejected"})

Publish = Callable[[str, bytes], Awaitable[None]]  # (message key, value)


def anchor_key(ticket_id: str, producer: str) -> str:
    """The topic key of a chain's anchors: compaction keeps the newest anchor per chain.
    The ticket comes first and a producer never contains ``:``, so :func:`anchor_ticket`
    gets the ticket back (the ticket attribute of the publish span)."""
    return f"{ticket_id}:{producer}"


def anchor_ticket(key: str) -> str:
    """The ticket of an :func:`anchor_key`."""
    return key.rpartition(":")[0] or key


def encode_anchor(anchor: Anchor) -> bytes:
    fields: dict[str, object] = {"ticket_id": anchor.ticket_id}
    if anchor.producer is not None:
        fields["producer"] = anchor.producer
    return json.dumps({**fields, "seq": anchor.seq, "hash": anchor.hash,
                       "service": anchor.service, "anchored_at": anchor.anchored_at,
                       "key_id": anchor.key_id, "signature": anchor.signature},
                      separators=(",", ":")).encode()


def decode_anchor(raw: bytes) -> Anchor:
    """An anchor from the topic; ``ValueError`` when it is not one."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("an anchor is a JSON object")
    seq = data.get("seq")
    text = {k: data.get(k) for k in ("ticket_id", "hash", "service", "anchored_at")}
    if type(seq) is not int or seq < 1 or not all(isinstance(v, str) and v
                                                  for v in text.values()):
        raise ValueError("an anchor needs ticket_id, seq >= 1, hash, service, anchored_at")
    key_id, signature = data.get("key_id"), data.get("signature")
    producer = data.get("producer")
    if producer is not None and not (isinstance(producer, str) and producer):
        raise ValueError("an anchor's producer is a service name")
    return Anchor(ticket_id=str(text["ticket_id"]), seq=seq, hash=str(text["hash"]),
                  service=str(text["service"]), anchored_at=str(text["anchored_at"]),
                  producer=producer, key_id=key_id if isinstance(key_id, str) else None,
                  signature=signature if isinstance(signature, str) else None)


def sign_anchor(anchor: Anchor, signer: AuditSigner | None) -> Anchor:
    if signer is None:
        return anchor
    return Anchor(ticket_id=anchor.ticket_id, seq=anchor.seq, hash=anchor.hash,
                  service=anchor.service, anchored_at=anchor.anchored_at,
                  producer=anchor.producer, key_id=signer.key.key_id,
                  signature=signer.sign(anchor.content()))


class AnchorBook:
    """The chain heads this process appended and has not anchored yet; publishes them."""

    def __init__(self, *, service: str, signer: AuditSigner | None, publish: Publish,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._service = service
        self.signer = signer
        self._publish = publish
        self._clock = clock
        # ticket -> producer -> (seq, hash): a ticket's chains flush together at its end.
        self._pending: dict[str, dict[str, tuple[int, str]]] = {}
        self.published = 0
        self.failures = 0

    def note(self, record: AuditRecord) -> None:
        """Remember ``record`` as its chain's head unless a later one is already noted."""
        producer = record.producer
        if producer is None:  # a legacy record read back, never one this log wrote
            return
        chains = self._pending.setdefault(record.ticket_id, {})
        known = chains.get(producer)
        if known is None or known[0] < record.seq:
            chains[producer] = (record.seq, record.hash)

    @property
    def pending(self) -> Mapping[str, Mapping[str, tuple[int, str]]]:
        """Ticket -> producer -> (seq, hash) of the heads not anchored yet."""
        return {ticket: dict(chains) for ticket, chains in self._pending.items()}

    async def flush(self, ticket_id: str | None = None) -> int:
        """Publish the pending heads (all, or one ticket's chains); returns how many went
        out."""
        tickets = [ticket_id] if ticket_id is not None else list(self._pending)
        sent = 0
        for ticket in tickets:
            for producer, head in list(self._pending.get(ticket, {}).items()):
                if await self._publish_head(ticket, producer, head):
                    sent += 1
        self.published += sent
        return sent

    async def _publish_head(self, ticket: str, producer: str, head: tuple[int, str]) -> bool:
        anchor = sign_anchor(Anchor(
            ticket_id=ticket, producer=producer, seq=head[0], hash=head[1],
            service=self._service, anchored_at=self._clock().isoformat(
                timespec="milliseconds").replace("+00:00", "Z")), self.signer)
        try:
            await self._publish(anchor_key(ticket, producer), encode_anchor(anchor))
        except Exception as exc:  # noqa: BLE001 - kept pending, tried again next round
            self.failures += 1
            log.warning("audit anchor of ticket %s (%s chain) not published (kept for the "
                        "next round): %s", ticket, producer, type(exc).__name__)
            return False
        chains = self._pending.get(ticket, {})
        if chains.get(producer) == head:  # unless a newer head arrived meanwhile
            del chains[producer]
            if not chains:
                self._pending.pop(ticket, None)
        return True

    async def run(self, interval_s: float) -> None:
        """Flush every ``interval_s`` until cancelled; a last flush on the way out."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())


@dataclass(frozen=True, kw_only=True)
class AnchorRead:
    """What the topic holds: trusted anchors by ticket, and what was not trusted, why."""

    anchors: dict[str, list[Anchor]] = field(default_factory=dict)
    untrusted: list[str] = field(default_factory=list)
    topic_missing: bool = False


def sort_anchors(raw: list[bytes], keys: AuditKeys | None) -> AnchorRead:
    """Decode and (with ``keys``) check anchors: signed by a known audit key of the service
    the anchor names. Pure, so it is tested without Kafka."""
    read = AnchorRead()
    for value in raw:
        try:
            anchor = decode_anchor(value)
        except ValueError as exc:
            read.untrusted.append(f"undecodable anchor: {exc}")
            continue
        if keys is not None:
            verdict = check_signature(anchor.content(), anchor.key_id, anchor.signature, keys)
            why: str | None = None
            if verdict != f"ok:{anchor.service}":
                why = (f"signed with the {verdict[3:]} key" if verdict and verdict.startswith("ok:")
                       else verdict)
            elif anchor.producer is not None and anchor.producer != anchor.service:
                # A service writes, and so anchors, only its own chains.
                why = f"anchors the {anchor.producer} chain, which {anchor.service} never writes"
            if why is not None:
                read.untrusted.append(f"anchor of ticket {anchor.ticket_id} (record "
                                      f"{anchor.seq}, says {anchor.service}) not trusted: {why}")
                continue
        read.anchors.setdefault(anchor.ticket_id, []).append(anchor)
    return read


async def read_anchors(settings: RuntimeSettings, *, keys: AuditKeys | None,
                       timeout_s: float = 15.0) -> AnchorRead:
    """Every anchor on the topic, from the beginning to the current end of each partition
    (no consumer group: the verifier commits nothing)."""
    topic = physical(AUDIT_ANCHORED, settings.kafka_topic_prefix)
    bootstrap = settings.kafka_bootstrap_servers
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None, **kafka_security_options(settings))
    await start_client(consumer.start, consumer.stop, bootstrap, settings)
    raw: list[bytes] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return AnchorRead(topic_missing=True)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
        remaining = {tp for tp, end in ends.items() if end > 0}
        async with asyncio.timeout(timeout_s):
            while remaining:
                batches: dict[TopicPartition, list[Any]] = await consumer.getmany(
                    timeout_ms=500)
                for messages in batches.values():
                    raw.extend(m.value for m in messages if m.value is not None)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return sort_anchors(raw, keys)
