"""The customer credential vault: where a newly generated password goes, sealed to the customer.

The procedure says new credentials go to the customer's account area, never into the
ticket. The vault holds them sealed (X25519 sealed box) to a public key the customer's
account area registered; only that area's private key opens them, so neither the
executor nor anyone reading MongoDB can read a password once it is deposited.

Deposits are versioned: a deposit starts ``pending`` (written before the server is
changed), becomes ``active`` once the server has the password, and supersedes the previous
active one for the same server account; a deposit whose change failed is ``discarded``. A
crash between the change and the activation leaves a pending deposit that the resumed run
replaces by a fresh one — the customer only ever sees active deposits.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase

from schemas.values import SealedSecret
from services.runtime.crypto import PrivateSealingKey, PublicSealingKey, open_text, seal_text


@dataclass(frozen=True, kw_only=True)
class DepositTarget:
    account_id: str
    ticket_id: str
    revision: int
    service_id: str


class CustomerCredentialVault(Protocol):
    async def key_for(self, account_id: str) -> PublicSealingKey | None: ...

    async def deposit(self, deposit_id: str, target: DepositTarget, *, username: str,
                      secret: str) -> None: ...

    async def activate(self, deposit_id: str) -> None: ...

    async def discard(self, deposit_id: str) -> None: ...


class MongoCredentialVault:
    """Keys in ``customer_vault_keys`` (``_id`` = account id), deposits in
    ``customer_credentials`` (``_id`` = deposit id)."""

    KEYS = "customer_vault_keys"
    DEPOSITS = "customer_credentials"

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._keys = db[self.KEYS]
        self._deposits = db[self.DEPOSITS]

    async def register_key(self, account_id: str, key: PublicSealingKey) -> None:
        """The account area's public key (it keeps the private half)."""
        await self._keys.replace_one(
            {"_id": account_id},
            {"_id": account_id, "key_id": key.key_id,
             "public_key": base64.b64encode(key.public_key).decode("ascii"),
             "registered_at": datetime.now(UTC)},
            upsert=True)

    async def key_for(self, account_id: str) -> PublicSealingKey | None:
        doc = await self._keys.find_one({"_id": account_id})
        if doc is None:
            return None
        return PublicSealingKey(key_id=str(doc["key_id"]),
                                public_key=base64.b64decode(str(doc["public_key"])))

    async def deposit(self, deposit_id: str, target: DepositTarget, *, username: str,
                      secret: str) -> None:
        key = await self.key_for(target.account_id)
        if key is None:
            raise LookupError(f"account {target.account_id} has no vault key registered")
        sealed = seal_text(secret, key)
        await self._deposits.replace_one({"_id": deposit_id}, {
            "_id": deposit_id, "account_id": target.account_id, "ticket_id": target.ticket_id,
            "revision": target.revision, "service_id": target.service_id, "username": username,
            "sealed": sealed.model_dump(), "status": "pending", "created_at": datetime.now(UTC),
        }, upsert=True)

    async def activate(self, deposit_id: str) -> None:
        doc = await self._deposits.find_one({"_id": deposit_id})
        if doc is None:
            raise LookupError(f"no credential deposit {deposit_id}")
        now = datetime.now(UTC)
        # Older active deposits for the same server account are superseded. This scans the
        # account's deposits, which happens once per password reset: not a hot path.
        await self._deposits.update_many(
            {"account_id": doc["account_id"], "service_id": doc["service_id"],
             "username": doc["username"], "status": "active", "_id": {"$ne": deposit_id}},
            {"$set": {"status": "superseded", "superseded_at": now}})
        await self._deposits.update_one({"_id": deposit_id},
                                        {"$set": {"status": "active", "activated_at": now}})

    async def discard(self, deposit_id: str) -> None:
        await self._deposits.update_one({"_id": deposit_id, "status": "pending"},
                                        {"$set": {"status": "discarded"}})

    async def active(self, account_id: str, service_id: str, username: str
                     ) -> list[dict[str, Any]]:
        """Active deposits (sealed) — what the customer's account area shows."""
        cursor = self._deposits.find({"account_id": account_id, "service_id": service_id,
                                      "username": username, "status": "active"})
        return [doc async for doc in cursor]


def open_deposit(doc: dict[str, Any], key: PrivateSealingKey) -> str:
    """What the customer's account area does with its private key (and tests, to check)."""
    return open_text(SealedSecret.model_validate(doc["sealed"]), {key.key_id: key})


@dataclass(frozen=True, kw_only=True)
class VaultIssuer:
    """The engine's :class:`~services.executor.runbooks.engine.CredentialIssuer` for one run."""

    vault: CustomerCredentialVault
    target: DepositTarget
    claim_id: str
    attempt: int

    async def unavailable(self) -> str | None:
        if await self.vault.key_for(self.target.account_id) is None:
            return (f"account {self.target.account_id} has no credential vault key, so a new "
                    "password could not be delivered safely; nothing was changed")
        return None

    async def deposit(self, *, step_key: str, account: str, secret: str) -> str:
        deposit_id = f"{self.claim_id}:{step_key}:{self.attempt}"
        await self.vault.deposit(deposit_id, self.target, username=account, secret=secret)
        return deposit_id

    async def activate(self, deposit_id: str) -> None:
        await self.vault.activate(deposit_id)

    async def discard(self, deposit_id: str) -> None:
        await self.vault.discard(deposit_id)
