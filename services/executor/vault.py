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

Keys. Whoever holds the vault key of an account receives that account's new root passwords,
so the key document cannot be trusted for being in the store: registering or replacing one
is an operator's action (``intervene executor vault-key register``), signed with the
operator key (``operator-signing.key`` in the keys directory, which the executor only holds
the public half of) over ``b"intervention-vault-key:v1:"`` + canonical JSON of the account,
key id, public key, registration time and operator. The registration is audited. The
executor seals a password only to a key whose signature holds and that was registered no
later than the ticket's verdict was issued: a key swapped in after a ticket was verified
(even by an operator) does not receive that ticket's password. The previous registration
is kept (signed, one level) so a ticket verified before a legitimate replacement still uses
the key that was current then. A key document that fails these checks is refused (audited
by the run, nothing sealed to it, the step changes nothing).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pymongo.asynchronous.database import AsyncDatabase

from schemas.canonical import canonical_json
from schemas.values import SealedSecret, Signature
from services.runtime.crypto import (
    PrivateSealingKey,
    PublicSealingKey,
    SignatureError,
    SigningKey,
    VerifyKey,
    open_text,
    seal_text,
    sign,
    verify,
)

VAULT_KEY_CONTEXT = b"intervention-vault-key:v1:"
_SIGNED = ("account_id", "key_id", "public_key", "registered_at", "operator")


class VaultKeyRefused(Exception):
    """The account's key document is not an operator's registration valid for this ticket."""


def _registered_at(value: Any) -> datetime:
    at = datetime.fromisoformat(str(value))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _message(doc: Mapping[str, Any]) -> bytes:
    return VAULT_KEY_CONTEXT + canonical_json({k: doc.get(k) for k in _SIGNED})


def signed_registration(account_id: str, key: PublicSealingKey, *, operator: str,
                        operator_key: SigningKey, at: datetime | None = None,
                        ) -> dict[str, Any]:
    """A key registration as the operator's command writes it (without ``previous``)."""
    when = (at or datetime.now(UTC)).astimezone(UTC)
    doc: dict[str, Any] = {
        "account_id": account_id, "key_id": key.key_id,
        "public_key": base64.b64encode(key.public_key).decode("ascii"),
        # Text, at millisecond precision: what is signed survives the store unchanged.
        "registered_at": when.replace(microsecond=when.microsecond // 1000 * 1000).isoformat(),
        "operator": operator}
    signature = sign(_message(doc), operator_key)
    return {**doc, "signature": {"key_id": signature.key_id, "value": signature.value}}


def checked_key(doc: Mapping[str, Any], account_id: str,
                operator_keys: Mapping[str, VerifyKey]) -> tuple[PublicSealingKey, datetime]:
    """The key and its registration time, if ``doc`` is an operator's registration for
    ``account_id``; VaultKeyRefused says why not."""
    seal = doc.get("signature")
    if not isinstance(seal, Mapping) or not seal.get("value"):
        raise VaultKeyRefused(f"the vault key of account {account_id} is not signed by an "
                              "operator")
    if doc.get("account_id") != account_id:
        raise VaultKeyRefused(f"the vault key stored for account {account_id} was "
                              f"registered for {doc.get('account_id')!r}")
    try:
        verify(_message(doc), Signature(algorithm="ed25519", key_id=str(seal.get("key_id")),
                                        value=str(seal["value"])), operator_keys)
        key = PublicSealingKey(key_id=str(doc["key_id"]),
                               public_key=base64.b64decode(str(doc["public_key"])))
        return key, _registered_at(doc["registered_at"])
    except SignatureError as exc:
        raise VaultKeyRefused(f"the vault key of account {account_id}: operator signature "
                              f"{exc.reason.replace('_', ' ')}") from None
    except (ValueError, KeyError) as exc:
        raise VaultKeyRefused(f"the vault key of account {account_id} is malformed "
                              f"({type(exc).__name__})") from None


@dataclass(frozen=True, kw_only=True)
class DepositTarget:
    account_id: str
    ticket_id: str
    revision: int
    service_id: str
    verified_at: datetime  # when auth issued the verdict: later key registrations do not count


class CustomerCredentialVault(Protocol):
    async def key_for(self, account_id: str, *, verified_at: datetime,
                      ) -> PublicSealingKey | None: ...

    async def deposit(self, deposit_id: str, target: DepositTarget, *, username: str,
                      secret: str) -> None: ...

    async def activate(self, deposit_id: str) -> None: ...

    async def discard(self, deposit_id: str) -> None: ...


class MongoCredentialVault:
    """Keys in ``customer_vault_keys`` (``_id`` = account id), deposits in
    ``customer_credentials`` (``_id`` = deposit id)."""

    KEYS = "customer_vault_keys"
    DEPOSITS = "customer_credentials"

    def __init__(self, db: AsyncDatabase[dict[str, Any]],
                 operator_keys: Mapping[str, VerifyKey] | None = None) -> None:
        self._keys = db[self.KEYS]
        self._deposits = db[self.DEPOSITS]
        # The operators' public keys: only their registrations count (none: no key does).
        self._operator_keys = dict(operator_keys or {})

    async def register_key(self, account_id: str, key: PublicSealingKey, *,
                           operator_key: SigningKey, operator: str,
                           at: datetime | None = None) -> dict[str, Any]:
        """Register (or replace) the account area's public key, signed by an operator; the
        registration it replaces is kept as ``previous``. Returns the registration."""
        registration = signed_registration(account_id, key, operator=operator,
                                           operator_key=operator_key, at=at)
        current = await self._keys.find_one({"_id": account_id})
        previous = ({k: v for k, v in current.items() if k not in ("_id", "previous")}
                    if current is not None else None)
        await self._keys.replace_one(
            {"_id": account_id}, {"_id": account_id, **registration, "previous": previous},
            upsert=True)
        return registration

    async def key_for(self, account_id: str, *, verified_at: datetime,
                      ) -> PublicSealingKey | None:
        """The key to seal a password for a ticket verified at ``verified_at``: the newest
        operator-signed registration no later than that. None when the account has none;
        VaultKeyRefused when its document is not an operator's, or was registered only
        after the ticket was verified."""
        doc = await self._keys.find_one({"_id": account_id})
        if doc is None:
            return None
        for registration in (doc, doc.get("previous")):
            if not isinstance(registration, Mapping):
                continue
            key, at = checked_key(registration, account_id, self._operator_keys)
            if at <= verified_at:
                return key
        raise VaultKeyRefused(
            f"the vault key of account {account_id} was registered after this ticket was "
            f"verified ({verified_at.isoformat()}); it takes effect for later tickets")

    async def deposit(self, deposit_id: str, target: DepositTarget, *, username: str,
                      secret: str) -> None:
        key = await self.key_for(target.account_id, verified_at=target.verified_at)
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
    # Told (to audit it) when the account's key document is refused.
    on_refused: Callable[[str], Awaitable[None]] | None = None

    async def unavailable(self) -> str | None:
        try:
            key = await self.vault.key_for(self.target.account_id,
                                           verified_at=self.target.verified_at)
        except VaultKeyRefused as exc:
            if self.on_refused is not None:
                await self.on_refused(str(exc))
            return f"{exc}, so a new password could not be delivered safely; nothing was changed"
        if key is None:
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
