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
        # Auth and the executor load their keys while being wired: a throwaway set will do.
        keys = str(init_keys(Path(tmp) / "keys").directory)
        yield {
            "intake": IntakeService(_defaults(IntakeSettings)).runtime,
            "auth": build_auth(_defaults(AuthSettings, intervention_keys_dir=keys)).runtime,
            "executor": build_executor(_defaults(ExecutorSettings, intervention_keys_dir=keys)
                                       ).runtime,
            "notifier": build_notifier(_defaults(NotifierSettings)).runtime,
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
