"""The one table of event type ↔ topic ↔ model, and decoding/encoding of messages.

Consumers decode with :func:`parse_event` (``intervention.*`` topics) or
:func:`schemas.request.parse_helpdesk_request` (``helpdesk.ticket-requests``); both raise an
error whose text never contains submitted values, so it can go into DLQ headers and logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal, TypeVar, get_args, overload

from pydantic import Field, TypeAdapter, ValidationError

from schemas.common import FieldError, field_errors, summarise
from schemas.envelope import EventEnvelope
from schemas.events import EVENT_MODELS, Event
from schemas.request import CREDENTIAL_TAGS, HelpdeskTicketRequest
from schemas.topics import EVENT_TYPES, HELPDESK_REQUESTS, event_topic

E = TypeVar("E", bound=EventEnvelope)
Message = EventEnvelope | HelpdeskTicketRequest

DecodeReason = Literal[
    "not_json",
    "not_object",
    "missing_event_type",
    "unknown_event_type",
    "unexpected_event_type",
    "invalid",
]


@dataclass(frozen=True, kw_only=True)
class Route:
    event_type: str
    topic: str
    model: type[EventEnvelope] | type[HelpdeskTicketRequest]


ROUTES: Final[tuple[Route, ...]] = (
    Route(event_type="HelpdeskTicketRequest", topic=HELPDESK_REQUESTS, model=HelpdeskTicketRequest),
    *(
        Route(event_type=m.EVENT_TYPE, topic=event_topic(m.EVENT_TYPE), model=m)
        for m in EVENT_MODELS
    ),
)

EVENT_MODELS_BY_TYPE: Final[Mapping[str, type[EventEnvelope]]] = {
    m.EVENT_TYPE: m for m in EVENT_MODELS
}
_ROUTE_BY_TYPE: Final = {r.event_type: r for r in ROUTES}
_ROUTE_BY_TOPIC: Final = {r.topic: r for r in ROUTES}

# Fail at import, not at the first unroutable message, if the topic catalogue and the models
# ever disagree.
if set(EVENT_MODELS_BY_TYPE) != set(EVENT_TYPES):
    raise RuntimeError(
        "schemas.topics.EVENT_TYPES and schemas.events.EVENT_MODELS disagree: "
        f"{sorted(set(EVENT_MODELS_BY_TYPE) ^ set(EVENT_TYPES))}"
    )

_EVENT_ADAPTER: Final[TypeAdapter[Event]] = TypeAdapter(
    Annotated[Event, Field(discriminator="event_type")]
)


class EventDecodeError(ValueError):
    """A message that is not a valid event.

    ``reason`` is one of :data:`DecodeReason`; ``errors`` lists field problems (for
    ``invalid``); ``event_type`` is set when the type was recognised. The message names
    fields and problems, never submitted values.
    """

    def __init__(
        self,
        reason: DecodeReason,
        message: str,
        *,
        errors: list[FieldError] | None = None,
        event_type: str | None = None,
    ) -> None:
        self.reason: DecodeReason = reason
        self.errors: list[FieldError] = errors or []
        self.event_type = event_type
        super().__init__(message)


def model_for_type(event_type: str) -> type[EventEnvelope] | type[HelpdeskTicketRequest]:
    try:
        return _ROUTE_BY_TYPE[event_type].model
    except KeyError:
        raise KeyError(f"unknown event type {event_type!r}") from None


def model_for_topic(topic: str) -> type[EventEnvelope] | type[HelpdeskTicketRequest]:
    """The model of a catalogue topic name (without ``KAFKA_TOPIC_PREFIX``)."""
    try:
        return _ROUTE_BY_TOPIC[topic].model
    except KeyError:
        raise KeyError(f"no model for topic {topic!r}") from None


def topic_for(
    event_or_type: Message | type[EventEnvelope] | type[HelpdeskTicketRequest] | str,
) -> str:
    """The catalogue topic for an event, an event class, or an event type name."""
    if isinstance(event_or_type, str):
        name = event_or_type
    elif isinstance(event_or_type, type):
        name = event_or_type.__name__
    else:
        name = type(event_or_type).__name__
    try:
        return _ROUTE_BY_TYPE[name].topic
    except KeyError:
        raise KeyError(f"unknown event type {name!r}") from None


def producers_of(model: type[EventEnvelope]) -> tuple[str, ...]:
    """The services that may produce ``model``: its ``producer`` field's literal values."""
    return tuple(str(a) for a in get_args(model.model_fields["producer"].annotation))


def topics_produced_by(service: str) -> tuple[str, ...]:
    """The catalogue topics ``service`` publishes to: the events naming it as ``producer``.

    The schemas are the one place that says who produces what; a service ensures (or
    checks) these topics at start, and its principal needs Write on them.
    """
    return tuple(topic_for(m) for m in EVENT_MODELS if service in producers_of(m))


@overload
def parse_event(raw: bytes | str) -> Event: ...
@overload
def parse_event(raw: bytes | str, expect: type[E]) -> E: ...


def parse_event(raw: bytes | str, expect: type[EventEnvelope] | None = None) -> EventEnvelope:
    """Decode one ``intervention.*`` message, choosing the model by its ``event_type``.

    With ``expect``, a valid event of another type is refused (``unexpected_event_type``):
    a consumer of one topic must not act on an event published to the wrong topic.
    Raises :class:`EventDecodeError`.
    """
    try:
        event: EventEnvelope = _EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise _decode_error(exc) from None
    if expect is not None and not isinstance(event, expect):
        raise EventDecodeError(
            "unexpected_event_type",
            f"expected {expect.__name__}, got {event.EVENT_TYPE}",
            event_type=event.EVENT_TYPE,
        )
    return event


def _decode_error(exc: ValidationError) -> EventDecodeError:
    # The discriminated union reports document-level problems as single errors at the root;
    # anything else is a field error inside the model the event_type selected.
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    kind, loc = first["type"], first["loc"]
    if kind == "json_invalid":
        return EventDecodeError("not_json", f"not valid JSON: {first['msg']}")
    if not loc and kind in {"dict_type", "model_type"}:
        return EventDecodeError("not_object", "not a JSON object")
    if kind == "union_tag_not_found":
        return EventDecodeError("missing_event_type", "event_type is missing")
    if kind == "union_tag_invalid":
        return EventDecodeError("unknown_event_type", "event_type is not a known event type")
    event_type = str(loc[0]) if loc else None
    errors = field_errors(exc, drop=CREDENTIAL_TAGS, skip_first=True)
    return EventDecodeError(
        "invalid",
        f"invalid {event_type}: {summarise(errors)}",
        errors=errors,
        event_type=event_type,
    )


def encode(message: Message) -> bytes:
    """UTF-8 JSON of an event (or of a sealed helpdesk request) for publishing.

    A request still holding plaintext credentials is refused: its JSON would carry masked
    secrets, and plaintext must never reach the bus anyway.
    """
    if isinstance(message, HelpdeskTicketRequest) and message.has_plaintext_credentials:
        raise ValueError("refusing to encode a request with plaintext credentials; seal them")
    return message.model_dump_json().encode("utf-8")


def kafka_key(message: Message) -> bytes:
    """The Kafka key of every message: the ticket id, so a ticket's events stay in order."""
    return message.ticket_id.encode("utf-8")
