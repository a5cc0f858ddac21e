"""Tests act as a registered helpdesk integration: register it, map its customers, sign.

:func:`register` writes an integration (and its account map) through the product's own
registry, exactly as ``intervene integrations add`` / ``accounts import`` do.
:class:`IntegrationAuth` is an ``httpx`` auth flow that signs every request the way a
helpdesk must (:mod:`services.intake.signing`). By default the acting customer is
``portal:<the body's account_id>`` and is mapped to that account on first use (a portal
whose login *is* the provider's account): tests that are not about the account map then
read as before, and tests about it pass ``customer=`` and ``auto_map=False``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pymongo.asynchronous.database import AsyncDatabase

from schemas.topics import HELPDESK_REQUESTS
from services.intake.accounts import AccountMap, Mapping, valid_customer
from services.intake.integrations import IntegrationKeyFile, IntegrationRegistry
from services.intake.signing import KAFKA_METHOD, signed_headers


@dataclass(frozen=True, kw_only=True)
class Registered:
    name: str
    secret: str = field(repr=False)
    db: AsyncDatabase[dict[str, Any]]
    keys: Path

    def account_map(self) -> AccountMap:
        return AccountMap(self.db, IntegrationKeyFile(self.keys, create=True))

    async def map(self, customer: str, account_id: str) -> None:
        await self.account_map().upsert(self.name, [Mapping(customer=customer,
                                                            account_id=account_id)])

    async def topic_headers(self, body: bytes, customer: str | None = None
                            ) -> list[tuple[str, bytes]]:
        """Kafka headers signing ``body`` for the helpdesk topic; the portal customer of the
        body's account is mapped first unless ``customer`` is given."""
        if customer is None:
            customer = portal_customer(body)
            if customer and not valid_customer(customer):
                customer = FALLBACK_CUSTOMER  # see IntegrationAuth: judged by validation
            if customer:
                await self.map(customer, customer.removeprefix("portal:"))
        return [(k, v.encode()) for k, v in self.headers(
            KAFKA_METHOD, HELPDESK_REQUESTS, body, customer).items()]

    def auth(self, **kwargs: Any) -> IntegrationAuth:
        return IntegrationAuth(self, **kwargs)

    def headers(self, method: str, path: str, body: bytes, customer: str = "",
                now: float | None = None) -> dict[str, str]:
        return signed_headers(integration=self.name, secret=self.secret, method=method,
                              path=path, body=body, customer=customer, now=now)


async def register(db: AsyncDatabase[dict[str, Any]], keys: Path, name: str, *,
                   kind: str = "api", scopes: tuple[str, ...] = ("submit", "read"),
                   accounts: dict[str, str] | None = None) -> Registered:
    registry = IntegrationRegistry(db, IntegrationKeyFile(keys, create=True))
    _, secret = await registry.add(name, kind=kind, scopes=scopes)
    registered = Registered(name=name, secret=secret, db=db, keys=keys)
    for customer, account in (accounts or {}).items():
        await registered.map(customer, account)
    return registered


def portal_customer(body: bytes) -> str:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # fuzzers send bodies no JSON parser can read
        return ""
    account = document.get("account_id") if isinstance(document, dict) else None
    return f"portal:{account}" if isinstance(account, str) and account else ""


FALLBACK_CUSTOMER = "portal:ACC-1001"


class IntegrationAuth(httpx.Auth):
    """Signs each request as ``integration`` (the body must be known: use ``content=`` or
    ``json=``, as helpdesks do)."""

    requires_request_body = True

    def __init__(self, integration: Registered, *, customer: str | None = None,
                 auto_map: bool = True,
                 customer_of: Callable[[bytes], str] = portal_customer) -> None:
        self.integration = integration
        self.customer = customer
        self.auto_map = auto_map
        self.customer_of = customer_of
        self._mapped: set[str] = set()

    async def async_auth_flow(self, request: httpx.Request
                              ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        body = request.content
        customer = self.customer if self.customer is not None else self.customer_of(body)
        if self.customer is None and customer and not valid_customer(customer):
            # A body whose account could be no portal login (a fuzzer's): sign for a real
            # customer, so the request reaches intake's validation and is judged there.
            customer = FALLBACK_CUSTOMER
        if self.auto_map and customer.startswith("portal:") and customer not in self._mapped \
                and valid_customer(customer):
            await self.integration.map(customer, customer.removeprefix("portal:"))
            self._mapped.add(customer)
        path = request.url.raw_path.decode("latin-1")
        request.headers.update(self.integration.headers(request.method, path, body, customer))
        yield request
