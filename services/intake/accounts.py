"""Whose account a request acts for: the helpdesk's authenticated customer, mapped.

A ticket's account is never taken from what the customer typed. Each integration has an
account map from the helpdesk's *authenticated* identity of its customer (its login: a
Zammad customer ``customer:42`` or organization ``organization:7``, a WHMCS client
``client:17``, the portal user an API integration names in ``X-Intervention-Customer``) to
the provider's account id. The provider maintains it like the server inventory:
``intervene accounts import FILE --integration NAME`` (CSV with a header row ``customer,
account_id``, or a JSON list of such objects), all or nothing, every bad row reported as
``FILE:LINE: field: message``; ``intervene accounts list NAME`` shows it.

Stored in ``intake_account_map``, ``_id = <integration>|<customer>`` (FerretDB answers
``_id`` lookups without scanning), each entry MACed with intake's integration key over
integration, customer, account and import version, so a database writer cannot point a
customer at another account: an entry whose MAC does not check is treated as absent.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from schemas.common import IDENTIFIER_PATTERN
from services.intake.integrations import KeySource

COLLECTION: Final = "intake_account_map"
CUSTOMER_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._@+-]{0,127}")
_ACCOUNT = re.compile(IDENTIFIER_PATTERN)
CACHE_TTL_S: Final = 5.0


class AccountMapFileError(ValueError):
    """The file cannot be read as an account map at all (not a row problem)."""


@dataclass(frozen=True, kw_only=True)
class RowError:
    line: int
    field: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Mapping:
    customer: str
    account_id: str


@dataclass(frozen=True, kw_only=True)
class ParsedMap:
    rows: tuple[Mapping, ...]
    errors: tuple[RowError, ...]


def valid_customer(value: str) -> bool:
    return bool(CUSTOMER_PATTERN.fullmatch(value))


def parse_account_map(path: Path, *, fmt: str | None = None) -> ParsedMap:
    """Every row of the file, or every problem in it (line numbers as an editor shows)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountMapFileError(f"{path}: cannot be read ({type(exc).__name__})") from None
    kind = fmt or ("json" if path.suffix.lower() == ".json" else "csv")
    items: list[tuple[int, dict[str, Any]]] = []
    if kind == "json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AccountMapFileError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") \
                from None
        if not isinstance(document, list):
            raise AccountMapFileError(f"{path}: must hold a JSON list of objects")
        items = [(i + 1, row if isinstance(row, dict) else {}) for i, row in
                 enumerate(document)]
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or not {"customer", "account_id"} <= set(
                reader.fieldnames):
            raise AccountMapFileError(f"{path}: the header row must name customer,account_id")
        items = [(reader.line_num, dict(row)) for row in reader]
    rows: list[Mapping] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for line, row in items:
        customer = str(row.get("customer") or "").strip()
        account = str(row.get("account_id") or "").strip()
        if not valid_customer(customer):
            errors.append(RowError(line=line, field="customer", message=(
                "is required: the helpdesk's customer identity (1-128 letters, digits, "
                "':', '.', '_', '@', '+' or '-'), e.g. client:17")))
        elif customer in seen:
            errors.append(RowError(line=line, field="customer", message=(
                f"is mapped twice (also on line {seen[customer]}); one account per customer")))
        else:
            seen[customer] = line
        if not _ACCOUNT.fullmatch(account):
            errors.append(RowError(line=line, field="account_id", message=(
                "is required: the provider's account id (1-64 letters, digits, '.', '_' "
                "or '-')")))
        if not errors or errors[-1].line != line:
            rows.append(Mapping(customer=customer, account_id=account))
    return ParsedMap(rows=tuple(rows), errors=tuple(errors))


def _doc_id(integration: str, customer: str) -> str:
    return f"{integration}|{customer}"


@dataclass(frozen=True, kw_only=True)
class ImportSummary:
    version: int
    created: int
    updated: int
    unchanged: int


class AccountMap:
    """The account maps of all integrations; lookups by ``_id``, cached briefly."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], key: KeySource) -> None:
        self._collection = db[COLLECTION]
        self._key_source = key
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._reading: dict[str, asyncio.Future[str | None]] = {}

    def _mac(self, integration: str, customer: str, account: str, version: int) -> str:
        return self._key_source().mac("account-map", integration, customer, account, str(version))

    def _verified(self, doc: dict[str, Any]) -> str | None:
        """The entry's account when ``intervene accounts import`` wrote it (its MAC checks
        against intake's key), else None: an entry edited in the store counts as absent."""
        integration, customer = doc.get("integration"), doc.get("customer")
        account, version = doc.get("account_id"), doc.get("version")
        if not (isinstance(integration, str) and isinstance(customer, str)
                and isinstance(account, str) and isinstance(version, int)):
            return None
        ok = self._key_source().mac_ok(doc.get("mac"), "account-map", integration, customer,
                                       account, str(version))
        return account if ok else None

    async def account_of(self, integration: str, customer: str) -> str | None:
        """The provider account ``customer`` of ``integration`` is, or None (unmapped, or
        an entry not written by ``intervene accounts import``)."""
        key = _doc_id(integration, customer)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < CACHE_TTL_S:
            return cached[1]
        # One read per key however many requests of a batch ask at the same moment (a
        # consumer hands a batch's tickets, often of one customer, to handlers at once).
        pending = self._reading.get(key)
        if pending is None:
            pending = self._reading[key] = asyncio.ensure_future(self._read(key, integration,
                                                                             customer))
            pending.add_done_callback(lambda _: self._reading.pop(key, None))
        return await asyncio.shield(pending)

    async def _read(self, key: str, integration: str, customer: str) -> str | None:
        doc = await self._collection.find_one({"_id": key})
        account = None
        if doc is not None and (doc.get("integration"), doc.get("customer")) == (
                integration, customer):
            account = self._verified(doc)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), account)
        return account

    async def resolve(self, integration: str, customers: Sequence[str]
                      ) -> tuple[str, str] | None:
        """The first of ``customers`` (most specific first) that is mapped, with its account."""
        for customer in customers:
            if valid_customer(customer) and (
                    account := await self.account_of(integration, customer)) is not None:
                return customer, account
        return None

    async def accounts_for(self, integration: str) -> set[str]:
        """Every account ``integration`` may act for (its map's verified entries)."""
        accounts: set[str] = set()
        async for doc in self._collection.find({"integration": integration}):
            if (account := self._verified(doc)) is not None:
                accounts.add(account)
        return accounts

    async def entries(self, integration: str) -> list[dict[str, Any]]:
        found = []
        async for doc in self._collection.find({"integration": integration}).sort("_id", 1):
            found.append({k: doc.get(k) for k in ("customer", "account_id", "version",
                                                  "imported_at")})
        return found

    async def upsert(self, integration: str, rows: Sequence[Mapping], *,
                     now: datetime | None = None) -> ImportSummary:
        """Write ``rows`` for ``integration`` under a new import version."""
        at = now or datetime.now(UTC)
        version = int(at.timestamp() * 1000)
        created = updated = unchanged = 0
        for row in rows:
            key = _doc_id(integration, row.customer)
            existing = await self._collection.find_one({"_id": key})
            if existing is not None and self._verified(existing) == row.account_id:
                unchanged += 1
                continue
            doc = {"_id": key, "integration": integration, "customer": row.customer,
                   "account_id": row.account_id, "version": version, "imported_at": at,
                   "mac": self._mac(integration, row.customer, row.account_id, version)}
            if existing is None:
                try:
                    await self._collection.insert_one(doc)
                except DuplicateKeyError:  # a concurrent import wrote it first: ours stands
                    await self._collection.replace_one({"_id": key}, doc)
                created += 1
            else:
                await self._collection.replace_one({"_id": key}, doc)
                updated += 1
            self._cache.pop(key, None)
        return ImportSummary(version=version, created=created, updated=updated,
                             unchanged=unchanged)
