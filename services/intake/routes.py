"""Intake's public routes: tickets and helpdesk webhooks, each a thin door onto :mod:`doors`.

Every route authenticates its caller first (:class:`~services.intake.edge.EdgeGuard`):

- ``POST /v1/tickets`` - an ``api`` integration with the ``submit`` scope, request signed
  (:mod:`services.intake.signing`), acting for the customer in ``X-Intervention-Customer``;
- ``GET /v1/tickets/{ticket_id}`` - ``read`` scope; only tickets the integration submitted or
  of accounts its map lets it act for (anything else is 404, as an unknown ticket);
- ``POST /v1/webhooks/zammad/{integration}`` - Zammad's own HMAC-SHA1 body signature with
  that integration's secret; a customer's article only (others are answered "ignored");
- ``POST /v1/webhooks/whmcs`` - the shipped WHMCS hook, signed like an API request.

Request bodies are never logged, and no response echoes a submitted value.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from schemas.common import IDENTIFIER_PATTERN
from services.intake import adapters
from services.intake.doors import (
    Doors,
    ErrorBody,
    IgnoredBody,
    SubmittedBody,
    error,
    errors,
    header_map,
    request_path,
    source_address,
)
from services.intake.edge import Caller, EdgeRefusal
from services.intake.metrics import Source
from services.intake.timeline import TicketStatus, ticket_status

_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
SIGNED: list[dict[str, list[str]]] = [{"IntegrationSignature": []}]

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Not signed by a registered integration, a "
          "stale timestamp, or a replayed signature."},
    403: {"model": ErrorBody, "description": "The integration lacks the scope, the customer "
          "is not in its account map, or the ticket belongs to another account."},
    409: {"model": ErrorBody, "description": "Conflicting or stale revision."},
    413: {"model": ErrorBody, "description": "Request body too large."},
    422: {"model": ErrorBody, "description": "Field-level errors, each saying what to fix."},
    429: {"model": ErrorBody, "description": "Rate limit of the account; see Retry-After."},
    503: {"model": ErrorBody, "description": "Bus or store unavailable; retry later."},
}

router = APIRouter()


class _TooLarge(Exception):
    pass


def _doors(request: Request) -> Doors:
    doors: Doors = request.app.state.doors
    return doors


async def _read_body(request: Request) -> bytes:
    """The body, refused as soon as it passes the cap (never buffered beyond it)."""
    limit: int = request.app.state.max_body_bytes
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


def _too_large(request: Request, source: Source) -> JSONResponse:
    _doors(request).metrics.request(source, "too_large")
    limit = request.app.state.max_body_bytes
    return error(413, "$", f"the request body is larger than {limit} bytes; shorten the "
                 "description and error messages (a complete ticket fits well within this)",
                 "too_large")


async def _authenticated(request: Request, body: bytes, *, scope: str, source: Source,
                         kind: str | None) -> Caller | JSONResponse:
    doors = _doors(request)
    try:
        return await doors.guard.authenticate(
            header_map(request), method=request.method, path=request_path(request), body=body,
            scope=scope, now=datetime.now(UTC), kind=kind)
    except EdgeRefusal as refusal:
        return await doors.refuse(refusal, request, source)


@router.post(
    "/v1/tickets", status_code=202, tags=["tickets"], openapi_extra={
        "security": SIGNED, "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/HelpdeskTicketRequest"}}}}},
    summary="Submit a helpdesk ticket request (ARCHITECTURE §4.1)",
    responses={202: {"model": SubmittedBody}, **_ERROR_RESPONSES},
)
async def submit_ticket(request: Request) -> Response:
    """Plaintext credentials are accepted here only, and sealed to the executor's key
    before anything is stored or published. ``account_id`` must be the account the
    integration's map gives the customer named in ``X-Intervention-Customer``."""
    try:
        body = await _read_body(request)
    except _TooLarge:
        return _too_large(request, "http")
    caller = await _authenticated(request, body, scope="submit", source="http", kind="api")
    if isinstance(caller, JSONResponse):
        return caller
    return await _doors(request).take_json(body, request, "http", caller=caller)


@router.get(
    "/v1/tickets/{ticket_id}", tags=["tickets"], response_model=TicketStatus,
    summary="A ticket's status and timeline, from the audit log (no secrets)",
    openapi_extra={"security": SIGNED},
    responses={**{k: v for k, v in _ERROR_RESPONSES.items() if k in (401, 403, 422, 429)},
               404: {"model": ErrorBody,
                     "description": "No such ticket visible to this integration."}},
)
async def get_ticket(ticket_id: str, request: Request) -> Response:
    caller = await _authenticated(request, b"", scope="read", source="http", kind=None)
    if isinstance(caller, JSONResponse):
        return caller
    if not _IDENTIFIER.fullmatch(ticket_id):
        return error(422, "ticket_id", "is not a ticket number (1-64 letters, digits, "
                     "'.', '_' or '-')", "string_pattern_mismatch")
    doors = _doors(request)
    runtime = request.app.state.service.runtime
    status = None
    if await doors.guard.may_read(caller, ticket_id):
        status = ticket_status(ticket_id, await runtime.audit.records(ticket_id))
    if status is None:
        # The same answer for "no such ticket" and "not yours": no oracle for ticket numbers.
        return error(404, "ticket_id", "no ticket with this number is visible to this "
                     "integration", "not_found")
    # Defence in depth: the allow-list shows no secret, and whatever the redactor knows
    # is masked anyway.
    return JSONResponse(runtime.redactor.redact(status.model_dump(mode="json")))


# --- helpdesk webhooks ------------------------------------------------------------------


async def _ignored(request: Request, source: Source, exc: adapters.Ignored,
                   ticket_id: str | None, caller: Caller) -> JSONResponse:
    doors = _doors(request)
    doors.metrics.request(source, "ignored")
    chain = ticket_id if ticket_id and _IDENTIFIER.fullmatch(ticket_id) else None
    await doors.guard.audit_refusal(
        EdgeRefusal(202, exc.code, exc.message), door=f"POST {request_path(request)}"[:200],
        source=source_address(request), integration=caller.name, ticket_id=chain)
    return JSONResponse(IgnoredBody(status="ignored", reason=exc.message).model_dump(),
                        status_code=202)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


async def _deliver(request: Request, source: Source, caller: Caller, payload: dict[str, Any],
                   mapped: adapters.Mapped, remap: Any) -> Response:
    """Give the delivery its revision and take the mapped document the common way."""
    doors = _doors(request)
    revision = 1
    if _IDENTIFIER.fullmatch(mapped.ticket_id):
        revisions = request.app.state.service.revisions
        delivery = await revisions.delivery(source, mapped.ticket_id,
                                            mapped.delivery, now=datetime.now(UTC))
        revision = delivery.revision
        # Mapped again as of the first delivery, so a retry is the identical request
        # (defaults such as signed_at come from the delivery time) and deduplicates.
        mapped = remap(payload, delivery.first_seen)
    return await doors.take_mapped(
        mapped.with_revision(revision), request, source, caller=caller,
        customers=mapped.customers, stated=mapped.stated_account, ticket_id=mapped.ticket_id)


@router.post("/v1/webhooks/zammad/{integration}", status_code=202, tags=["webhooks"],
             openapi_extra={"security": [{"ZammadSignature": []}]},
             summary="Zammad trigger webhook (X-Hub-Signature HMAC-SHA1 with the "
                     "integration's secret, X-Zammad-Delivery)",
             responses={202: {"model": SubmittedBody | IgnoredBody}, **_ERROR_RESPONSES})
async def zammad_webhook(integration: str, request: Request) -> Response:
    doors = _doors(request)
    try:
        body = await _read_body(request)
    except _TooLarge:
        return _too_large(request, "zammad")
    now = datetime.now(UTC)
    try:
        caller = await doors.guard.authenticate_webhook(
            integration[:64], kind="zammad", scope="submit",
            verify=adapters.verify_zammad_signature, body=body,
            header=request.headers.get("x-hub-signature"), now=now)
    except EdgeRefusal as refusal:
        return await doors.refuse(refusal, request, "zammad")
    delivery = request.headers.get("x-zammad-delivery", "").strip()[:200]
    if not delivery:
        return error(422, "X-Zammad-Delivery", "is required: Zammad sends it with every "
                     "webhook delivery", "missing")
    if (payload := _json_object(body)) is None:
        return error(422, "$", "must be a JSON object", "not_json")

    def remap(document: dict[str, Any], received: datetime) -> adapters.Mapped:
        return adapters.from_zammad(document, delivery=delivery, received_at=received)

    ticket = payload.get("ticket")
    number = str(ticket.get("number", "")) if isinstance(ticket, dict) else None
    try:
        mapped = remap(payload, now)
    except adapters.Ignored as exc:
        return await _ignored(request, "zammad", exc, number, caller)
    except adapters.AdapterError as exc:
        return errors(422, exc.errors)
    try:
        await doors.guard.first_delivery(caller, body, delivery, now)
    except EdgeRefusal as refusal:
        return await doors.refuse(refusal, request, "zammad", caller=caller,
                                  ticket_id=mapped.ticket_id
                                  if _IDENTIFIER.fullmatch(mapped.ticket_id) else None)
    return await _deliver(request, "zammad", caller, payload, mapped, remap)


@router.post("/v1/webhooks/whmcs", status_code=202, tags=["webhooks"],
             summary="The shipped WHMCS hook (TicketOpen, TicketUserReply), signed like an "
                     "API request", openapi_extra={"security": SIGNED},
             responses={202: {"model": SubmittedBody}, **_ERROR_RESPONSES})
async def whmcs_webhook(request: Request) -> Response:
    try:
        body = await _read_body(request)
    except _TooLarge:
        return _too_large(request, "whmcs")
    caller = await _authenticated(request, body, scope="submit", source="whmcs", kind="whmcs")
    if isinstance(caller, JSONResponse):
        return caller
    if (payload := _json_object(body)) is None:
        return error(422, "$", "must be a JSON object", "not_json")

    def remap(document: dict[str, Any], received: datetime) -> adapters.Mapped:
        return adapters.from_whmcs(document, received_at=received)

    try:
        mapped = remap(payload, datetime.now(UTC))
    except adapters.AdapterError as exc:
        return errors(422, exc.errors)
    if caller.customer and caller.customer not in mapped.customers:
        # The hook signs the client it read from WHMCS; a body naming another is not its.
        return await _doors(request).refuse(EdgeRefusal(
            403, "customer_mismatch", "the signed customer is not the WHMCS client of this "
            "delivery", field="X-Intervention-Customer"), request, "whmcs", caller=caller)
    return await _deliver(request, "whmcs", caller, payload, mapped, remap)
