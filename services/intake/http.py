"""Intake's HTTP API (ARCHITECTURE §6): thin handlers around the intake use case.

``POST /v1/tickets`` takes a §4.1 request *as raw bytes* and parses it with the same
function the helpdesk topic uses, so both doors accept and refuse exactly the same
documents (FastAPI's own body parsing would differ in subtle ways). Answers:

- 202 ``{"ticket_id", "revision", "status": "submitted", "duplicate", ...}`` - also for a
  duplicate submission of an accepted revision (``"duplicate": true``, nothing re-published);
- 422 ``{"errors": [{"field", "message", "code"}]}`` - each error names the field and what
  to fix; nothing is published or stored;
- 409 (same body) for a conflicting or stale revision;
- 413 when the body exceeds ``INTAKE_MAX_BODY_BYTES``; 429 with ``Retry-After`` when the
  account exceeds its rate; 503 when the bus or store is unavailable (retry).

Request bodies are never logged, and no response echoes a submitted value.

The helpdesk webhooks (``/v1/webhooks/zammad``, ``/v1/webhooks/whmcs``) authenticate the
body's signature, map it with :mod:`services.intake.adapters` and then take the same path.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError as FastApiValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.common import IDENTIFIER_PATTERN, FieldError
from schemas.request import (
    HelpdeskTicketRequest,
    RequestValidationError,
    parse_helpdesk_request,
)
from services.intake.adapters import (
    AdapterError,
    Mapped,
    SignatureMismatch,
    from_whmcs,
    from_zammad,
    verify_whmcs_signature,
    verify_zammad_signature,
)
from services.intake.bootstrap import IntakeService
from services.intake.metrics import CONTENT_TYPE, Source
from services.intake.submission import Accepted, Outcome, Refused, Rejected
from services.intake.timeline import TicketStatus, ticket_status
from services.intake.validation import explain_structural
from services.runtime.telemetry import current_ticket

log = logging.getLogger("intervention.intake.http")

API_VERSION: Final = "1.0.0"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


# --- response bodies (also the OpenAPI document's schemas) -----------------------------


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: what is wrong, field by field, and how to fix it."""

    errors: list[FieldError] = Field(min_length=1)


class SubmittedBody(BaseModel):
    ticket_id: str
    revision: int
    status: str = Field(description='Always "submitted".')
    duplicate: bool = Field(
        description="True when this revision had been accepted before; nothing was re-published."
    )
    event_id: str = Field(description="The TicketSubmitted event's id.")
    category: str
    category_source: str = Field(description='"form" or "classified".')
    scope: str = Field(description='"included" or "not_included" (paid service).')
    confidence: str = Field(description='"low" asks an engineer to check the category.')


class HealthBody(BaseModel):
    status: str = Field(description='"ok" or "degraded".')
    checks: dict[str, bool]


def _errors(status: int, errors: list[FieldError], headers: dict[str, str] | None = None
            ) -> JSONResponse:
    body = {"errors": [e.model_dump(exclude_none=True) for e in errors]}
    return JSONResponse(body, status_code=status, headers=headers)


def _error(status: int, field: str, message: str, code: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return _errors(status, [FieldError(field=field, message=message, code=code)], headers)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (never buffered beyond it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "Conflicting or stale revision."},
    413: {"model": ErrorBody, "description": "Request body too large."},
    422: {"model": ErrorBody, "description": "Field-level errors, each saying what to fix."},
    429: {"model": ErrorBody, "description": "Rate limit of the account; see Retry-After."},
    503: {"model": ErrorBody, "description": "Bus or store unavailable; retry later."},
}


def create_app(service: IntakeService | None = None) -> FastAPI:
    """The HTTP app; its lifespan starts and stops ``service`` (topic consumer included)."""
    svc = service or IntakeService()
    settings = svc.settings
    intake = svc.intake
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
            "TicketSubmitted events, or field-level errors the helpdesk can show."
        ),
        lifespan=lifespan,
    )
    app.state.service = svc

    # -- cross-cutting: errors in our shape, metrics, one span per request --------------

    @app.exception_handler(FastApiValidationError)
    async def _validation_failed(_: Request, exc: FastApiValidationError) -> JSONResponse:
        errors = [
            FieldError(field=".".join(str(p) for p in e.get("loc", ())[1:]) or "$",
                       message=str(e.get("msg", "is invalid")), code=str(e.get("type", ""))[:64])
            for e in exc.errors()
        ]
        return _errors(422, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such resource", 405: "method not allowed here"}.get(
            exc.status_code, "request refused")
        return _error(exc.status_code, "$", message, f"http_{exc.status_code}")

    @app.middleware("http")
    async def _observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        began = time.perf_counter()
        method = request.method if request.method in _METHODS else "OTHER"
        with tracer.start_as_current_span(f"intake HTTP {method}") as span:
            span.set_attribute("http.request.method", method)
            response = await call_next(request)
            route = getattr(request.scope.get("route"), "path", "unmatched")
            span.update_name(f"intake HTTP {method} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", response.status_code)
        svc.metrics.http(route, method, response.status_code, time.perf_counter() - began)
        return response

    # -- the one path every door takes --------------------------------------------------

    def _limited(key: str, source: Source) -> JSONResponse | None:
        decision = svc.limiter.check(key, time.monotonic())
        if decision.allowed:
            return None
        svc.metrics.request(source, "rate_limited")
        return _error(
            429, "account_id",
            f"too many requests for this account; retry after {decision.retry_after_s} s",
            "rate_limited", headers={"Retry-After": str(decision.retry_after_s)},
        )

    async def _take(body: bytes | dict[str, Any], request: Request, source: Source
                    ) -> JSONResponse:
        try:
            parsed = parse_helpdesk_request(body)
        except (RequestValidationError, RecursionError) as exc:
            client = request.client.host if request.client else "unknown"
            if (limited := _limited(f"client:{client}", source)) is not None:
                return limited
            svc.metrics.request(source, "rejected")
            if isinstance(exc, RecursionError):
                return _error(422, "$", "is nested too deeply to be a ticket request; send one "
                              "JSON object as documented", "too_deep")
            return _errors(422, explain_structural(exc.errors))
        return await _submit(parsed, source)

    async def _submit(parsed: HelpdeskTicketRequest, source: Source) -> JSONResponse:
        token = current_ticket.set(parsed.ticket_id)
        try:
            trace.get_current_span().set_attribute("intervention.ticket_id", parsed.ticket_id)
            if (limited := _limited(f"account:{parsed.account_id}", source)) is not None:
                return limited
            try:
                outcome = await intake.submit(parsed, source=source, edge="http")
            except Exception:  # any failure to reach bus or store is a 503: retry later
                log.exception("ticket %s revision %d could not be queued", parsed.ticket_id,
                              parsed.revision)
                return _error(503, "$", "intake cannot queue tickets right now; retry in a "
                              "minute", "unavailable", headers={"Retry-After": "30"})
            intake.record(outcome, source)
            return _answer(outcome)
        finally:
            current_ticket.reset(token)

    # -- routes -------------------------------------------------------------------------

    @app.post(
        "/v1/tickets", status_code=202, tags=["tickets"],
        summary="Submit a helpdesk ticket request (ARCHITECTURE §4.1)",
        responses={202: {"model": SubmittedBody}, **_ERROR_RESPONSES},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/HelpdeskTicketRequest"}}}}},
    )
    async def submit_ticket(request: Request) -> Response:
        """Plaintext credentials are accepted here only, and sealed to the executor's key
        before anything is stored or published."""
        try:
            body = await _read_body(request, settings.intake_max_body_bytes)
        except _TooLarge:
            return _too_large("http")
        return await _take(body, request, "http")

    @app.get(
        "/v1/tickets/{ticket_id}", tags=["tickets"], response_model=TicketStatus,
        summary="A ticket's status and timeline, from the audit log (no secrets)",
        responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    )
    async def get_ticket(ticket_id: str) -> Response:
        if not _IDENTIFIER.fullmatch(ticket_id):
            return _error(422, "ticket_id", "is not a ticket number (1-64 letters, digits, "
                          "'.', '_' or '-')", "string_pattern_mismatch")
        status = ticket_status(ticket_id, await svc.runtime.audit.records(ticket_id))
        if status is None:
            return _error(404, "ticket_id", "no ticket with this number has reached intake",
                          "not_found")
        # Defence in depth: the allow-list shows no secret, and whatever the redactor knows
        # is masked anyway.
        body = svc.runtime.redactor.redact(status.model_dump(mode="json"))
        return JSONResponse(body)

    @app.get("/healthz", tags=["operations"], response_model=HealthBody,
             responses={503: {"model": HealthBody}})
    async def healthz() -> Response:
        ok, body = await svc.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}}})
    async def metrics() -> Response:
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

    # -- helpdesk webhooks --------------------------------------------------------------

    async def _webhook(request: Request, source: Source, secret: bytes | None,
                       header: str, verify: Callable[[bytes, str | None, bytes], None],
                       to_request: Callable[[dict[str, Any], datetime], Mapped]) -> Response:
        if secret is None:
            return _error(404, "$", f"the {source} webhook is not enabled on this intake",
                          "not_enabled")
        try:
            body = await _read_body(request, settings.intake_max_body_bytes)
        except _TooLarge:
            return _too_large(source)
        try:
            verify(body, request.headers.get(header), secret)
        except SignatureMismatch as exc:
            svc.metrics.request(source, "bad_signature")
            return _error(401, header, f"{exc}; check the webhook's secret", "bad_signature")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            return _error(422, "$", "must be a JSON object", "not_json")
        now = datetime.now(UTC)
        try:
            mapped = to_request(payload, now)
        except AdapterError as exc:
            return _errors(422, exc.errors)
        # A revision is allocated only for a well-formed ticket id; anything else is
        # refused by validation below without touching the revision book.
        revision = 1
        if _IDENTIFIER.fullmatch(mapped.ticket_id):
            delivery = await svc.revisions.delivery(source, mapped.ticket_id, mapped.delivery,
                                                    now=now)
            revision = delivery.revision
            # Mapped again as of the first delivery, so a retry is the identical request
            # (defaults such as signed_at come from the delivery time) and deduplicates.
            mapped = to_request(payload, delivery.first_seen)
        return await _take(mapped.with_revision(revision), request, source)

    @app.post("/v1/webhooks/zammad", status_code=202, tags=["webhooks"],
              summary="Zammad webhook (X-Hub-Signature HMAC-SHA1, X-Zammad-Delivery)",
              responses={202: {"model": SubmittedBody}, 401: {"model": ErrorBody},
                         404: {"model": ErrorBody}, **_ERROR_RESPONSES})
    async def zammad_webhook(request: Request) -> Response:
        delivery = request.headers.get("x-zammad-delivery", "")
        secret = settings.intake_zammad_secret
        if secret is not None and not delivery.strip():
            return _error(422, "X-Zammad-Delivery", "is required: Zammad sends it with every "
                          "webhook delivery", "missing")
        return await _webhook(
            request, "zammad", secret.get_secret_value().encode() if secret else None,
            "X-Hub-Signature", verify_zammad_signature,
            lambda payload, received: from_zammad(payload, delivery=delivery[:200],
                                                  received_at=received),
        )

    @app.post("/v1/webhooks/whmcs", status_code=202, tags=["webhooks"],
              summary="WHMCS TicketOpen/TicketUserReply hook (X-Intake-Signature HMAC-SHA256)",
              responses={202: {"model": SubmittedBody}, 401: {"model": ErrorBody},
                         404: {"model": ErrorBody}, **_ERROR_RESPONSES})
    async def whmcs_webhook(request: Request) -> Response:
        secret = settings.intake_whmcs_secret
        return await _webhook(
            request, "whmcs", secret.get_secret_value().encode() if secret else None,
            "X-Intake-Signature", verify_whmcs_signature,
            lambda payload, received: from_whmcs(payload, received_at=received),
        )

    def _too_large(source: Source) -> JSONResponse:
        svc.metrics.request(source, "too_large")
        return _error(
            413, "$",
            f"the request body is larger than {settings.intake_max_body_bytes} bytes; shorten "
            "the description and error messages (a complete ticket fits well within this)",
            "too_large",
        )

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _answer(outcome: Outcome) -> JSONResponse:
    if isinstance(outcome, Accepted):
        body = SubmittedBody(
            ticket_id=outcome.ticket_id, revision=outcome.revision, status="submitted",
            duplicate=outcome.duplicate, event_id=str(outcome.event_id),
            category=outcome.category, category_source=outcome.category_source,
            scope=outcome.scope, confidence=outcome.confidence,
        )
        return JSONResponse(body.model_dump(), status_code=202,
                            headers={"Location": f"/v1/tickets/{outcome.ticket_id}"})
    if isinstance(outcome, Rejected):
        return _errors(422, outcome.errors)
    assert isinstance(outcome, Refused)
    return _errors(409, outcome.errors)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the request schema (the route reads raw bytes, so FastAPI
    cannot see it), with the model's definitions moved under ``components/schemas``."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    request_schema = HelpdeskTicketRequest.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    for name, definition in request_schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas["HelpdeskTicketRequest"] = request_schema
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    app.openapi_schema = document
    return document
