"""The one path every HTTP door takes: authenticate, map the account, own the ticket, limit,
submit, answer.

Thin on purpose: :class:`~services.intake.edge.EdgeGuard` decides trust,
:class:`~services.intake.submission.Intake` decides the ticket; this module turns their
answers into HTTP responses in the project's ``{"errors": [...]}`` shape, counts them, and
audits every refusal with the integration and the source address.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import BaseModel, Field

from schemas.common import FieldError
from schemas.events import Vouch
from schemas.request import HelpdeskTicketRequest, RequestValidationError, parse_helpdesk_request
from services.intake.edge import Caller, EdgeGuard, EdgeRefusal
from services.intake.metrics import IntakeMetrics, Source
from services.intake.ratelimit import RateLimiter
from services.intake.signing import HEADER_INTEGRATION
from services.intake.submission import Accepted, Intake, Outcome, Refused, Rejected
from services.intake.validation import explain_structural
from services.runtime.telemetry import TICKET_ID_ATTRIBUTE, current_ticket

log = logging.getLogger("intervention.intake.http")


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


class IgnoredBody(BaseModel):
    status: str = Field(description='Always "ignored".')
    reason: str = Field(description="Why nothing was done, e.g. an agent's internal note.")


def errors(status: int, items: list[FieldError], headers: dict[str, str] | None = None
           ) -> JSONResponse:
    body = {"errors": [e.model_dump(exclude_none=True) for e in items]}
    return JSONResponse(body, status_code=status, headers=headers)


def error(status: int, field: str, message: str, code: str,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return errors(status, [FieldError(field=field, message=message, code=code)], headers)


def source_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def request_path(request: Request) -> str:
    """The path and query exactly as the client sent them (what the signature covers)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path
    query = request.scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


class Doors:
    """What the routes share: the edge, the limiter, the use case and the metrics."""

    def __init__(self, *, intake: Intake, guard: EdgeGuard, limiter: RateLimiter,
                 metrics: IntakeMetrics) -> None:
        self.intake = intake
        self.guard = guard
        self.limiter = limiter
        self.metrics = metrics

    # -- refusals -----------------------------------------------------------------------

    async def refuse(self, refusal: EdgeRefusal, request: Request, source: Source, *,
                     caller: Caller | None = None, ticket_id: str | None = None
                     ) -> JSONResponse:
        claimed = caller.name if caller is not None else (
            request.headers.get(HEADER_INTEGRATION, "")[:64] or None)
        self.metrics.request(source, "unauthenticated" if refusal.status == 401
                             else "forbidden")
        # Every refusal is audited, but a source that keeps being refused is answered 429
        # without a store write each time, so a flood cannot grow the audit log unbounded.
        if not self.limiter.check(f"refused:{source_address(request)}",
                                  time.monotonic()).allowed:
            return error(429, refusal.field, f"{refusal.message} (and too many refused "
                         "requests from this address; slow down)", "rate_limited",
                         headers={"Retry-After": "60"})
        await self.guard.audit_refusal(refusal, door=f"{request.method} {request_path(request)}"
                                       [:200], source=source_address(request),
                                       integration=claimed, ticket_id=ticket_id)
        log.warning("refused %s %s from %s: %s", request.method, source, source_address(request),
                    refusal.code)
        return error(refusal.status, refusal.field, refusal.message, refusal.code,
                     headers={"WWW-Authenticate": "OSI-HMAC-SHA256"}
                     if refusal.status == 401 else None)

    def limited(self, key: str, source: Source) -> JSONResponse | None:
        decision = self.limiter.check(key, time.monotonic())
        if decision.allowed:
            return None
        self.metrics.request(source, "rate_limited")
        return error(
            429, "account_id",
            f"too many requests for this account; retry after {decision.retry_after_s} s",
            "rate_limited", headers={"Retry-After": str(decision.retry_after_s)},
        )

    # -- the one path -------------------------------------------------------------------

    def _unparsable(self, exc: Exception, caller: Caller, source: Source) -> JSONResponse:
        if (limited := self.limited(f"client:{caller.name}", source)) is not None:
            return limited
        self.metrics.request(source, "rejected")
        if isinstance(exc, RecursionError):
            return error(422, "$", "is nested too deeply to be a ticket request; send one "
                         "JSON object as documented", "too_deep")
        assert isinstance(exc, RequestValidationError)
        return errors(422, explain_structural(exc.errors))

    async def take_json(self, body: bytes, request: Request, source: Source, *,
                        caller: Caller) -> JSONResponse:
        """``POST /v1/tickets``: the stated ``account_id`` must be the one the integration's
        map gives for the customer named in ``X-Intervention-Customer``."""
        try:
            parsed = parse_helpdesk_request(body)
        except (RequestValidationError, RecursionError) as exc:
            return self._unparsable(exc, caller, source)
        try:
            await self.guard.account_for(
                caller, [caller.customer] if caller.customer else [], parsed.account_id)
        except EdgeRefusal as refusal:
            return await self.refuse(refusal, request, source, caller=caller,
                                     ticket_id=parsed.ticket_id)
        return await self.submit(parsed, request, source, caller=caller)

    async def take_mapped(self, document: dict[str, Any], request: Request, source: Source, *,
                          caller: Caller, customers: Sequence[str], stated: str | None,
                          ticket_id: str) -> JSONResponse:
        """A webhook's document: its account is the map's for the helpdesk's customer; a
        form's stated account is only compared."""
        try:
            customer, account = await self.guard.account_for(caller, customers, stated)
        except EdgeRefusal as refusal:
            return await self.refuse(refusal, request, source, caller=caller,
                                     ticket_id=ticket_id)
        try:
            parsed = parse_helpdesk_request({**document, "account_id": account})
        except (RequestValidationError, RecursionError) as exc:
            return self._unparsable(exc, caller, source)
        return await self.submit(parsed, request, source,
                                 caller=Caller(integration=caller.integration, customer=customer))

    async def submit(self, parsed: HelpdeskTicketRequest, request: Request, source: Source, *,
                     caller: Caller) -> JSONResponse:
        token = current_ticket.set(parsed.ticket_id)
        try:
            trace.get_current_span().set_attribute(TICKET_ID_ATTRIBUTE, parsed.ticket_id)
            if (limited := self.limited(f"{caller.name}:{parsed.account_id}", source)
                    ) is not None:
                return limited
            try:
                new_ticket = await self.guard.take_ticket(
                    caller, parsed.ticket_id, parsed.account_id, datetime.now(UTC),
                    revision=parsed.revision)
            except EdgeRefusal as refusal:
                return await self.refuse(refusal, request, source, caller=caller,
                                         ticket_id=parsed.ticket_id)
            vouch = Vouch(integration=caller.name, customer=caller.customer)
            try:
                outcome = await self.intake.submit(parsed, source=source, edge="http",
                                                   vouched_by=vouch, new_ticket=new_ticket)
            except Exception:  # any failure to reach bus or store is a 503: retry later
                log.exception("ticket %s revision %d could not be queued", parsed.ticket_id,
                              parsed.revision)
                return error(503, "$", "intake cannot queue tickets right now; retry in a "
                             "minute", "unavailable", headers={"Retry-After": "30"})
            self.intake.record(outcome, source)
            return answer(outcome)
        finally:
            current_ticket.reset(token)


def answer(outcome: Outcome) -> JSONResponse:
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
        return errors(422, outcome.errors)
    assert isinstance(outcome, Refused)
    return errors(409, outcome.errors)


def header_map(request: Request) -> Mapping[str, str]:
    return {k: v for k, v in request.headers.items()}
