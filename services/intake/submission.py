"""Submitting a ticket: validate, classify, seal, claim, audit, publish - once per revision.

:class:`Intake` is the one use case behind every door: ``POST /v1/tickets``, the helpdesk
webhooks and the ``helpdesk.ticket-requests`` topic call :meth:`Intake.submit` (the topic
through :meth:`Intake.receive`), so the same request gets the same answer wherever it
came from.

Idempotency, by ``(ticket_id, revision)`` (the helpdesk's ticket number and revision):

- the first valid submission makes its TicketSubmitted durable (the outbox entry), then
  inserts the revision's accepted record in ``intake_tickets`` (first insert wins), and
  publishes one TicketSubmitted whose ``event_id`` is derived from ticket and revision alone
  (:func:`submitted_event_id`), so a re-publish after a crash carries the same id;
- the same request again (same :func:`fingerprint`) is a *duplicate*: answered with the
  first result, nothing published;
- different content under a revision already accepted is a *conflict*, and a revision below
  the ticket's highest accepted one is *stale*: both refused (HTTP 409; on the topic
  audited and dropped - a TicketRejected would tell the customer that the revision being
  worked on was refused); changes go in the next revision.

The fingerprint covers everything but the secret itself (username, credential kind and
whether it came sealed are covered): a request re-sealed by a retrying helpdesk is still
the same request, and no hash of a password is ever stored. A changed password is a new
revision.

Store round trips: a ticket's first revision costs the owner insert (the edge, which also
records the revision as the ticket's latest), the outbox insert, the accepted record's
insert and, once published, the outbox delete - inserts and an ``_id`` delete on a bounded
collection, none of which reads a collection that grows with history. A later revision or
a retry also raises the ticket's latest revision (one ``findAndModify``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from schemas.common import IDENTIFIER_PATTERN, FieldError
from schemas.events import TicketRejected, TicketSubmitted, Vouch
from schemas.request import (
    HelpdeskTicketRequest,
    Language,
    PlainCredentials,
    RequestValidationError,
    SealedCredentials,
    parse_helpdesk_request,
)
from schemas.scope import scope_of
from services.intake.classification import Classification, classify
from services.intake.metrics import IntakeMetrics, Source
from services.intake.outbox import Entry, Outbox, Relay, fault_point, names
from services.intake.sealing import Sealer
from services.intake.store import Claim, TicketStore, claim_key
from services.intake.validation import (
    Edge,
    Rules,
    bounded,
    check_request,
    explain_structural,
    plaintext_on_bus,
)
from services.runtime.audit import AuditLog
from services.runtime.redaction import Redactor

log = logging.getLogger("intervention.intake")

# Namespace of intake's derived event ids: uuid5(ns, "<ticket_id>:<revision>:submitted").
_EVENT_NS = uuid.UUID("2d7c44a6-5f0e-4a8b-9a55-7e1f0c3b9d21")
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_MAX_REVISION = 1_000_000


def submitted_event_id(ticket_id: str, revision: int) -> uuid.UUID:
    """The TicketSubmitted id of a ticket revision: the same from HTTP and from the topic,
    on every retry and after every crash."""
    return uuid.uuid5(_EVENT_NS, f"{ticket_id}:{revision}:submitted")


def _digest(document: Any) -> str:
    # ASCII escapes, not canonical_json's UTF-8: a hostile document may hold lone
    # surrogates, which have no UTF-8 form.
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]


def _credentials_view(credentials: Any) -> Any:
    """What of the credentials a fingerprint covers: never the secret or its ciphertext."""
    if isinstance(credentials, PlainCredentials | SealedCredentials):
        return {"username": credentials.username, "kind": credentials.kind}
    if isinstance(credentials, Mapping):
        kind = credentials.get("kind")
        if kind is None:
            kind = "password" if "password" in credentials else (
                "private_key" if "private_key" in credentials else None)
        return {"username": credentials.get("username"), "kind": kind}
    return {"shape": type(credentials).__name__}


def _credentials_form(credentials: Any) -> str:
    if isinstance(credentials, SealedCredentials):
        return "sealed"
    if isinstance(credentials, PlainCredentials) or _plaintext_secrets(credentials):
        return "plaintext"
    return "other"


def fingerprint(request: HelpdeskTicketRequest) -> str:
    """The content identity of a valid request (see module doc)."""
    document = request.model_dump(mode="json", exclude={"credentials"})
    document["credentials"] = _credentials_view(request.credentials)
    return _digest(document)


def _document_fingerprint(document: Mapping[str, Any]) -> str:
    view = {k: v for k, v in document.items() if k != "credentials"}
    view["credentials"] = _credentials_view(document.get("credentials"))
    return _digest(view)


# --- outcomes --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Accepted:
    ticket_id: str
    revision: int
    event_id: uuid.UUID
    category: str
    category_source: str
    scope: str
    confidence: str
    duplicate: bool = False


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """The request breaks rules; ``errors`` say which and how to fix them."""

    errors: list[FieldError]
    ticket_id: str | None = None
    revision: int | None = None
    language: Language = "en"


@dataclass(frozen=True, kw_only=True)
class Refused:
    """A valid request the ticket's history refuses: ``conflict`` or ``stale`` revision."""

    reason: Literal["conflict", "stale"]
    ticket_id: str
    revision: int
    errors: list[FieldError]


Outcome = Accepted | Rejected | Refused


# --- the helpdesk topic's messages -----------------------------------------------------


class Unnamed(Exception):
    """A topic message too broken to name its ticket and revision: it cannot be answered
    on a ticket, so it goes to the dead-letter topic. The message holds field paths and
    problems only."""

    def __init__(self, errors: list[FieldError], plaintext: tuple[str, ...] = ()) -> None:
        self.errors = errors
        self.plaintext = plaintext  # secrets found anyway, for the redactor; never shown
        shown = "; ".join(f"{e.field}: {e.message}" for e in errors[:10])
        super().__init__(f"cannot name the ticket: {shown}")


@dataclass(frozen=True, kw_only=True)
class TopicRequest:
    """A decoded message of ``helpdesk.ticket-requests``: a request, or the reasons it is
    not one, for a ticket and revision it does name."""

    ticket_id: str
    revision: int
    language: Language
    fingerprint: str
    credentials_form: str
    request: HelpdeskTicketRequest | None
    errors: tuple[FieldError, ...] = ()
    plaintext: tuple[str, ...] = field(default=(), repr=False)
    """Secrets found in the message (plaintext on the bus), to teach the redactor."""

    @property
    def idempotency_key(self) -> str:
        # Content digest and credential form are part of the key, so a corrected
        # resubmission of a rejected revision (e.g. now sealed) is handled, while an exact
        # redelivery is dropped by the runtime before it reaches intake.
        return f"{self.ticket_id}:{self.revision}:{self.fingerprint}:{self.credentials_form}"


_TOO_DEEP = FieldError(field="$", message="is nested too deeply to be a ticket request; send "
                       "one JSON object as documented", code="too_deep")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _plaintext_secrets(credentials: Any) -> tuple[str, ...]:
    if not isinstance(credentials, Mapping):
        return ()
    return tuple(
        value for key in ("password", "private_key")
        if isinstance(value := credentials.get(key), str) and value
    )


def read_topic_message(raw: bytes) -> TopicRequest:
    """Decode one helpdesk topic message; raises :class:`Unnamed` when it names no ticket."""
    try:
        request = parse_helpdesk_request(raw)
    except RequestValidationError as exc:
        structural = explain_structural(exc.errors)
    except RecursionError:
        # Nesting deeper than any parser in the chain will follow: not a request.
        raise Unnamed([_TOO_DEEP]) from None
    else:
        secrets: tuple[str, ...] = (
            (request.credentials.secret_value(),)
            if isinstance(request.credentials, PlainCredentials) else ()
        )
        return TopicRequest(
            ticket_id=request.ticket_id, revision=request.revision, language=request.language,
            fingerprint=fingerprint(request),
            credentials_form=_credentials_form(request.credentials), request=request,
            plaintext=secrets,
        )
    try:
        document = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise Unnamed(structural)
    secrets = _plaintext_secrets(document.get("credentials"))
    ticket_id, revision = document.get("ticket_id"), document.get("revision")
    if not (isinstance(ticket_id, str) and _IDENTIFIER.fullmatch(ticket_id)) or not (
        type(revision) is int and 1 <= revision <= _MAX_REVISION
    ):
        raise Unnamed(structural, secrets)
    if secrets:
        # Whatever else is wrong with them, the one thing to say about credentials that
        # came in plaintext is that they must be sealed.
        structural = [e for e in structural if not e.field.startswith("credentials")]
        structural.append(plaintext_on_bus())
    language = document.get("language")
    return TopicRequest(
        ticket_id=ticket_id, revision=revision,
        language=language if language in ("en", "it") else "en",
        fingerprint=_document_fingerprint(document),
        credentials_form=_credentials_form(document.get("credentials")), request=None,
        errors=tuple(bounded(structural)), plaintext=secrets,
    )


# --- the use case ----------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


Publish = Callable[[TicketSubmitted | TicketRejected], Awaitable[None]]
"""The runtime's publish: audit the event, then put it on its topic (both idempotent)."""


class Intake:
    """The intake procedure, whichever door a request came through (module doc)."""

    def __init__(
        self,
        *,
        publisher: Publish,
        audit: AuditLog,
        store: TicketStore,
        metrics: IntakeMetrics,
        redactor: Redactor,
        rules: Rules | None = None,
        sealer: Sealer | None = None,
        outbox: Outbox,
        clock: Callable[[], datetime] = _now,
        relay_options: Mapping[str, float] | None = None,
    ) -> None:
        """``relay_options``: the :class:`~services.intake.outbox.Relay`'s timings, for
        tests."""
        self._publish_event = publisher
        self._outbox = outbox
        self.relay = Relay(outbox=outbox, store=store, publisher=publisher, clock=clock,
                           **(relay_options or {}))
        state = self.relay.state
        metrics.watch_outbox(lambda: state.pending, self.relay.oldest_age_s,
                             lambda: float(state.failing_since is not None))
        self._audit = audit
        self._store = store
        self._metrics = metrics
        self._redactor = redactor
        self.rules = rules or Rules()
        self.sealer = sealer
        self._clock = clock

    def use_sealer(self, sealer: Sealer) -> None:
        """Set at start-up, once the executor's public key is loaded; from then on sealed
        credentials must name that key (anything else nobody could open)."""
        self.sealer = sealer
        self.rules = replace(self.rules, sealing_key_ids=frozenset({sealer.key_id}))

    def learn(self, secrets: Iterable[str]) -> None:
        """Teach the redactor plaintext secrets before anything could log them."""
        for secret in secrets:
            self._redactor.add(secret)

    # -- every door ---------------------------------------------------------------------

    async def submit(
        self, request: HelpdeskTicketRequest, *, source: Source, edge: Edge,
        vouched_by: Vouch | None = None, new_ticket: bool = False,
    ) -> Outcome:
        """``vouched_by``: the integration that authenticated the customer (the edge checked
        that the request's account is that integration's mapping of the customer);
        ``new_ticket``: the edge has just bound this ticket on its first request and
        recorded this revision as its latest (so there is nothing to compare with)."""
        if isinstance(request.credentials, PlainCredentials):
            self.learn([request.credentials.secret_value()])
        now = self._clock()
        errors = check_request(request, edge=edge, now=now, rules=self.rules)
        if errors:
            return Rejected(errors=errors, ticket_id=request.ticket_id,
                            revision=request.revision, language=request.language)
        digest = fingerprint(request)
        classification = classify(request.description, request.error_messages, request.category)
        claim = Claim(
            ticket_id=request.ticket_id, revision=request.revision, fingerprint=digest,
            event_id=submitted_event_id(request.ticket_id, request.revision), source=source,
            account_id=request.account_id, category=classification.category,
            category_source=classification.source, scope=scope_of(classification.category),
            confidence=classification.confidence,
            status="pending", claimed_at=now,
        )
        if not new_ticket:
            latest = await self._store.record_revision(request.ticket_id, request.revision)
            if latest is not None and request.revision < latest:
                # A retry of an accepted revision stays a duplicate after a newer one came
                # (accepted: its record, or its entry still waiting for one after a crash).
                prior = await self._store.get(request.ticket_id, request.revision)
                if prior is None and (pending := await self._outbox.get(claim.key)) is not None:
                    prior = pending.claim
                if prior is not None:
                    return await self._settled(prior, claim)
                return _stale(request.ticket_id, request.revision, latest)
        fault_point("after_claim")
        event = self._event(claim, request, classification, vouched_by)
        entry = Entry.of(claim, event, at=self._clock())
        existing = await self._outbox.put(entry)
        if existing is not None:
            # Another request's entry for this revision is in flight: it is the one (its
            # process publishes it, or the relay does; woken now in case that one is gone).
            self.relay.wake()
            if existing.fingerprint != claim.fingerprint:
                return await self._conflict(existing.claim)
            return _accepted(claim, duplicate=True)
        fault_point("after_outbox")
        # Durable now. Which content the revision has is decided by the accepted record's
        # insert: a revision accepted before (its entry published and gone) keeps its own.
        prior = await self._store.claim(entry.accepted(at=self._clock()))
        if prior is not None and not names(prior, entry):
            await self._outbox.remove(entry.key)  # ours is a copy or a loser: never published
            return await self._settled(prior, claim)
        # The 202 stands whatever the broker does next. Publish inline for latency; on a
        # broker outage the relay keeps trying.
        await self.relay.publish_inline(entry)
        self._metrics.classified(classification.category, classification.source,
                                 classification.confidence)
        # The evidence is logged, not audited: it follows from the description, which the
        # audited TicketSubmitted holds, so it can always be recomputed.
        log.info("ticket %s revision %d accepted: %s (%s, %s confidence, %s; evidence %s) "
                 "from %s", request.ticket_id, request.revision, classification.category,
                 claim.scope, classification.confidence, classification.source,
                 _evidence(classification), claim.source)
        return _accepted(claim, duplicate=False)

    async def _settled(self, prior: Claim, claim: Claim) -> Outcome:
        """The revision was accepted before: the same request is a duplicate, different
        content a conflict."""
        if prior.fingerprint != claim.fingerprint:
            return await self._conflict(prior)
        return _accepted(prior, duplicate=True)

    async def _conflict(self, claim: Claim) -> Refused:
        latest = await self._store.latest_revision(claim.ticket_id) or claim.revision
        return Refused(reason="conflict", ticket_id=claim.ticket_id, revision=claim.revision,
                       errors=[FieldError(
                           field="revision",
                           message=(
                               f"revision {claim.revision} of this ticket was already "
                               "submitted with different content; send the changes as "
                               f"revision {latest + 1}"
                           ),
                           code="revision_conflict",
                       )])

    def _event(
        self, claim: Claim, request: HelpdeskTicketRequest, classification: Classification,
        vouched_by: Vouch | None,
    ) -> TicketSubmitted:
        credentials = request.credentials
        if isinstance(credentials, PlainCredentials):
            if self.sealer is None:
                raise RuntimeError("intake has no sealing key loaded; cannot seal credentials")
            credentials = self.sealer.seal(credentials)
        return TicketSubmitted.new(
            ticket_id=request.ticket_id, revision=request.revision,
            event_id=claim.event_id, account_id=request.account_id,
            department=request.department, channel=request.channel,
            language=request.language, server=request.server,
            category=classification.category, category_source=classification.source,
            confidence=classification.confidence,
            form_category=classification.form_category, scope=claim.scope,
            description=request.description, error_messages=request.error_messages,
            parameters=request.parameters, credentials=credentials,
            authorization=request.authorization, vouched_by=vouched_by,
        )

    # -- the helpdesk topic -------------------------------------------------------------

    async def receive(self, message: TopicRequest, *, rejected_event_id: uuid.UUID,
                      vouched_by: Vouch | None = None, new_ticket: bool = False) -> Outcome:
        """Handle one topic message: TicketSubmitted, TicketRejected, or audited refusal."""
        self.learn(message.plaintext)
        outcome: Outcome
        if message.request is not None:
            outcome = await self.submit(message.request, source="topic", edge="topic",
                                        vouched_by=vouched_by, new_ticket=new_ticket)
        else:
            outcome = Rejected(errors=list(message.errors), ticket_id=message.ticket_id,
                               revision=message.revision, language=message.language)
        if isinstance(outcome, Rejected):
            claimed = await self._store.get(message.ticket_id, message.revision)
            if claimed is None and (entry := await self._outbox.get(
                    claim_key(message.ticket_id, message.revision))) is not None:
                claimed = entry.claim  # durable, its accepted record not written yet
            if claimed is not None:
                # Never reject a revision that is already being worked on.
                outcome = await self._conflict(claimed)
            else:
                await self._publish_event(TicketRejected.new(
                    ticket_id=message.ticket_id, revision=message.revision,
                    event_id=rejected_event_id, errors=outcome.errors,
                    language=outcome.language,
                ))
                log.info("ticket %s revision %d rejected: %s", message.ticket_id,
                         message.revision, ", ".join(sorted({e.code or "invalid"
                                                             for e in outcome.errors})))
        if isinstance(outcome, Refused):
            await self._audit.append(
                message.ticket_id,
                record_id=f"intake:refused:{message.revision}:{message.fingerprint}",
                kind="intake.refused", actor="intake",
                data={"revision": message.revision, "reason": outcome.reason,
                      "source": "topic"},
            )
            log.warning("ticket %s revision %d refused on the topic: %s revision",
                        message.ticket_id, message.revision, outcome.reason)
        self.record(outcome, "topic")
        return outcome

    def record(self, outcome: Outcome, source: Source) -> None:
        if isinstance(outcome, Accepted):
            self._metrics.request(source, "duplicate" if outcome.duplicate else "submitted")
        elif isinstance(outcome, Rejected):
            self._metrics.request(source, "rejected")
        else:
            self._metrics.request(source, outcome.reason)


def _accepted(claim: Claim, *, duplicate: bool) -> Accepted:
    return Accepted(
        ticket_id=claim.ticket_id, revision=claim.revision, event_id=claim.event_id,
        category=claim.category, category_source=claim.category_source, scope=claim.scope,
        confidence=claim.confidence, duplicate=duplicate,
    )


def _evidence(classification: Classification) -> str:
    return "; ".join(f"{c}: {', '.join(k)}" for c, k in classification.evidence.items()) or "none"


def _stale(ticket_id: str, revision: int, latest: int) -> Refused:
    return Refused(reason="stale", ticket_id=ticket_id, revision=revision, errors=[FieldError(
        field="revision",
        message=(
            f"is older than revision {latest}, already submitted for this ticket; send "
            f"follow-ups as revision {latest + 1}"
        ),
        code="revision_stale",
    )])
