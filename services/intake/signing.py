"""Request signatures of registered helpdesk integrations (pure: no I/O).

Every caller of intake's API is an integration the provider registered
(``intervene integrations add``); it holds a secret shown once, and signs each request:

``X-Intervention-Integration``
    the integration's name (the key id).
``X-Intervention-Timestamp``
    Unix time in whole seconds when the request was signed; over HTTP it must be within
    :data:`WINDOW_S` of intake's clock.
``X-Intervention-Nonce``
    16-64 random characters (letters, digits, ``-``, ``_``), new for every request, retries
    included; over HTTP each nonce of an integration is accepted once within the window, so
    a captured request cannot be sent again.
``X-Intervention-Customer``
    the helpdesk's *authenticated* identity of the customer the request acts for (the
    login the helpdesk checked, e.g. ``client:17``); intake maps it to the provider's
    account with the integration's account map. Optional where the body carries it (the
    shipped WHMCS hook) or the request acts for no customer (a read).
``X-Intervention-Signature``
    ``v1=<hex HMAC-SHA256(secret, string to sign)>``, where the string to sign is the
    UTF-8 of these lines joined by ``\\n``::

        v1
        <integration name>
        <METHOD, upper case>
        <request path and query, exactly as sent: /v1/tickets>
        <timestamp>
        <nonce>
        <customer header value, or empty>
        <hex SHA-256 of the raw body (of b"" for none)>

The scheme is the one Stripe, Slack and GitHub use for webhooks (HMAC-SHA256 over a
timestamped canonical string, constant-time compare, freshness window), extended to cover
method, path and the acting customer, so a signature cannot be moved to another request,
route or customer. On the ``helpdesk.ticket-requests`` topic the same headers are Kafka
headers, the method is ``KAFKA`` and the path the catalogue topic name (no prefix); no
freshness window applies there (a message may wait in the topic while intake is down), and a
redelivered message is deduplicated by its idempotency key instead.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

SCHEME: Final = "v1"
HEADER_INTEGRATION: Final = "X-Intervention-Integration"
HEADER_TIMESTAMP: Final = "X-Intervention-Timestamp"
HEADER_NONCE: Final = "X-Intervention-Nonce"
HEADER_CUSTOMER: Final = "X-Intervention-Customer"
HEADER_SIGNATURE: Final = "X-Intervention-Signature"
WINDOW_S: Final = 300
"""How far a request's timestamp may be from intake's clock, either way (5 minutes)."""
KAFKA_METHOD: Final = "KAFKA"
MAX_CUSTOMER_LENGTH: Final = 128
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")


class SignatureRefused(Exception):
    """The request is not signed by a registered integration; ``code`` says how.

    The message names what is wrong and never echoes a header value.
    """

    def __init__(self, code: str, message: str, *, field: str = HEADER_SIGNATURE) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def string_to_sign(*, integration: str, method: str, path: str, timestamp: str,
                   nonce: str, customer: str, body: bytes) -> bytes:
    return "\n".join(
        (SCHEME, integration, method.upper(), path, timestamp, nonce, customer,
         body_digest(body))
    ).encode()


def sign(secret: str, *, integration: str, method: str, path: str, timestamp: str,
         nonce: str, customer: str, body: bytes) -> str:
    """The ``X-Intervention-Signature`` value (what an integration computes)."""
    mac = hmac.new(secret.encode(), string_to_sign(
        integration=integration, method=method, path=path, timestamp=timestamp, nonce=nonce,
        customer=customer, body=body), hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def signed_headers(*, integration: str, secret: str, method: str, path: str, body: bytes,
                   customer: str = "", now: float | None = None, nonce: str | None = None
                   ) -> dict[str, str]:
    """Every header of a signed request (the client side: ``intervene submit``, the demo)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    headers = {
        HEADER_INTEGRATION: integration,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: sign(secret, integration=integration, method=method, path=path,
                               timestamp=timestamp, nonce=nonce, customer=customer, body=body),
    }
    if customer:
        headers[HEADER_CUSTOMER] = customer
    return headers


@dataclass(frozen=True, kw_only=True)
class Signer:
    """The client side: a registered integration acting for one helpdesk customer."""

    integration: str
    secret: str = field(repr=False)
    customer: str = ""

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return signed_headers(integration=self.integration, secret=self.secret,
                              method=method, path=path, body=body, customer=self.customer)

    def kafka_headers(self, topic: str, body: bytes) -> list[tuple[str, bytes]]:
        """Kafka headers for ``body`` on the catalogue ``topic`` (no prefix)."""
        return [(k, v.encode()) for k, v in self.headers(KAFKA_METHOD, topic, body).items()]


@dataclass(frozen=True, kw_only=True)
class SignedRequest:
    """The parts of a request the signature covers, as read from its headers."""

    integration: str
    timestamp: str
    nonce: str
    customer: str
    signature: str

    @property
    def replay_key(self) -> str:
        """What names this request among the integration's (for refusing it a second time)."""
        return hashlib.sha256(f"{self.integration}\n{self.nonce}".encode()).hexdigest()


def read_headers(headers: Mapping[str, str]) -> SignedRequest:
    """The signature headers of a request (case-insensitive mapping), checked for shape."""
    lowered = {k.lower(): v for k, v in headers.items()}

    def header(name: str, *, required: bool = True) -> str:
        value = lowered.get(name.lower(), "")
        if required and not value.strip():
            raise SignatureRefused("unsigned", f"the {name} header is required: every request "
                                   "is signed by a registered integration", field=name)
        return value.strip()

    integration = header(HEADER_INTEGRATION)
    timestamp = header(HEADER_TIMESTAMP)
    nonce = header(HEADER_NONCE)
    signature = header(HEADER_SIGNATURE)
    customer = header(HEADER_CUSTOMER, required=False)
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureRefused("bad_timestamp", "must be Unix time in whole seconds",
                               field=HEADER_TIMESTAMP)
    if len(integration) > 64 or len(customer) > MAX_CUSTOMER_LENGTH:
        raise SignatureRefused("bad_header", "an integration name has at most 64 characters "
                               f"and a customer identity at most {MAX_CUSTOMER_LENGTH}",
                               field=HEADER_INTEGRATION)
    if not _NONCE.fullmatch(nonce):
        raise SignatureRefused("bad_nonce", "must be 16-64 random letters, digits, '-' or "
                               "'_', new for every request", field=HEADER_NONCE)
    scheme, _, given = signature.partition("=")
    if scheme != SCHEME or len(given) != 64:
        raise SignatureRefused("bad_signature", f"must read {SCHEME}=<64 hex digits>")
    return SignedRequest(integration=integration, timestamp=timestamp, nonce=nonce,
                         customer=customer, signature=given.lower())


def check_fresh(request: SignedRequest, *, now: float, window_s: int = WINDOW_S) -> None:
    if abs(now - int(request.timestamp)) > window_s:
        raise SignatureRefused(
            "stale_timestamp", f"is more than {window_s} s from intake's clock; sign each "
            "request when sending it, from a clock kept in sync (NTP)", field=HEADER_TIMESTAMP)


def verify(request: SignedRequest, secret: str, *, method: str, path: str,
           body: bytes) -> None:
    """Raise :class:`SignatureRefused` unless ``request`` was signed with ``secret``."""
    expected = sign(secret, integration=request.integration, method=method, path=path,
                    timestamp=request.timestamp, nonce=request.nonce,
                    customer=request.customer, body=body)
    if not hmac.compare_digest(expected, f"{SCHEME}={request.signature}"):
        raise SignatureRefused("bad_signature", "does not match this request: sign the "
                               "method, path, timestamp, nonce, customer and body digest as "
                               "documented")
