"""Trust at intake's edge: who is calling, for which account, and may they touch this ticket.

Every door (``POST /v1/tickets``, ``GET /v1/tickets/{id}``, the Zammad and WHMCS webhooks,
the helpdesk topic) passes :class:`EdgeGuard` before a request reaches the intake use case:

1. **Authenticate** the integration: its signature (:mod:`services.intake.signing`) over
   method, path, timestamp, acting customer and body, with one of its valid secrets; over
   HTTP the timestamp within ±5 min, and each signature accepted once: the insert of
   ``_id`` = the signature's digest into ``intake_request_replays_<n>`` wins, ``n`` being the
   signed timestamp's 10-minute period (twice the window), so every copy of a signature
   meets in one collection, and a period's collection is dropped whole once no timestamp in
   it can be fresh (no per-entry prune scanning the collection). Then the scope the door
   needs (``submit``/``read``).
2. **The account** is the integration's mapping of the helpdesk's authenticated customer
   (:mod:`services.intake.accounts`); a stated account that differs is refused
   (``account_mismatch``), never replaced, and an unmapped customer is refused.
3. **The ticket belongs** to the integration and account of its first revision
   (``intake_ticket_owners``, ``_id`` = ticket id, the first insert wins; the same insert
   records that revision as the ticket's latest, :mod:`services.intake.store`); a later
   revision from anyone else is refused.

Webhook bodies already delivered (``intake_webhook_bodies``, Zammad's replay check) are
kept for 8 days: deleted at most once an hour per process.

Refusals are :class:`EdgeRefusal` (HTTP status, field, code, message) and are audited with
the integration and the source address - never a header value that could be a secret.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.intake import signing
from services.intake.accounts import AccountMap
from services.intake.integrations import Integration, IntegrationRegistry
from services.intake.store import OWNERS
from services.runtime.audit import AuditLog
from services.runtime.group_commit import GroupInsert
from services.runtime.store_ops import drop_partitions

log = logging.getLogger("intervention.intake.edge")

REPLAYS: Final = "intake_request_replays"
"""The legacy single collection; now the prefix of the per-period ones (dropped if found)."""
REPLAY_PERIOD_S: Final = 2 * signing.WINDOW_S
WEBHOOK_BODIES: Final = "intake_webhook_bodies"
EDGE_CHAIN_PREFIX: Final = "intake-edge-"
"""Refusals that name no ticket are audited on one chain per day: ``intake-edge-YYYYMMDD``."""
WEBHOOK_BODY_RETENTION: Final = timedelta(days=8)


def _period(suffix: str) -> int | None:
    """The replay period a collection's suffix names, None for any other collection."""
    return int(suffix) if suffix.isdigit() else None


class EdgeRefusal(Exception):
    def __init__(self, status: int, code: str, message: str, *, field: str = "$") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Caller:
    """An authenticated integration, and the customer it says it acts for (if any)."""

    integration: Integration
    customer: str

    @property
    def name(self) -> str:
        return self.integration.name


@dataclass(frozen=True, kw_only=True)
class Owner:
    integration: str
    account_id: str


class EdgeGuard:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], registry: IntegrationRegistry,
                 accounts: AccountMap, audit: AuditLog) -> None:
        self.registry = registry
        self.accounts = accounts
        self._audit = audit
        self._db = db
        self._owners = db[OWNERS]
        self._owner_inserts = GroupInsert(self._owners)  # a batch's tickets share round trips
        self._bodies = db[WEBHOOK_BODIES]
        self._swept_period: int | None = None
        self._bodies_pruned_at: datetime | None = None

    # -- 1. who is calling --------------------------------------------------------------

    async def authenticate(self, headers: Mapping[str, str], *, method: str, path: str,
                           body: bytes, scope: str, now: datetime, fresh: bool = True,
                           kind: str | None = None) -> Caller:
        """The integration that signed this request, checked for ``scope`` (401/403).

        ``fresh`` (HTTP): the timestamp must be within the window and the signature unused.
        ``kind``: the door accepts only integrations of this kind (a Zammad's secret cannot
        sign WHMCS deliveries).
        """
        try:
            signed = signing.read_headers(headers)
            if fresh:
                signing.check_fresh(signed, now=now.timestamp())
        except signing.SignatureRefused as exc:
            raise EdgeRefusal(401, exc.code, str(exc), field=exc.field) from None
        integration = await self.registry.get(signed.integration)
        secrets = integration.valid_secrets(now) if integration is not None else []
        for secret in secrets:
            try:
                signing.verify(signed, secret, method=method, path=path, body=body)
                break
            except signing.SignatureRefused:
                continue
        else:
            # One answer for unknown, revoked and wrong: no oracle for integration names.
            raise EdgeRefusal(401, "bad_signature", "the signature does not verify for this "
                              "request with a registered integration's secret",
                              field=signing.HEADER_SIGNATURE)
        assert integration is not None
        self._admit(integration, kind=kind, scope=scope)
        if fresh:
            await self.admit_once(signed.replay_key, int(signed.timestamp), now)
        return Caller(integration=integration, customer=signed.customer)

    async def admit_once(self, replay_key: str, signed_at: int, now: datetime) -> None:
        """Refuse (401 ``replayed``) a signature seen before; ``signed_at``: its timestamp."""
        await self._sweep_replays(now)
        # Partitioned by the *signed* timestamp: a replayed signature carries the same one,
        # so it lands in the same collection, which lives while that timestamp is fresh.
        period = signed_at // REPLAY_PERIOD_S
        try:
            await self._db[f"{REPLAYS}_{period}"].insert_one({"_id": replay_key, "at": now})
        except DuplicateKeyError:
            raise EdgeRefusal(401, "replayed", "this signed request was received before; "
                              "use a new nonce for every request, retries included",
                              field=signing.HEADER_NONCE) \
                from None

    async def _sweep_replays(self, now: datetime) -> None:
        """Once per period per process: drop the replay collections of periods whose every
        timestamp is past the freshness window (and the legacy single collection)."""
        current = int(now.timestamp()) // REPLAY_PERIOD_S
        if self._swept_period == current:
            return
        self._swept_period = current
        # Period p holds timestamps up to (p + 1) * period, fresh until window_s after; one
        # more period is kept for the clocks of other intake replicas, which may run behind.
        fresh_from = (int(now.timestamp()) - signing.WINDOW_S) // REPLAY_PERIOD_S - 1
        try:
            await drop_partitions(self._db, REPLAYS, _period, fresh_from)
            await self._db.drop_collection(REPLAYS)  # the legacy single collection
        except Exception:  # noqa: BLE001 - housekeeping; the next period tries again
            log.warning("could not drop intake's expired replay records")

    async def _prune_bodies(self, now: datetime) -> None:
        if (self._bodies_pruned_at is not None
                and now - self._bodies_pruned_at < timedelta(hours=1)):
            return
        self._bodies_pruned_at = now
        try:
            await self._bodies.delete_many({"at": {"$lt": now - WEBHOOK_BODY_RETENTION}})
        except Exception:  # noqa: BLE001 - housekeeping; the next hour tries again
            log.warning("could not prune intake's webhook body records")

    async def authenticate_webhook(self, integration_name: str, *, kind: str, scope: str,
                                   verify: Any, body: bytes, header: str | None,
                                   now: datetime) -> Caller:
        """A helpdesk that can only sign the body (Zammad: HMAC-SHA1 with a static token):
        the integration is named by the URL and ``verify(body, header, secret)`` checks."""
        integration = await self.registry.get(integration_name)
        secrets = integration.valid_secrets(now) if integration is not None else []
        for secret in secrets:
            try:
                verify(body, header, secret.encode())
                break
            except Exception:  # noqa: BLE001, S112 - the adapter's mismatch: try the next secret
                continue
        else:
            raise EdgeRefusal(401, "bad_signature", "the webhook signature does not verify "
                              "with this integration's secret", field="X-Hub-Signature")
        assert integration is not None
        self._admit(integration, kind=kind, scope=scope)
        return Caller(integration=integration, customer="")

    @staticmethod
    def _admit(integration: Integration, *, kind: str | None, scope: str) -> None:
        """The door's kind (a Zammad's secret cannot sign WHMCS deliveries) and scope."""
        if kind is not None and integration.kind != kind:
            raise EdgeRefusal(403, "wrong_integration_kind", f"integration {integration.name}"
                              f" is registered for {integration.kind}, not {kind}")
        if not integration.allows(scope):
            raise EdgeRefusal(403, "missing_scope", f"integration {integration.name} lacks "
                              f"the {scope!r} scope (`intervene integrations` grants scopes)")

    async def first_delivery(self, caller: Caller, body: bytes, delivery: str,
                             now: datetime) -> None:
        """Refuse a body already delivered under another delivery id (a replay that would
        otherwise be given a new revision); the same delivery again is a retry, fine."""
        await self._prune_bodies(now)
        key = f"{caller.name}:{hashlib.sha256(body).hexdigest()}"
        try:
            await self._bodies.insert_one({"_id": key, "delivery": delivery, "at": now})
            return
        except DuplicateKeyError:
            pass
        first = await self._bodies.find_one({"_id": key})
        if first is not None and first.get("delivery") != delivery:
            raise EdgeRefusal(409, "replayed_delivery", "this exact delivery body was "
                              "received before under another delivery id; nothing was done",
                              field="X-Zammad-Delivery")

    # -- 2. for which account -----------------------------------------------------------

    async def account_for(self, caller: Caller, customers: Sequence[str],
                          stated: str | None) -> tuple[str, str]:
        """The mapped (customer, account) of the first mapped customer identity."""
        resolved = await self.accounts.resolve(caller.name, customers)
        if resolved is None:
            raise EdgeRefusal(403, "customer_unmapped", "the helpdesk customer is not in "
                              f"integration {caller.name}'s account map (`intervene accounts "
                              "import`)", field="account_id")
        customer, account = resolved
        if stated is not None and stated != account:
            raise EdgeRefusal(422, "account_mismatch", "is not the account of the "
                              "authenticated customer; the account comes from the "
                              "helpdesk's login", field="account_id")
        return customer, account

    # -- 3. whose ticket ------------------------------------------------------------------

    async def owner(self, ticket_id: str) -> Owner | None:
        doc = await self._owners.find_one({"_id": ticket_id})
        if doc is None:
            return None
        return Owner(integration=str(doc.get("integration")),
                     account_id=str(doc.get("account_id")))

    async def take_ticket(self, caller: Caller, ticket_id: str, account_id: str,
                          now: datetime, *, revision: int) -> bool:
        """Bind ``ticket_id`` to this integration and account, or check it is theirs. True
        when this request bound it: its ``revision`` is then recorded as the ticket's latest
        in the same insert (:mod:`services.intake.store`), and there is nothing before it."""
        try:
            await self._owner_inserts.insert({"_id": ticket_id, "integration": caller.name,
                                           "account_id": account_id, "at": now,
                                           "latest": revision})
            return True
        except DuplicateKeyError:
            pass
        owner = await self.owner(ticket_id)
        if owner != Owner(integration=caller.name, account_id=account_id):
            raise EdgeRefusal(403, "ticket_not_yours", "this ticket number belongs to "
                              "another helpdesk account; open a new ticket",
                              field="ticket_id")
        return False

    async def may_read(self, caller: Caller, ticket_id: str) -> bool:
        owner = await self.owner(ticket_id)
        if owner is None:
            return False
        if owner.integration == caller.name:
            return True
        return owner.account_id in await self.accounts.accounts_for(caller.name)

    # -- the audit of refusals ----------------------------------------------------------

    async def audit_refusal(self, refusal: EdgeRefusal, *, door: str, source: str,
                            integration: str | None, ticket_id: str | None,
                            now: datetime | None = None) -> None:
        at = now or datetime.now(UTC)
        chain = ticket_id or f"{EDGE_CHAIN_PREFIX}{at:%Y%m%d}"
        try:
            await self._audit.append(
                chain, record_id=f"intake:edge-refused:{uuid.uuid4()}", kind="intake.refused",
                actor="intake",
                data={"reason": refusal.code, "status": refusal.status, "door": door,
                      "integration": integration, "source_address": source,
                      "field": refusal.field},
            )
        except Exception:  # the refusal stands; the log keeps the fact
            log.exception("could not audit a refused request (%s from %s)", refusal.code,
                          source)
