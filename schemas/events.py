"""The ``intervention.*`` events (ARCHITECTURE §4), in the order a ticket meets them.

Each class is the contract for one topic. Fields consumers may rely on are required;
additions follow docs/schema-evolution.md. No event has a field that can hold a plaintext
secret: credentials travel only as :class:`~schemas.request.SealedCredentials`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self
from uuid import UUID

from pydantic import BaseModel, Field, model_validator

from schemas.canonical import canonical_json
from schemas.common import (
    AS_TUPLE,
    STRICT_MODEL,
    AccountId,
    EngineerId,
    FieldError,
    IpAddress,
    Label,
    LongText,
    Notes,
    Paragraph,
    PersonName,
    RunbookName,
    ServiceId,
    ServiceName,
    ShortText,
    SshPublicKey,
    StepId,
    UtcDatetime,
)
from schemas.envelope import EventEnvelope
from schemas.request import (
    Channel,
    ErrorMessages,
    Language,
    Parameters,
    SealedCredentials,
    ServerRef,
    WrittenAuthorization,
)
from schemas.scope import Category, Scope, scope_of
from schemas.values import Signature

AccessMethod = Literal["ssh", "windows_openssh", "rescue", "ipkvm", "vnc", "datacenter"]
"""ssh / windows_openssh / rescue are automated; ipkvm, vnc and datacenter are human steps."""

Outcome = Literal["resolved", "partially_resolved", "unresolved", "refused"]

AuthorizationRejectionReason = Literal[
    "not_owner",
    "server_unknown",
    "server_ambiguous",
    "authorization_missing",
    "authorization_not_explicit",
    "authorization_not_bound",
    "wrong_department",
    "channel_not_allowed",
    "credentials_missing",
    "scope_not_included",
    "revision_stale",
    "account_not_vouched",
]

TicketUpdateKind = Literal[
    "acknowledgement",
    "rejection",
    "clarification",
    "scope_not_included",
    "intervention_started",
    "extension",
    "completion",
    "hardware_escalation",
    "queued",
    "other",
]

Texts = Annotated[tuple[Paragraph, ...], Field(max_length=50), AS_TUPLE]
NonEmptyTexts = Annotated[tuple[Paragraph, ...], Field(min_length=1, max_length=50), AS_TUPLE]


class SignedEvent(EventEnvelope):
    """An event its producer signs with its own Ed25519 key because another service acts on
    it: auth's verdict, the notifier's acknowledgements and manual-step reports.

    ``signature`` is Ed25519 over :meth:`signed_bytes`; the verifier
    (:mod:`services.runtime.facts`, :mod:`services.runtime.verdicts`) recomputes those bytes
    from the parsed event, so an altered field fails however it was re-serialised.
    """

    signature: Signature | None = None

    def signed_bytes(self) -> bytes:
        """The bytes the producer signs and the consumer verifies: :func:`canonical_json`
        of every field of this event (the envelope, every event field, and any field a
        later schema version adds) except ``signature`` itself. Changing any covered value
        changes these bytes."""
        return canonical_json(self.model_dump(mode="json", exclude={"signature"}))

    def with_signature(self, signature: Signature) -> Self:
        return self.model_copy(update={"signature": signature})


# --- intake ----------------------------------------------------------------------------


class Vouch(BaseModel):
    """Which registered helpdesk integration authenticated the customer, and as whom: the
    account of a ticket is that integration's mapping of this identity (docs/security.md)."""

    model_config = STRICT_MODEL

    integration: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
                                      description="The integration's registered name.")]
    customer: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9:._@+-]{0,127}$",
                                   description="The helpdesk's authenticated customer "
                                               "identity, e.g. client:17.")]


class TicketSubmitted(SignedEvent):
    """A structurally valid request that passed intake's rules, credentials sealed.

    ``category`` is always set: the form's choice (``category_source="form"``) or intake's
    classification of the description (``"classified"``; ``confidence="low"`` asks an
    engineer to check). ``form_category`` keeps what the customer picked when the classifier
    overrode it. ``scope`` is always ``scope_of(category)``. ``vouched_by`` (version 2) names
    the integration that authenticated the customer whose account this is; auth refuses a
    ticket nobody vouched for. ``signature`` (version 3) is intake's Ed25519 signature over
    every other field; auth decides only on a ticket that verifies against intake's key.
    """

    event_type: Literal["TicketSubmitted"]
    schema_version: Literal[1, 2, 3]
    producer: Literal["intake"]

    account_id: AccountId
    department: Label
    channel: Channel
    language: Language
    server: ServerRef
    category: Category
    category_source: Literal["form", "classified"]
    confidence: Literal["high", "low"]
    form_category: Category | None = None
    scope: Scope
    description: LongText
    error_messages: ErrorMessages = ()
    parameters: Parameters = Field(default_factory=dict)
    credentials: SealedCredentials
    authorization: WrittenAuthorization
    vouched_by: Vouch | None = None

    @model_validator(mode="after")
    def _scope_matches_category(self) -> Self:
        if self.scope != scope_of(self.category):
            raise ValueError(f"scope must be {scope_of(self.category)!r} for {self.category}")
        return self


FieldErrors = Annotated[tuple[FieldError, ...], Field(min_length=1, max_length=100), AS_TUPLE]


class TicketRejected(EventEnvelope):
    """A request intake refused, with errors the helpdesk can show the customer as-is.

    A request too broken to name its ticket (no valid ``ticket_id`` or ``revision``) cannot
    be answered on a ticket; it goes to the dead-letter topic instead.
    """

    event_type: Literal["TicketRejected"]
    schema_version: Literal[1]
    producer: Literal["intake"]

    errors: FieldErrors
    language: Language


# --- auth ------------------------------------------------------------------------------


class ResolvedServer(BaseModel):
    """The inventory's facts about the one server the ticket's identifier resolved to."""

    model_config = STRICT_MODEL

    service_id: ServiceId
    service_name: ServiceName
    ip: IpAddress = Field(description="The address to reach the server at.")
    type: Literal["dedicated", "vps"]
    os_family: Literal["linux", "windows"]
    ipkvm: bool
    rescue: bool
    ssh_port: int = Field(ge=1, le=65535)
    ssh_host_key: SshPublicKey | None = Field(
        default=None, description="Pinned host key; None means trust on first use."
    )
    datacenter: Label


class AuthorizationVerified(SignedEvent):
    """Auth's signed verdict that the ticket may be executed: the only event the executor
    acts on.

    It embeds the whole :class:`TicketSubmitted` (credentials still sealed) and the
    resolved server, so the executor needs nothing else, and the signature covers both.
    ``signature`` is Ed25519 over :meth:`signed_bytes`.
    """

    event_type: Literal["AuthorizationVerified"]
    schema_version: Literal[1]
    producer: Literal["auth"]

    account_id: AccountId
    ticket: TicketSubmitted
    server: ResolvedServer
    review_required: bool = False
    review_reason: ShortText | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # A verdict for one ticket must not be able to carry another ticket's request.
        if self.ticket.ticket_id != self.ticket_id:
            raise ValueError("ticket.ticket_id must equal ticket_id")
        if self.ticket.revision != self.revision:
            raise ValueError("ticket.revision must equal revision")
        if self.ticket.account_id != self.account_id:
            raise ValueError("ticket.account_id must equal account_id")
        if self.review_required and self.review_reason is None:
            raise ValueError("review_reason is required when review_required is true")
        return self

    def signed_bytes(self) -> bytes:
        """As :meth:`SignedEvent.signed_bytes`, intake's signature on the embedded ticket
        included - except an absent one, which is left out rather than written as null, so
        a verdict on an unsigned (version 1 or 2) ticket has the bytes it had before tickets
        were signed and a verdict signed by an older auth still verifies."""
        document = self.model_dump(mode="json", exclude={"signature"})
        if document["ticket"].get("signature") is None:
            del document["ticket"]["signature"]
        return canonical_json(document)


AuthorizationRejectionReasons = Annotated[
    tuple[AuthorizationRejectionReason, ...], Field(min_length=1, max_length=20), AS_TUPLE
]


class AuthorizationRejected(EventEnvelope):
    """Auth's refusal: machine-readable ``reasons`` and an English ``details`` line for
    engineers (the notifier words the customer's message from the codes)."""

    event_type: Literal["AuthorizationRejected"]
    schema_version: Literal[1, 2]
    producer: Literal["auth"]

    reasons: AuthorizationRejectionReasons
    details: Paragraph


class ClarificationRequested(EventEnvelope):
    """A question for the customer on the same ticket; the answer arrives as the ticket's
    next revision. ``field`` names the request field concerned (e.g. ``server``)."""

    event_type: Literal["ClarificationRequested"]
    schema_version: Literal[1]
    producer: Literal["auth", "executor"]

    question: Paragraph
    field: Annotated[str, Field(min_length=1, max_length=300)] | None = None


# --- executor --------------------------------------------------------------------------


class InterventionQueued(EventEnvelope):
    """The executor accepted the verdict (its claim is durable) but every worker is busy:
    the intervention waits in the executor's queue.

    ``position`` is the claim's place among the claims waiting for a worker of this executor
    (1: the next to start); ``expected_start_at`` is an estimate from the runs in progress,
    the recent runs' typical duration (``typical_run_seconds``) and ``concurrency``
    (:mod:`services.executor.queue_estimate`). The notifier tells the customer from it when
    no InterventionStarted follows soon (docs/architecture.md §7.4).
    """

    event_type: Literal["InterventionQueued"]
    schema_version: Literal[1]
    producer: Literal["executor"]

    position: int = Field(ge=1, le=1_000_000)
    expected_start_at: UtcDatetime
    typical_run_seconds: int = Field(ge=0, le=7 * 24 * 3600)
    concurrency: int = Field(ge=1, le=10_000)


class InterventionStarted(EventEnvelope):
    """The executor's choice of access method, why, and which runbook runs.

    ``timeline`` selects the intervention SLA clock: standard (≤ 60 min), complex (≤ 4 h)
    or datacenter (longer).
    """

    event_type: Literal["InterventionStarted"]
    schema_version: Literal[1]
    producer: Literal["executor"]

    access_method: AccessMethod
    reason: Paragraph
    runbook: RunbookName
    mode: Literal["automated", "engineer"]
    timeline: Literal["standard", "complex", "datacenter"] = "standard"
    dry_run: bool = False


class ManualStepRequested(EventEnvelope):
    """A step an engineer must do by hand (console, rescue, data centre) and report back
    through the notifier as :class:`ManualStepCompleted` with the same ``step_id``."""

    event_type: Literal["ManualStepRequested"]
    schema_version: Literal[1]
    producer: Literal["executor"]

    step_id: StepId
    method: AccessMethod
    instructions: NonEmptyTexts
    verification: Texts = Field(default=(), description="What to check before reporting done.")
    reason: Paragraph
    deadline: UtcDatetime | None = None


class Action(BaseModel):
    """One action taken on the customer's system, as the customer may see it."""

    model_config = STRICT_MODEL

    step: ShortText
    command: Paragraph = Field(description="Redacted summary of the command run.")
    exit_status: int | None = Field(default=None, ge=-255, le=255)
    duration_ms: int = Field(ge=0)
    result: Literal[
        "ok", "changed", "no_change_needed", "failed", "rolled_back", "skipped", "planned"
    ]


class Backup(BaseModel):
    """A copy made before a change, so the customer can review or restore it."""

    model_config = STRICT_MODEL

    location: Paragraph
    description: Paragraph


class InterventionCompleted(EventEnvelope):
    """The ticket revision's outcome, with the ordered action summary and after-care advice.

    ``new_credentials_issued`` says new credentials wait (sealed) in the customer's
    account; the credentials themselves never appear in any event.
    """

    event_type: Literal["InterventionCompleted"]
    schema_version: Literal[1]
    producer: Literal["executor"]

    outcome: Outcome
    access_method: AccessMethod | None = None
    actions: Annotated[tuple[Action, ...], Field(max_length=500), AS_TUPLE] = ()
    backups: Annotated[tuple[Backup, ...], Field(max_length=100), AS_TUPLE] = ()
    new_credentials_issued: bool = False
    recommendations: Texts = ()
    reason: Paragraph | None = Field(
        default=None, description="Why, when the outcome is not resolved."
    )
    dry_run: bool = False


class HardwareEscalated(EventEnvelope):
    """Evidence of a hardware fault, handed to the provider's hardware-failure procedure."""

    event_type: Literal["HardwareEscalated"]
    schema_version: Literal[1]
    producer: Literal["executor"]

    component: Literal["disk", "memory", "raid", "cpu", "psu", "other"]
    device: ShortText | None = None
    evidence: NonEmptyTexts
    severity: Literal["warning", "critical"]


# --- notifier --------------------------------------------------------------------------

ChatChannel = Literal["matrix", "slack", "telegram", "webhook"]


class EngineerAcknowledged(SignedEvent):
    """The first engineer to acknowledge ``acknowledged_event_id`` from chat.

    Version 2 adds ``signature``: the notifier's Ed25519 signature over every other field
    (the engineer's identity and the acknowledged page included); consumers refuse an
    unsigned or wrongly signed one (:mod:`services.runtime.facts`)."""

    event_type: Literal["EngineerAcknowledged"]
    schema_version: Literal[1, 2]
    producer: Literal["notifier"]

    engineer_id: EngineerId
    display_name: PersonName
    channel: ChatChannel
    acknowledged_event_id: UUID


class ManualStepCompleted(SignedEvent):
    """An engineer's report from chat on a :class:`ManualStepRequested` step.

    Version 2 adds ``signature``: the notifier's Ed25519 signature over every other field
    (step, status, notes and the engineer's identity included); the executor acts only on
    a report that verifies against the notifier's key (:mod:`services.runtime.facts`)."""

    event_type: Literal["ManualStepCompleted"]
    schema_version: Literal[1, 2]
    producer: Literal["notifier"]

    step_id: StepId
    status: Literal["done", "failed"]
    notes: Notes = ""
    engineer_id: EngineerId
    display_name: PersonName
    channel: ChatChannel


class TicketUpdated(EventEnvelope):
    """The customer-facing text the helpdesk posts verbatim on the ticket.

    Version 2 adds the ``kind`` ``queued`` (the intervention waits for a free executor)."""

    event_type: Literal["TicketUpdated"]
    schema_version: Literal[1, 2]
    producer: Literal["notifier"]

    kind: TicketUpdateKind
    message: LongText
    language: Language


SlaClock = Literal["initial_response", "intervention"]


class SlaWarning(EventEnvelope):
    """An SLA clock reached its warning threshold (80 %)."""

    event_type: Literal["SlaWarning"]
    schema_version: Literal[1]
    producer: Literal["notifier"]

    clock: SlaClock
    deadline: UtcDatetime
    elapsed_seconds: int = Field(ge=0)


class SlaBreached(EventEnvelope):
    """An SLA clock passed its deadline."""

    event_type: Literal["SlaBreached"]
    schema_version: Literal[1]
    producer: Literal["notifier"]

    clock: SlaClock
    deadline: UtcDatetime
    elapsed_seconds: int = Field(ge=0)


Event = (
    TicketSubmitted
    | TicketRejected
    | AuthorizationVerified
    | AuthorizationRejected
    | ClarificationRequested
    | InterventionQueued
    | InterventionStarted
    | ManualStepRequested
    | InterventionCompleted
    | HardwareEscalated
    | EngineerAcknowledged
    | ManualStepCompleted
    | TicketUpdated
    | SlaWarning
    | SlaBreached
)

EVENT_MODELS: tuple[type[EventEnvelope], ...] = (
    TicketSubmitted,
    TicketRejected,
    AuthorizationVerified,
    AuthorizationRejected,
    ClarificationRequested,
    InterventionQueued,
    InterventionStarted,
    ManualStepRequested,
    InterventionCompleted,
    HardwareEscalated,
    EngineerAcknowledged,
    ManualStepCompleted,
    TicketUpdated,
    SlaWarning,
    SlaBreached,
)

__all__ = [
    "EVENT_MODELS",
    "AccessMethod",
    "Action",
    "AuthorizationRejected",
    "AuthorizationRejectionReason",
    "AuthorizationVerified",
    "Backup",
    "ChatChannel",
    "ClarificationRequested",
    "EngineerAcknowledged",
    "Event",
    "HardwareEscalated",
    "InterventionCompleted",
    "InterventionQueued",
    "InterventionStarted",
    "ManualStepCompleted",
    "ManualStepRequested",
    "Outcome",
    "ResolvedServer",
    "SignedEvent",
    "SlaBreached",
    "SlaClock",
    "SlaWarning",
    "TicketRejected",
    "TicketSubmitted",
    "TicketUpdateKind",
    "TicketUpdated",
]
