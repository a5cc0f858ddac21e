"""The event type ↔ topic ↔ model table, and precise decode errors."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import schema_strategies
from hypothesis import given, settings
from schema_strategies import EVENT_STRATEGIES, any_event, fast

from schemas import (
    EVENT_MODELS,
    EVENT_TYPES,
    HELPDESK_REQUESTS,
    ROUTES,
    EventDecodeError,
    EventEnvelope,
    HelpdeskTicketRequest,
    SlaWarning,
    TicketRejected,
    TicketSubmitted,
    encode,
    event_topic,
    kafka_key,
    model_for_topic,
    model_for_type,
    parse_event,
    topic_for,
)
from schemas.common import IDENTIFIER_PATTERN, PARAMETER_KEY_PATTERN, RUNBOOK_PATTERN
from schemas.topics import CATALOGUE
from schemas.values import KEY_ID_PATTERN


def test_every_catalogue_event_type_has_a_model_and_every_model_a_topic():
    assert sorted(m.EVENT_TYPE for m in EVENT_MODELS) == sorted(EVENT_TYPES)
    assert len({m.EVENT_TYPE for m in EVENT_MODELS}) == len(EVENT_MODELS)


def test_every_catalogue_topic_maps_to_exactly_one_model():
    topics = [spec.name for spec in CATALOGUE]
    assert sorted(topics) == sorted(route.topic for route in ROUTES)
    for topic in topics:
        assert topic_for(model_for_topic(topic)) == topic


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda m: m.__name__)
def test_event_topics_follow_the_naming_rule(model: type[EventEnvelope]):
    assert topic_for(model) == topic_for(model.EVENT_TYPE) == event_topic(model.__name__)
    assert model_for_type(model.EVENT_TYPE) is model
    assert model_for_topic(event_topic(model.__name__)) is model


def test_helpdesk_requests_have_their_own_topic():
    assert model_for_topic(HELPDESK_REQUESTS) is HelpdeskTicketRequest
    assert topic_for(HelpdeskTicketRequest) == HELPDESK_REQUESTS
    assert model_for_type("HelpdeskTicketRequest") is HelpdeskTicketRequest


@fast
@given(event=any_event)
def test_topic_for_an_event_instance_is_its_types_topic(event: EventEnvelope):
    assert topic_for(event) == event_topic(event.event_type)


def test_unknown_topics_and_types_raise_key_error():
    with pytest.raises(KeyError):
        model_for_topic("intervention.nope")
    with pytest.raises(KeyError):
        model_for_type("Nope")
    with pytest.raises(KeyError):
        topic_for("Nope")


# --- decoding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not_json"),
        (b"{", "not_json"),
        (b"\xff\xfe\x00", "not_json"),
        (b"[]", "not_object"),
        (b"42", "not_object"),
        (b'"TicketSubmitted"', "not_object"),
        (b"null", "not_object"),
        (b"{}", "missing_event_type"),
        (b'{"ticket_id": "HD-1"}', "missing_event_type"),
        (b'{"event_type": "TicketExploded"}', "unknown_event_type"),
        (b'{"event_type": 7}', "unknown_event_type"),
        (b'{"event_type": null}', "unknown_event_type"),
        (b'{"event_type": "HelpdeskTicketRequest"}', "unknown_event_type"),
        (b'{"event_type": "TicketSubmitted"}', "invalid"),
    ],
)
def test_undecodable_messages_get_a_precise_reason(raw: bytes, reason: str):
    with pytest.raises(EventDecodeError) as info:
        parse_event(raw)
    assert info.value.reason == reason


def test_invalid_event_lists_every_field_error():
    with pytest.raises(EventDecodeError) as info:
        parse_event(json.dumps({"event_type": "SlaWarning", "clock": "lunch"}))
    exc = info.value
    assert exc.event_type == "SlaWarning"
    fields = {e.field for e in exc.errors}
    assert {"event_id", "occurred_at", "ticket_id", "clock", "deadline"} <= fields
    assert str(exc).startswith("invalid SlaWarning: ")
    assert "clock" in str(exc)


def test_event_of_another_type_than_expected_is_refused():
    rejection = TicketRejected.new(
        ticket_id="HD-1", revision=1, language="en", errors=[{"field": "$", "message": "no"}]
    )
    with pytest.raises(EventDecodeError) as info:
        parse_event(encode(rejection), TicketSubmitted)
    assert info.value.reason == "unexpected_event_type"
    assert info.value.event_type == "TicketRejected"


@settings(fast, max_examples=10)
@given(event=EVENT_STRATEGIES[SlaWarning])
def test_decode_errors_never_echo_submitted_values(event: SlaWarning):
    doc: dict[str, Any] = json.loads(encode(event))
    secret = "CANARYtopsecretvalue"
    doc.update(ticket_id=f"bad id {secret}", clock=secret, elapsed_seconds=secret)
    with pytest.raises(EventDecodeError) as info:
        parse_event(json.dumps(doc))
    assert secret not in str(info.value)
    assert secret not in repr(info.value.errors)
    doc = {"event_type": secret}
    with pytest.raises(EventDecodeError) as info:
        parse_event(json.dumps(doc))
    assert secret not in str(info.value)


def test_str_input_is_accepted_like_bytes():
    event = TicketRejected.new(
        ticket_id="HD-1", revision=1, language="it", errors=[{"field": "$", "message": "no"}]
    )
    assert parse_event(encode(event).decode()) == event


def test_encode_is_utf8_json_without_ascii_escapes():
    event = TicketRejected.new(
        ticket_id="HD-1",
        revision=1,
        language="it",
        errors=[{"field": "description", "message": "Descrizione troppo lunga: è così"}],
    )
    raw = encode(event)
    assert "è così".encode() in raw
    assert json.loads(raw)["errors"][0]["message"] == "Descrizione troppo lunga: è così"


@fast
@given(
    ident=schema_strategies.identifiers,
    key_id=schema_strategies.key_ids,
    runbook=schema_strategies.runbooks,
    key=schema_strategies.parameter_keys,
)
def test_hand_built_strategies_satisfy_the_patterns(
    ident: str, key_id: str, runbook: str, key: str
):
    assert re.fullmatch(IDENTIFIER_PATTERN, ident)
    assert re.fullmatch(KEY_ID_PATTERN, key_id)
    assert re.fullmatch(RUNBOOK_PATTERN, runbook)
    assert re.fullmatch(PARAMETER_KEY_PATTERN, key)


@fast
@given(event=any_event)
def test_every_event_is_keyed_by_its_ticket_id(event: EventEnvelope):
    assert kafka_key(event) == event.ticket_id.encode()
