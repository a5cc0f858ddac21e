"""The committed AsyncAPI document is what the services' FastStream apps generate today.

After changing a subscriber, an event model or who produces it, run ``intervene docs`` and
commit ``docs/asyncapi.json`` with the change.
"""

from __future__ import annotations

import json

from schemas.common import IDENTIFIER_PATTERN
from schemas.events import EVENT_MODELS
from schemas.registry import topic_for
from schemas.topics import DLQ_SUFFIX
from services.cli.commands_docs import ASYNCAPI, asyncapi_document, producers_of, render_asyncapi
from services.runtime.consumer import DLQ_HEADERS


def test_committed_asyncapi_document_matches_the_services() -> None:
    assert ASYNCAPI.exists(), "docs/asyncapi.json is missing: run `intervene docs`"
    assert ASYNCAPI.read_text(encoding="utf-8") == render_asyncapi(), (
        "docs/asyncapi.json is out of date: run `intervene docs` and commit it")


def test_every_event_is_documented_with_its_producer_and_payload() -> None:
    document = asyncapi_document()
    for model in EVENT_MODELS:
        for service in producers_of(model):
            channel = document["channels"][f"{service}:{topic_for(model)}:publish"]
            assert channel["address"] == topic_for(model)
            message = document["components"]["messages"][
                next(iter(channel["messages"].values()))["$ref"].rsplit("/", 1)[1]]
            assert message["payload"] == {"$ref": f"#/components/schemas/{model.__name__}"}
    received = [document["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]
                for op in document["operations"].values() if op["action"] == "receive"]
    assert {c["address"] for c in received} >= {"helpdesk.ticket-requests",
                                                "intervention.ticket-submitted",
                                                "intervention.authorization-verified"}
    assert "EmptyPayload" not in json.dumps(document)


def test_the_document_is_asyncapi_3_1_with_a_description_on_every_operation() -> None:
    document = asyncapi_document()
    assert document["asyncapi"] == "3.1.0"
    undescribed = [name for name, op in document["operations"].items()
                   if not op.get("description")]
    assert not undescribed


def test_every_message_is_keyed_by_ticket_id_and_carries_the_trace_headers() -> None:
    document = asyncapi_document()
    schemas = document["components"]["schemas"]
    assert schemas["TicketKey"]["pattern"] == IDENTIFIER_PATTERN
    assert {"traceparent", "tracestate"} <= set(schemas["MessageHeaders"]["properties"])
    for name, message in document["components"]["messages"].items():
        key = message["bindings"]["kafka"]["key"]
        assert key == {"$ref": "#/components/schemas/TicketKey"}, name
        assert message["headers"]["$ref"] in ("#/components/schemas/MessageHeaders",
                                              "#/components/schemas/DeadLetterHeaders"), name


def test_every_consumed_topic_has_its_dead_letter_channel_with_the_dlq_headers() -> None:
    document = asyncapi_document()
    channels, messages = document["channels"], document["components"]["messages"]
    required = document["components"]["schemas"]["DeadLetterHeaders"]["allOf"][1]["required"]
    assert required == list(DLQ_HEADERS)
    for name, operation in document["operations"].items():
        if operation["action"] != "receive":
            continue
        topic = channels[operation["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
        service = name.split(":", 1)[0]
        dlq = channels[f"{service}:{topic}{DLQ_SUFFIX}:publish"]
        assert dlq["address"] == topic + DLQ_SUFFIX
        message = messages[dlq["messages"]["Message"]["$ref"].rsplit("/", 1)[1]]
        assert message["headers"] == {"$ref": "#/components/schemas/DeadLetterHeaders"}
        assert operation["bindings"]["kafka"]["groupId"]["enum"], name
        assert document["operations"][f"{service}:{topic}{DLQ_SUFFIX}:publish"]["action"] == (
            "send")
