"""``intervene docs``: the generated interface documents, ``docs/asyncapi.json`` and
``docs/openapi.json``.

The AsyncAPI document comes from the four services' FastStream applications through
FastStream's own AsyncAPI support: each service is wired exactly as it runs (its brokers'
subscribers are the real ones), with two additions the services do not declare themselves:

- **what each service publishes**: the services publish through the shared runtime, not
  through declared FastStream publishers, so a publisher is declared here for every event
  whose ``producer`` field names the service — the schemas are the one place that says who
  produces what;
- **what each subscriber receives**: subscribers take raw bytes (the shared runtime decodes,
  deduplicates and dead-letters), so each received message's payload is set to the event
  model of its topic (``helpdesk.ticket-requests``: the helpdesk's request).

FastStream writes AsyncAPI 3.0 and knows nothing of the bus's conventions, so the document
is then completed (:func:`_complete`) with what every service does through the shared
runtime: AsyncAPI 3.1; every message keyed by ``ticket_id`` (Kafka message binding) and
carrying the W3C trace headers; the dead-letter channel ``<topic>.dlq`` of every consumed
topic with its ``x-dlq-*`` headers (docs/architecture.md §7); the consumer groups; and a
description on every operation.

Nothing is connected: the apps are built with their default settings and a throwaway key
set, so the documents never depend on the machine that generates them. A contract test
regenerates both and compares them with the committed files; ``intervene docs --check``
does the same from the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from pydantic_settings import BaseSettings

from schemas.registry import producers_of

DOCS = Path(__file__).resolve().parents[2] / "docs"
ASYNCAPI = DOCS / "asyncapi.json"
OPENAPI = DOCS / "openapi.json"
SERVICES = ("intake", "auth", "executor", "notifier")
TITLE = "OS Intervention"
DESCRIPTION = (
    "Events of the OS Intervention services on Kafka (docs/architecture.md §4). Every topic "
    "is keyed by ticket_id; W3C trace context travels in the traceparent/tracestate "
    "headers; KAFKA_TOPIC_PREFIX (empty in production) is prepended to every topic; a "
    "message that cannot be handled goes to <topic>.dlq with x-dlq-* headers. Channels and "
    "operations are named <service>:<topic> for what a service consumes and "
    "<service>:<topic>:publish for what it publishes."
)

S = TypeVar("S", bound=BaseSettings)


def register(sub: Any) -> None:
    docs = sub.add_parser(
        "docs", help="regenerate docs/asyncapi.json (FastStream) and docs/openapi.json",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs.add_argument("--check", action="store_true",
                      help="write nothing; exit 1 when a committed document is out of date")
    docs.set_defaults(func=_cmd_docs)


def _cmd_docs(args: argparse.Namespace) -> int:
    from services.intake.openapi import render as render_openapi

    documents = {ASYNCAPI: render_asyncapi(), OPENAPI: render_openapi()}
    if args.check:
        stale = [path for path, text in documents.items()
                 if not path.exists() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is out of date: run `intervene docs`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in documents.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


# --- building the apps without starting them -------------------------------------------------


def _defaults(settings: type[S], **overrides: Any) -> S:
    """Settings with every field at its default (not read from the environment)."""
    values = {name: info.default for name, info in settings.model_fields.items()}
    # pydantic-settings types model_construct as returning BaseSettings, not the subclass.
    return cast(S, settings.model_construct(**{**values, **overrides}))


@contextmanager
def service_runtimes() -> Iterator[dict[str, Any]]:
    """Each service's :class:`ServiceRuntime`, wired as the service runs, never connected."""
    from services.auth.app import build as build_auth
    from services.auth.settings import AuthSettings
    from services.executor.app import build as build_executor
    from services.executor.settings import ExecutorSettings
    from services.intake.bootstrap import IntakeService
    from services.intake.settings import IntakeSettings
    from services.notifier.app import build as build_notifier
    from services.notifier.settings import NotifierSettings
    from services.runtime.keys import init_keys

    with tempfile.TemporaryDirectory(prefix="intervene-docs-") as tmp:
        # Auth, the executor and the notifier load their keys while being wired: a
        # throwaway set will do.
        keys = str(init_keys(Path(tmp) / "keys").directory)
        yield {
            "intake": IntakeService(_defaults(IntakeSettings)).runtime,
            "auth": build_auth(_defaults(AuthSettings, intervention_keys_dir=keys)).runtime,
            "executor": build_executor(_defaults(ExecutorSettings, intervention_keys_dir=keys)
                                       ).runtime,
            "notifier": build_notifier(_defaults(NotifierSettings, intervention_keys_dir=keys)
                                       ).runtime,
        }


@contextmanager
def service_brokers() -> Iterator[dict[str, Any]]:
    """Each service's FastStream broker, wired as the service runs, never connected."""
    with service_runtimes() as runtimes:
        yield {name: runtime.broker for name, runtime in runtimes.items()}


def asyncapi_document() -> dict[str, Any]:
    from faststream.specification import AsyncAPI

    from schemas.events import EVENT_MODELS
    from schemas.registry import topic_for

    with service_brokers() as brokers:
        # channel name -> the consumer groups reading it (the notifier reads ticket-submitted
        # in two groups; group ids carry KAFKA_TOPIC_PREFIX, empty here).
        groups: dict[str, list[str]] = {}
        for service, broker in brokers.items():
            for subscriber in broker.subscribers:
                for topic in subscriber.topic_names:
                    groups.setdefault(f"{service}:{topic}", []).append(subscriber.group_id)
        for service, broker in brokers.items():
            for model in EVENT_MODELS:
                if service in producers_of(model):
                    topic = topic_for(model)
                    # ":publish" keeps it apart from the service's own subscriber of the
                    # same topic (the notifier consumes its acknowledgements, for one).
                    broker.publisher(topic, schema=model, title=f"{service}:{topic}:publish",
                                     description=" ".join((model.__doc__ or "").split()))
        with warnings.catch_warnings():
            # The notifier consumes ticket-submitted in two consumer groups (an immediate
            # acknowledgement, and the slower SLA bookkeeping): one channel documents both.
            warnings.filterwarnings("ignore", "Overwrite channel handler", RuntimeWarning)
            document: dict[str, Any] = AsyncAPI(
                *brokers.values(), title=TITLE, version=_version(), description=DESCRIPTION,
            ).to_specification().to_jsonable()
    _set_received_payloads(document)
    _complete(document, groups)
    # FastStream keeps a broker's publishers unordered: sort the named sections so the
    # document (and its drift test) is the same on every run.
    components = document.get("components", {})
    for key in ("messages", "schemas"):
        if key in components:
            components[key] = dict(sorted(components[key].items()))
    for key in ("channels", "operations"):
        document[key] = dict(sorted(document.get(key, {}).items()))
    return document


def _set_received_payloads(document: dict[str, Any]) -> None:
    from schemas.registry import model_for_topic

    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for operation in document.get("operations", {}).values():
        if operation.get("action") != "receive":
            continue
        channel = document["channels"][operation["channel"]["$ref"].rsplit("/", 1)[1]]
        model = model_for_topic(channel["address"])
        _add_schema(schemas, model)
        for ref in channel["messages"].values():
            message = components["messages"][ref["$ref"].rsplit("/", 1)[1]]
            message["payload"] = {"$ref": f"#/components/schemas/{model.__name__}"}
    if not any("EmptyPayload" in json.dumps(m) for m in components.get("messages", {}).values()):
        schemas.pop("EmptyPayload", None)


ASYNCAPI_VERSION = "3.1.0"
KAFKA_BINDING_VERSION = "0.5.0"
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
DLQ_HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "x-dlq-reason": {"type": "string", "enum": ["decode", "handler"],
                     "description": "decode: not a valid message of the topic; handler: its "
                                    "handler still failed after the bounded retries."},
    "x-dlq-error-class": {"type": "string", "description": "The error's class name."},
    "x-dlq-error-message": {"type": "string", "maxLength": 2000,
                            "description": "What went wrong: never an input value; known "
                                           "secrets redacted."},
    "x-dlq-original-topic": {"type": "string",
                             "description": "The topic the message was read from (with "
                                            "KAFKA_TOPIC_PREFIX)."},
    "x-dlq-original-partition": {"type": "string", "pattern": "^[0-9]+$",
                                 "description": "Its partition, in decimal."},
    "x-dlq-original-offset": {"type": "string", "pattern": "^[0-9]+$",
                              "description": "Its offset, in decimal."},
    "x-dlq-consumer-group": {"type": "string",
                             "description": "The consumer group that gave up on it."},
    "x-dlq-attempts": {"type": "string", "pattern": "^[0-9]+$",
                       "description": "Handler attempts made (0 when it did not decode)."},
    "x-dlq-failed-at": {"type": "string", "format": "date-time",
                        "description": "When it was dead-lettered (UTC, ISO 8601)."},
}


def _complete(document: dict[str, Any], groups: dict[str, list[str]]) -> None:
    """Add what the shared runtime does on every topic (module docstring) to FastStream's
    document, in place."""
    from schemas.common import IDENTIFIER_PATTERN
    from schemas.registry import model_for_topic
    from schemas.topics import DEFAULT_PARTITIONS, DLQ_SUFFIX
    from services.runtime.consumer import DLQ_HEADERS

    document["asyncapi"] = ASYNCAPI_VERSION
    components = document["components"]
    schemas, messages = components["schemas"], components["messages"]
    schemas["TicketKey"] = {
        "type": "string", "pattern": IDENTIFIER_PATTERN,
        "description": "The message key: the ticket_id of the ticket the message belongs to, "
                       "so one ticket's messages stay in order on every topic."}
    schemas["MessageHeaders"] = {
        "type": "object",
        "description": "Kafka headers on every message. Trace context (W3C) is never in the "
                       "payload.",
        "properties": {
            "traceparent": {"type": "string", "pattern": TRACEPARENT_PATTERN,
                            "description": "W3C trace context of the span that published "
                                           "it: one trace per ticket."},
            "tracestate": {"type": "string", "description": "W3C vendor trace state."},
            "correlation_id": {"type": "string",
                               "description": "FastStream's correlation id."},
        },
    }
    if set(DLQ_HEADER_SCHEMAS) != set(DLQ_HEADERS):
        raise RuntimeError("DLQ_HEADER_SCHEMAS must describe exactly consumer.DLQ_HEADERS")
    schemas["DeadLetterHeaders"] = {
        "allOf": [{"$ref": "#/components/schemas/MessageHeaders"}, {
            "type": "object", "required": list(DLQ_HEADERS),
            "properties": {name: DLQ_HEADER_SCHEMAS[name] for name in DLQ_HEADERS}}],
        "description": "A dead-lettered message's headers: its trace headers, and why and "
                       "where from it was dead-lettered (docs/architecture.md §7).",
    }
    kafka_key = {"kafka": {"key": {"$ref": "#/components/schemas/TicketKey"},
                           "bindingVersion": KAFKA_BINDING_VERSION}}
    for message in messages.values():
        message["headers"] = {"$ref": "#/components/schemas/MessageHeaders"}
        message["bindings"] = kafka_key
    for channel in document["channels"].values():
        channel["bindings"] = {"kafka": {"topic": channel["address"],
                                         "partitions": DEFAULT_PARTITIONS,
                                         "bindingVersion": KAFKA_BINDING_VERSION}}
    for name, operation in list(document["operations"].items()):
        topic = document["channels"][operation["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
        service = name.split(":", 1)[0]
        model = model_for_topic(topic)
        summary = " ".join((model.__doc__ or "").split()).split(". ")[0].rstrip(".")
        if operation["action"] == "send":
            operation["description"] = (
                f"{service} publishes {model.__name__} to {topic}, keyed by ticket_id: "
                f"{summary}.")
            continue
        group_ids = sorted(set(groups[name]))
        operation["description"] = (
            f"{service} consumes {topic} in consumer group {' and '.join(group_ids)}: "
            f"{summary}. Offsets are committed once the handler's effects are durable; a "
            f"duplicate event_id has no second effect; a message that cannot be decoded or "
            f"handled goes to {topic}{DLQ_SUFFIX}.")
        operation["bindings"] = {"kafka": {
            "groupId": {"type": "string", "enum": group_ids},
            "bindingVersion": KAFKA_BINDING_VERSION}}
        _add_dead_letter(document, service, topic)


def _add_dead_letter(document: dict[str, Any], service: str, topic: str) -> None:
    from schemas.topics import DEFAULT_PARTITIONS, DLQ_SUFFIX, HELPDESK_REQUESTS

    dlq = topic + DLQ_SUFFIX
    name = f"{service}:{dlq}:publish"
    scrubbed = (" Copies from the helpdesk topic have every credential removed first."
                if topic == HELPDESK_REQUESTS else "")
    document["components"]["messages"][f"{name}:Message"] = {
        "title": f"{name}:Message",
        "name": "DeadLetter",
        "summary": f"A {topic} message {service} could not decode or handle.",
        "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
        "payload": {"description": "The original message's bytes and key, unchanged (they "
                                   "may not be valid: the message failed to decode, or its "
                                   f"handler failed).{scrubbed}"},
        "bindings": {"kafka": {"key": {"$ref": "#/components/schemas/TicketKey"},
                               "bindingVersion": KAFKA_BINDING_VERSION}},
    }
    document["channels"][name] = {
        "address": dlq,
        "description": f"Dead letters of {topic}: read by operators, never by a service.",
        "servers": [{"$ref": "#/servers/development"}],
        "messages": {"Message": {"$ref": f"#/components/messages/{name}:Message"}},
        "bindings": {"kafka": {"topic": dlq, "partitions": DEFAULT_PARTITIONS,
                               "bindingVersion": KAFKA_BINDING_VERSION}},
    }
    document["operations"][name] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{name}"},
        "messages": [{"$ref": f"#/channels/{name}/messages/Message"}],
        "description": f"{service} dead-letters a {topic} message it cannot decode, or whose "
                       "handler still fails after the bounded retries, with the reason in "
                       "x-dlq-* headers, and moves on to the next message.",
    }


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    if model.__name__ in schemas:
        return
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas[model.__name__] = schema


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("os-intervention")
    except PackageNotFoundError:
        return "0.0.0"


def render_asyncapi() -> str:
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n"
