"""The committed AsyncAPI document is what the services' FastStream apps generate today.

After changing a subscriber, an event model or who produces it, run ``intervene docs`` and
commit ``docs/asyncapi.json`` with the change.
"""

from __future__ import annotations

import json

from schemas.events import EVENT_MODELS
from schemas.registry import topic_for
from services.cli.commands_docs import ASYNCAPI, asyncapi_document, producers_of, render_asyncapi


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
