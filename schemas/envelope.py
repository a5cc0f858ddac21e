"""The envelope every ``intervention.*`` event carries, and how producers create one.

Each event model narrows ``event_type``, ``schema_version`` and ``producer`` to ``Literal``
values, so a payload claiming to be one event type cannot validate as another, and the
JSON Schema of each event states its constants.

All envelope fields are required when *parsing*: a message without an ``event_id`` would
break idempotency, so a consumer must never invent one. Producers get them filled by
:meth:`EventEnvelope.new` / :meth:`EventEnvelope.caused_by`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Self, get_args, get_origin
from uuid import UUID, uuid4

from pydantic import BaseModel, Field

from schemas.common import STRICT_MODEL, Revision, TicketId, UtcDatetime

Producer = Literal["intake", "auth", "executor", "notifier"]
PRODUCERS: tuple[Producer, ...] = get_args(Producer)


def _literal_values(annotation: object) -> tuple[Any, ...] | None:
    return get_args(annotation) if get_origin(annotation) is Literal else None


class EventEnvelope(BaseModel):
    """Fields common to every event (ARCHITECTURE §4).

    ``revision`` is part of the envelope here (a refinement of §4): every event belongs to
    one revision of one ticket, and idempotency, SLA clocks and the executor's
    once-per-revision rule all key on ``(ticket_id, revision)``.

    ``occurred_at``: naive datetimes are rejected; an explicit offset is accepted and
    normalised to UTC.
    """

    model_config = STRICT_MODEL

    event_id: UUID = Field(description="Unique per event; consumers are idempotent on it.")
    event_type: str
    schema_version: int = Field(ge=1)
    occurred_at: UtcDatetime
    ticket_id: TicketId
    revision: Revision
    causation_id: UUID | None = Field(
        default=None, description="event_id of the event that caused this one, if any."
    )
    producer: Producer

    EVENT_TYPE: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int]
    ALLOWED_PRODUCERS: ClassVar[tuple[Producer, ...]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        event_types = _literal_values(cls.model_fields["event_type"].annotation)
        if event_types is None:
            return  # an abstract intermediate class, not a concrete event
        versions = _literal_values(cls.model_fields["schema_version"].annotation)
        producers = _literal_values(cls.model_fields["producer"].annotation)
        # The topic name is derived from the event type, so a mismatch would route wrongly.
        if event_types != (cls.__name__,):
            raise TypeError(f"{cls.__name__}.event_type must be Literal[{cls.__name__!r}]")
        # Literal[1, ..., N]: a consumer accepts every version up to the newest it knows
        # (docs/schema-evolution.md); producers write N.
        if not versions or sorted(versions) != list(range(1, len(versions) + 1)):
            raise TypeError(f"{cls.__name__}.schema_version must be Literal[1, ..., N]")
        if producers is None or not set(producers) <= set(PRODUCERS):
            raise TypeError(f"{cls.__name__}.producer must be a Literal of known producers")
        cls.EVENT_TYPE = cls.__name__
        cls.SCHEMA_VERSION = max(versions)
        cls.ALLOWED_PRODUCERS = producers

    @classmethod
    def new(
        cls,
        *,
        ticket_id: str,
        revision: int,
        causation_id: UUID | None = None,
        producer: Producer | None = None,
        event_id: UUID | None = None,
        occurred_at: datetime | None = None,
        **fields: Any,
    ) -> Self:
        """Create an event, filling ``event_id`` (random), ``occurred_at`` (now, UTC),
        ``event_type``, ``schema_version`` and ``producer`` (when the event has only one).

        Pass ``event_id`` to derive a deterministic id (e.g. ``uuid5`` of ticket and revision)
        so a producer that crashes and retries publishes the *same* event; pass
        ``occurred_at`` to use an injected clock.
        """
        if producer is None:
            if len(cls.ALLOWED_PRODUCERS) != 1:
                raise TypeError(
                    f"{cls.__name__} has several producers {cls.ALLOWED_PRODUCERS}; pass producer="
                )
            producer = cls.ALLOWED_PRODUCERS[0]
        return cls(
            event_id=uuid4() if event_id is None else event_id,
            event_type=cls.EVENT_TYPE,
            schema_version=cls.SCHEMA_VERSION,
            occurred_at=datetime.now(UTC) if occurred_at is None else occurred_at,
            ticket_id=ticket_id,
            revision=revision,
            causation_id=causation_id,
            producer=producer,
            **fields,
        )

    @classmethod
    def caused_by(
        cls,
        cause: EventEnvelope,
        *,
        producer: Producer | None = None,
        event_id: UUID | None = None,
        occurred_at: datetime | None = None,
        **fields: Any,
    ) -> Self:
        """Create the event that ``cause`` led to: same ticket and revision, and
        ``causation_id`` set to ``cause.event_id``."""
        return cls.new(
            ticket_id=cause.ticket_id,
            revision=cause.revision,
            causation_id=cause.event_id,
            producer=producer,
            event_id=event_id,
            occurred_at=occurred_at,
            **fields,
        )
