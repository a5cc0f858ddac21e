"""The helpdesk's ticket request (ARCHITECTURE §4.1): external, untrusted input.

Validation here is *structural* only: shapes, types, lengths, formats. The procedure's
business rules (department must be Technical Issues, live chat is refused, the three consents
must be given, credentials must be sealed on the bus) are intake's to apply, so that it can
explain each refusal in the customer's language. The model therefore accepts any department
label, every channel and both values of each consent flag.

This is the only model with a field for plaintext credentials (:class:`PlainCredentials`,
accepted by intake's HTTP API and sealed at once). Its secrets are ``SecretStr``: ``repr``,
``str`` and JSON show ``**********``, and :func:`schemas.registry.encode` refuses to publish
a request that still holds them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    SecretStr,
    Tag,
    ValidationError,
    model_validator,
)

from schemas.common import (
    AS_TUPLE,
    PARAMETER_KEY_PATTERN,
    STRICT_MODEL,
    AccountId,
    FieldError,
    IpAddress,
    Label,
    LongText,
    OsUsername,
    Paragraph,
    PersonName,
    Revision,
    ServiceId,
    ServiceName,
    Statement,
    TicketId,
    UtcDatetime,
    field_errors,
    summarise,
)
from schemas.scope import Category
from schemas.values import SealedSecret

Channel = Literal["client_area", "email", "api", "live_chat"]
Language = Literal["en", "it"]
CredentialKind = Literal["password", "private_key"]

MAX_PASSWORD_CHARS = 1024
MAX_PRIVATE_KEY_CHARS = 16384
MAX_PARAMETERS = 32
MAX_PARAMETERS_JSON_CHARS = 8192
MAX_ERROR_MESSAGES = 50


class ServerRef(BaseModel):
    """How the customer names the server: exactly one of ``ip``, ``service_id``,
    ``service_name`` (auth resolves it against the inventory)."""

    model_config = STRICT_MODEL

    ip: IpAddress | None = None
    service_id: ServiceId | None = None
    service_name: ServiceName | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [
            name for name in ("ip", "service_id", "service_name") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise ValueError(f"give exactly one of ip, service_id, service_name{got}")
        return self

    @property
    def kind(self) -> Literal["ip", "service_id", "service_name"]:
        if self.ip is not None:
            return "ip"
        return "service_id" if self.service_id is not None else "service_name"

    @property
    def value(self) -> str:
        """The identifier as text, whichever kind it is."""
        for value in (self.ip, self.service_id, self.service_name):
            if value is not None:
                return str(value)
        raise AssertionError("unreachable: exactly one identifier is validated")


def _check_password(value: SecretStr) -> SecretStr:
    # Own checks instead of Field(min_length=...): pydantic's messages for SecretStr talk
    # about "items", and no message here may ever include the value.
    if not 1 <= len(value.get_secret_value()) <= MAX_PASSWORD_CHARS:
        raise ValueError(f"must be 1 to {MAX_PASSWORD_CHARS} characters")
    return value


def _check_private_key(value: SecretStr) -> SecretStr:
    key = value.get_secret_value()
    if len(key) > MAX_PRIVATE_KEY_CHARS:
        raise ValueError(f"must be at most {MAX_PRIVATE_KEY_CHARS} characters")
    if "-----BEGIN " not in key or "PRIVATE KEY-----" not in key:
        raise ValueError("must be a private key in OpenSSH (PEM-armoured) format")
    return value


Password = Annotated[
    SecretStr,
    AfterValidator(_check_password),
    Field(json_schema_extra={"minLength": 1, "maxLength": MAX_PASSWORD_CHARS}),
]
PrivateKey = Annotated[
    SecretStr,
    AfterValidator(_check_private_key),
    Field(json_schema_extra={"maxLength": MAX_PRIVATE_KEY_CHARS}),
]


class PlainCredentials(BaseModel):
    """OS credentials as the customer typed them: ``username`` plus exactly one of
    ``password`` / ``private_key``. Only intake's HTTP API accepts these; it seals them
    before anything is published or stored."""

    model_config = STRICT_MODEL

    username: OsUsername
    password: Password | None = None
    private_key: PrivateKey | None = None

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> Self:
        if (self.password is None) == (self.private_key is None):
            raise ValueError("give exactly one of password, private_key")
        return self

    @property
    def kind(self) -> CredentialKind:
        return "password" if self.password is not None else "private_key"

    def secret_value(self) -> str:
        """The plaintext password or private key, for sealing. Never log or store it."""
        secret = self.password if self.password is not None else self.private_key
        assert secret is not None  # guaranteed by _exactly_one_secret
        return secret.get_secret_value()

    def seal(self, sealer: Callable[[str], SealedSecret]) -> SealedCredentials:
        """The sealed form of these credentials, using e.g. the crypto module's seal
        function bound to the executor's public key."""
        return SealedCredentials(
            username=self.username, kind=self.kind, sealed=sealer(self.secret_value())
        )


class SealedCredentials(BaseModel):
    """OS credentials with the secret sealed to the executor's public key; the only form
    credentials take on the bus and in storage."""

    model_config = STRICT_MODEL

    username: OsUsername
    kind: CredentialKind
    sealed: SealedSecret


def _credentials_tag(value: Any) -> str | None:
    if isinstance(value, PlainCredentials | SealedCredentials):
        return type(value).__name__
    if isinstance(value, dict):
        # Keyed on which fields are present, so a malformed object is reported against the
        # one shape it was evidently meant to have, not against both.
        return "SealedCredentials" if "sealed" in value or "kind" in value else "PlainCredentials"
    return None


CREDENTIAL_TAGS = frozenset({"PlainCredentials", "SealedCredentials"})

Credentials = Annotated[
    Annotated[PlainCredentials, Tag("PlainCredentials")]
    | Annotated[SealedCredentials, Tag("SealedCredentials")],
    Discriminator(
        _credentials_tag,
        custom_error_type="credentials_shape",
        custom_error_message=(
            "must be an object with username and either password/private_key or kind and sealed"
        ),
    ),
]


class WrittenAuthorization(BaseModel):
    """The customer's written authorization for OS-level intervention and the three
    disclaimers the procedure requires them to accept."""

    model_config = STRICT_MODEL

    statement: Statement
    accepts_backup_responsibility: bool
    accepts_service_interruption: bool
    accepts_data_loss_disclaimer: bool
    signed_by: PersonName
    signed_at: UtcDatetime


def _check_parameters(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    try:
        # allow_nan=False: NaN/Infinity are not JSON and would break canonical signing.
        size = len(json.dumps(value, allow_nan=False, ensure_ascii=False))
    except ValueError as exc:
        raise ValueError("must contain only finite numbers") from exc
    if size > MAX_PARAMETERS_JSON_CHARS:
        raise ValueError(f"must be at most {MAX_PARAMETERS_JSON_CHARS} characters as JSON")
    return value


Parameters = Annotated[
    dict[Annotated[str, Field(pattern=PARAMETER_KEY_PATTERN)], JsonValue],
    Field(
        max_length=MAX_PARAMETERS,
        description='Category-specific parameters, e.g. {"unit": "nginx"}.',
        # Keys outside the pattern are rejected; say so in the JSON Schema too.
        json_schema_extra={"additionalProperties": False},
    ),
    AfterValidator(_check_parameters),
]
ErrorMessages = Annotated[tuple[Paragraph, ...], Field(max_length=MAX_ERROR_MESSAGES), AS_TUPLE]


class HelpdeskTicketRequest(BaseModel):
    """A ticket as the helpdesk sends it (§4.1); no envelope: it is external input.

    ``credentials`` are :class:`SealedCredentials` on the ``helpdesk.ticket-requests``
    topic; :class:`PlainCredentials` are accepted here only so intake's HTTP API can parse
    then seal them, and so intake can recognise (and refuse) plaintext on the bus.
    """

    model_config = STRICT_MODEL

    ticket_id: TicketId
    revision: Revision
    account_id: AccountId
    department: Label
    channel: Channel
    language: Language
    server: ServerRef
    category: Category | None = None
    description: LongText
    error_messages: ErrorMessages = ()
    parameters: Parameters = Field(default_factory=dict)
    credentials: Credentials
    authorization: WrittenAuthorization

    @property
    def has_plaintext_credentials(self) -> bool:
        return isinstance(self.credentials, PlainCredentials)


class RequestValidationError(ValueError):
    """A helpdesk request that is not structurally valid.

    ``errors`` lists every problem by dotted field path; neither they nor the message
    contain any submitted value (one may be a password), and the pydantic error is not
    chained, so a logged traceback cannot leak the input either.

    ``ticket_id``, ``revision`` and ``language`` are set when those fields are valid on
    their own, so intake can still answer on the ticket with a TicketRejected (in the
    customer's language) although the request as a whole is invalid.
    """

    def __init__(
        self,
        errors: list[FieldError],
        *,
        ticket_id: str | None = None,
        revision: int | None = None,
        language: Language | None = None,
    ) -> None:
        self.errors = errors
        self.ticket_id = ticket_id
        self.revision = revision
        self.language: Language | None = language
        super().__init__(f"invalid helpdesk request: {summarise(errors)}")


class _ReplyContext(BaseModel):
    # Lenient about everything else in the document: only these three fields matter here.
    model_config = ConfigDict(strict=True, extra="ignore")

    ticket_id: TicketId | None = None
    revision: Revision | None = None
    language: Language | None = None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _reply_context(raw: bytes | str) -> dict[str, Any]:
    try:
        # Hostile input: refuse NaN/Infinity like the model does, and survive nesting deep
        # enough to exhaust the parser's recursion.
        doc = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    context: dict[str, Any] = {}
    for name in ("ticket_id", "revision", "language"):
        try:
            value = _ReplyContext.model_validate_json(json.dumps({name: doc.get(name)}))
        except ValidationError:
            continue
        context[name] = getattr(value, name)
    return context


def parse_helpdesk_request(raw: bytes | str | Mapping[str, Any]) -> HelpdeskTicketRequest:
    """Validate a helpdesk request from raw JSON (preferred) or an already-decoded mapping.

    A mapping is re-encoded as JSON first: strict models take ISO datetimes and IP
    addresses as strings only from JSON, and this keeps both entry points identical.
    Raises :class:`RequestValidationError`.
    """
    if isinstance(raw, Mapping):
        try:
            raw = json.dumps(raw, allow_nan=False)
        except (TypeError, ValueError):
            raise RequestValidationError(
                [FieldError(field="$", message="must be a JSON object", code="not_json")]
            ) from None
    try:
        return HelpdeskTicketRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = field_errors(exc, drop=CREDENTIAL_TAGS)
    raise RequestValidationError(errors, **_reply_context(raw)) from None
