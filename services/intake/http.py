"""Intake's HTTP app (ARCHITECTURE §6): the routes of :mod:`services.intake.routes`, with
errors in the project's shape, one span and one metric per request, and the OpenAPI document.

Every route is called by a registered integration (:mod:`services.intake.edge`) that signs
its requests (:mod:`services.intake.signing`). Answers:

- 202 ``{"ticket_id", "revision", "status": "submitted", "duplicate", ...}`` - also for a
  duplicate submission of an accepted revision (``"duplicate": true``, nothing re-published);
- 401 unsigned, badly signed, stale or replayed; 403 missing scope, unmapped customer, or a
  ticket of another account; both audited with the integration and source address;
- 422 ``{"errors": [{"field", "message", "code"}]}`` - each error names the field and what
  to fix; nothing is published or stored;
- 409 (same body) for a conflicting or stale revision;
- 413 when the body exceeds ``INTAKE_MAX_BODY_BYTES``; 429 with ``Retry-After`` when the
  integration's account exceeds its rate; 503 when the bus or store is unavailable (retry).

``/healthz`` and ``/metrics`` are not here: they are served on the ops listener
(``OPS_HTTP_HOST:OPS_HTTP_PORT``), as for the other services, never on the public API.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError as FastApiValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.common import FieldError
from schemas.request import HelpdeskTicketRequest
from services.intake.bootstrap import IntakeService
from services.intake.doors import Doors, error, errors
from services.intake.routes import router
from services.intake.signing import (
    HEADER_CUSTOMER,
    HEADER_INTEGRATION,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
)
from services.runtime.telemetry import end_server_span, server_span

API_VERSION: Final = "1.1.0"
_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def create_app(service: IntakeService | None = None) -> FastAPI:
    """The HTTP app; its lifespan starts and stops ``service`` (topic consumer included)."""
    svc = service or IntakeService()
    tracer = svc.runtime.telemetry.tracer()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # ``python -m services.intake`` starts the service before serving HTTP, so a broker
        # or key an operator must fix is one line on stderr, not uvicorn's traceback.
        if not svc.running:
            await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(
        title="OS Intervention intake",
        version=API_VERSION,
        description=(
            "Turns helpdesk requests for OS-level intervention into validated, sealed "
            "TicketSubmitted events, or field-level errors the helpdesk can show. Every "
            "request is signed by a registered helpdesk integration (docs/security.md)."
        ),
        lifespan=lifespan,
    )
    app.state.service = svc
    app.state.doors = Doors(intake=svc.intake, guard=svc.guard, limiter=svc.limiter,
                            metrics=svc.metrics)
    app.state.max_body_bytes = svc.settings.intake_max_body_bytes
    app.include_router(router)

    @app.exception_handler(FastApiValidationError)
    async def _validation_failed(_: Request, exc: FastApiValidationError) -> JSONResponse:
        return errors(422, [
            FieldError(field=".".join(str(p) for p in e.get("loc", ())[1:]) or "$",
                       message=str(e.get("msg", "is invalid")), code=str(e.get("type", ""))[:64])
            for e in exc.errors()
        ])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such resource", 405: "method not allowed here"}.get(
            exc.status_code, "request refused")
        return error(exc.status_code, "$", message, f"http_{exc.status_code}")

    @app.middleware("http")
    async def _observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        began = time.perf_counter()
        method = request.method if request.method in _METHODS else "OTHER"
        # A SERVER span "{method} {route}" that continues the caller's traceparent.
        with server_span(tracer, method, None, request.headers, path=request.url.path) as span:
            response = await call_next(request)
            matched = getattr(request.scope.get("route"), "path", None)
            end_server_span(span, method=method, route=matched,
                            status_code=response.status_code)
        route = matched or "unmatched"
        svc.metrics.http(route, method, response.status_code, time.perf_counter() - began)
        return response

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


SECURITY_SCHEMES: Final[dict[str, Any]] = {
    "ZammadSignature": {
        "type": "apiKey", "in": "header", "name": "X-Hub-Signature",
        "description": (
            "Zammad's webhook signature: sha1= + hex HMAC-SHA1 of the raw body, keyed with the "
            "secret of the integration named in the path (Zammad's 'HMAC SHA1 Signature "
            "Token'). A body already delivered under another X-Zammad-Delivery is refused."
        ),
    },
    "IntegrationSignature": {
        "type": "apiKey", "in": "header", "name": HEADER_SIGNATURE,
        "description": (
            f"HMAC-SHA256 request signature of a registered integration: headers "
            f"{HEADER_INTEGRATION} (its name), {HEADER_TIMESTAMP} (Unix seconds, within 5 "
            f"minutes), {HEADER_CUSTOMER} (the helpdesk's authenticated customer) and "
            f"{HEADER_SIGNATURE}: v1=hex(HMAC-SHA256(secret, 'v1\\n' + name + '\\n' + "
            "METHOD + '\\n' + path + '\\n' + timestamp + '\\n' + customer + '\\n' + "
            "hex(SHA-256(body))). Each signature is accepted once. See docs/security.md."
        ),
    },
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the request schema (the route reads raw bytes, so FastAPI
    cannot see it), with the model's definitions moved under ``components/schemas``, and
    the integration signature as the security scheme."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    request_schema = HelpdeskTicketRequest.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    for name, definition in request_schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas["HelpdeskTicketRequest"] = request_schema
    components["schemas"] = dict(sorted(schemas.items()))
    components["securitySchemes"] = SECURITY_SCHEMES
    app.openapi_schema = document
    return document
