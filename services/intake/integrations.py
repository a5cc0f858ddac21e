"""The helpdesk integrations the provider registered: who may call intake, and how to check.

An integration is one helpdesk installation (a Zammad, a WHMCS, the provider's own portal)
that submits tickets for the customers it authenticates. ``intervene integrations add NAME
--kind api|zammad|whmcs --scopes submit,read`` registers it and prints its secret once;
``rotate`` issues a new secret (the previous one stays valid for a grace period, so the
helpdesk can be reconfigured without a gap), ``revoke`` ends it, ``list`` shows them.

What is stored (``intake_integrations``, ``_id`` = name): the public facts (kind, scopes,
status, the secret's SHA-256 fingerprint) for listing, and ``sealed``: the same facts with
the secret(s), encrypted and authenticated (XSalsa20-Poly1305, PyNaCl's ``SecretBox``) under
intake's integration key (``intake-integrations.key`` in the keys directory, mode 0600).
Request signatures are HMACs, so intake must hold the secret itself; a database reader
learns only fingerprints, and a database writer can neither add an integration, widen its
scopes nor change its secret without that key file. Only the sealed copy is trusted.

Pure apart from :class:`IntegrationRegistry` (the store) and the key file helpers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, get_args

import nacl.exceptions
import nacl.secret
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.runtime.keys import (
    KeyFileError,
    _check_private_permissions,
    _write_atomically,
    default_keys_dir,
)

COLLECTION: Final = "intake_integrations"
KEY_FILE: Final = "intake-integrations.key"
KEY_ALGORITHM: Final = "xsalsa20poly1305-secretbox"
SECRET_PREFIX: Final = "osi_"  # noqa: S105 - a prefix, not a secret
NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DEFAULT_GRACE: Final = timedelta(hours=24)
CACHE_TTL_S: Final = 5.0
"""How long a process trusts what it read of an integration: a revocation or rotation
takes effect everywhere within this time, and a burst costs one store read per integration."""

Kind = Literal["api", "zammad", "whmcs"]
Scope = Literal["submit", "read"]
KINDS: Final[tuple[str, ...]] = get_args(Kind)
SCOPES: Final[tuple[str, ...]] = get_args(Scope)


class IntegrationError(ValueError):
    """An operator's request about integrations that cannot be done (named, with why)."""


# --- the key ---------------------------------------------------------------------------


class IntegrationKey:
    """Intake's own symmetric key: seals integration records and MACs the account map."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != nacl.secret.SecretBox.KEY_SIZE:
            raise KeyFileError(f"an integration key has {nacl.secret.SecretBox.KEY_SIZE} bytes")
        self._raw = raw
        self._box = nacl.secret.SecretBox(raw)
        self._mac_key = hashlib.blake2b(raw, person=b"osi-map-mac", digest_size=32).digest()

    @classmethod
    def generate(cls) -> IntegrationKey:
        return cls(secrets.token_bytes(nacl.secret.SecretBox.KEY_SIZE))

    def seal(self, document: dict[str, Any]) -> str:
        plain = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        return base64.b64encode(bytes(self._box.encrypt(plain))).decode("ascii")

    def open(self, sealed: str) -> dict[str, Any] | None:
        """The sealed document, or None when it was not sealed with this key (tampered)."""
        try:
            plain = self._box.decrypt(base64.b64decode(sealed, validate=True))
        except (binascii.Error, ValueError, nacl.exceptions.CryptoError):
            return None
        value = json.loads(plain)
        return value if isinstance(value, dict) else None

    def mac(self, *parts: str) -> str:
        return hmac.new(self._mac_key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def mac_ok(self, given: object, *parts: str) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given, self.mac(*parts))


KeySource = Callable[[], IntegrationKey]
"""Where the registry and the account map get the key: read once, when first needed."""


class IntegrationKeyFile:
    """The key file of a keys directory, read on first use (construction does no I/O)."""

    def __init__(self, keys_dir: Path, *, create: bool = False) -> None:
        self.keys_dir = keys_dir
        self._create = create
        self._key: IntegrationKey | None = None

    def __call__(self) -> IntegrationKey:
        if self._key is None:
            self._key = load_integration_key(self.keys_dir, create=self._create)
        return self._key


def key_path(keys_dir: Path) -> Path:
    return keys_dir / KEY_FILE


def load_integration_key(keys_dir: Path, *, create: bool = False) -> IntegrationKey:
    """Intake's integration key from ``keys_dir``; with ``create``, made when missing.

    Private: a file readable by group or others is refused, like every private key here.
    """
    path = key_path(keys_dir)
    if not path.exists():
        if not create:
            raise KeyFileError(f"{path} is missing: create it with `intervene integrations "
                               "add` (or `intervene keys init`), or mount intake's key")
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = IntegrationKey.generate()
        _write_atomically(path, {"algorithm": KEY_ALGORITHM,
                                 "key": base64.b64encode(key._raw).decode()}, 0o600)
        return key
    _check_private_permissions(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("algorithm") != KEY_ALGORITHM:
            raise KeyFileError(f"{path}: algorithm must be {KEY_ALGORITHM}")
        return IntegrationKey(base64.b64decode(document["key"], validate=True))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise KeyFileError(f"{path}: not an integration key file ({type(exc).__name__})") \
            from None


# --- integrations ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Secret:
    value: str = field(repr=False)
    valid_until: datetime | None = None  # set on the previous secret after a rotation

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, kw_only=True)
class Integration:
    name: str
    kind: Kind
    scopes: frozenset[str]
    status: Literal["active", "revoked"]
    created_at: datetime
    secrets: tuple[Secret, ...] = field(repr=False)

    def valid_secrets(self, now: datetime) -> list[str]:
        """The secrets a signature may be made with at ``now`` (the current one first)."""
        if self.status != "active":
            return []
        return [s.value for s in self.secrets if s.valid_until is None or now < s.valid_until]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "scopes": sorted(self.scopes),
                "status": self.status, "created_at": self.created_at.isoformat(),
                "fingerprints": [s.fingerprint for s in self.secrets]}

    def _sealable(self) -> dict[str, Any]:
        return {**self.public(), "secrets": [
            {"value": s.value, "valid_until": s.valid_until.isoformat() if s.valid_until
             else None} for s in self.secrets]}

    @classmethod
    def _from_sealed(cls, name: str, sealed: dict[str, Any]) -> Integration | None:
        if sealed.get("name") != name:  # a record copied under another name
            return None
        return cls(
            name=name, kind=sealed["kind"], scopes=frozenset(sealed["scopes"]),
            status=sealed["status"], created_at=datetime.fromisoformat(sealed["created_at"]),
            secrets=tuple(Secret(value=s["value"], valid_until=(
                datetime.fromisoformat(s["valid_until"]) if s["valid_until"] else None))
                for s in sealed["secrets"]),
        )


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise IntegrationError(f"scopes must be a comma-separated list of {', '.join(SCOPES)}"
                               + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return scopes


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise IntegrationError("an integration name is 1-64 lower-case letters, digits, '.', "
                               "'_' or '-', starting with a letter or digit")
    return name


class IntegrationRegistry:
    """The registered integrations, in the store; reads cached for :data:`CACHE_TTL_S`."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], key: KeySource, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._collection = db[COLLECTION]
        self._key_source = key
        self._clock = clock
        self._cache: dict[str, tuple[float, Integration | None]] = {}

    async def get(self, name: str) -> Integration | None:
        """The integration named ``name`` as its sealed record says, or None (unknown, or
        a record that was not sealed with intake's key: treated as absent)."""
        cached = self._cache.get(name)
        if cached is not None and self._clock() - cached[0] < CACHE_TTL_S:
            return cached[1]
        doc = await self._collection.find_one({"_id": name})
        integration = None
        if doc is not None and isinstance(sealed := doc.get("sealed"), str):
            opened = self._key_source().open(sealed)
            integration = Integration._from_sealed(name, opened) if opened else None
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[name] = (self._clock(), integration)
        return integration

    async def add(self, name: str, *, kind: str, scopes: Iterable[str],
                  now: datetime | None = None) -> tuple[Integration, str]:
        """Register ``name``; returns it and its secret (shown once, never stored clear)."""
        check_name(name)
        if kind not in KINDS:
            raise IntegrationError(f"kind must be one of {', '.join(KINDS)}")
        secret = new_secret()
        integration = Integration(
            name=name, kind=kind,  # type: ignore[arg-type]  # checked against KINDS above
            scopes=frozenset(scopes), status="active",
            created_at=(now or datetime.now(UTC)).replace(microsecond=0),
            secrets=(Secret(value=secret),))
        try:
            await self._collection.insert_one(self._document(integration))
        except DuplicateKeyError:
            raise IntegrationError(f"integration {name!r} exists already; use `rotate` for a "
                                   "new secret or `revoke` to end it") from None
        return integration, secret

    async def rotate(self, name: str, *, grace: timedelta = DEFAULT_GRACE,
                     now: datetime | None = None) -> tuple[Integration, str]:
        """A new secret for ``name``; the current one stays valid for ``grace``."""
        current = await self._require(name)
        if current.status != "active":
            raise IntegrationError(f"integration {name!r} is revoked; add a new one")
        at = now or datetime.now(UTC)
        secret = new_secret()
        kept = tuple(replace(s, valid_until=at + grace) for s in current.secrets
                     if s.valid_until is None and grace > timedelta(0))
        rotated = replace(current, secrets=(Secret(value=secret), *kept))
        await self._collection.replace_one({"_id": name}, self._document(rotated))
        self._cache.pop(name, None)
        return rotated, secret

    async def revoke(self, name: str) -> Integration:
        current = await self._require(name)
        revoked = replace(current, status="revoked")
        await self._collection.replace_one({"_id": name}, self._document(revoked))
        self._cache.pop(name, None)
        return revoked

    async def list(self) -> Sequence[Integration]:
        found: list[Integration] = []
        async for doc in self._collection.find({}).sort("_id", 1):
            if isinstance(sealed := doc.get("sealed"), str) and (
                    opened := self._key_source().open(sealed)) is not None:
                integration = Integration._from_sealed(str(doc["_id"]), opened)
                if integration is not None:
                    found.append(integration)
        return found

    async def _require(self, name: str) -> Integration:
        self._cache.pop(name, None)
        integration = await self.get(name)
        if integration is None:
            raise IntegrationError(f"no integration named {name!r} (see `intervene "
                                   "integrations list`)")
        return integration

    def _document(self, integration: Integration) -> dict[str, Any]:
        return {"_id": integration.name, **integration.public(),
                "sealed": self._key_source().seal(integration._sealable())}


def keys_dir_of(configured: str | None) -> Path:
    return Path(configured).expanduser() if configured else default_keys_dir()


def env_keys_dir() -> Path:
    return keys_dir_of(os.environ.get("INTERVENTION_KEYS_DIR"))
