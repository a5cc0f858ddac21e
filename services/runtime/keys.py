"""Key files: the dev key set `intervene keys init` creates, and the loaders services use.

A key set is small JSON files in one directory::

    executor-sealing.key  {"key_id", "algorithm": "x25519-sealedbox", "private_key"}  0600
    executor-sealing.pub  {"key_id", "algorithm": "x25519-sealedbox", "public_key"}
    auth-signing.key      {"key_id", "algorithm": "ed25519", "private_key"}  0600
    auth-signing.pub      {"key_id", "algorithm": "ed25519", "public_key"}
    notifier-signing.key  {"key_id", "algorithm": "ed25519", "private_key"}  0600
    notifier-signing.pub  {"key_id", "algorithm": "ed25519", "public_key"}
    intake-signing.key    {"key_id", "algorithm": "ed25519", "private_key"}  0600
    intake-signing.pub    {"key_id", "algorithm": "ed25519", "public_key"}
    audit-<service>.key   {"key_id", "algorithm": "ed25519", "service", "private_key"}  0600
    audit-<service>.pub   {"key_id", "algorithm": "ed25519", "service", "public_key"}

one audit pair per service that writes the audit log (intake, auth, executor, notifier):
each service signs its own records with its ``.key``, and ``intervene audit verify`` checks
them against the ``.pub`` files, whose ``service`` must be the record's actor. A service's
database credential therefore cannot write records that pass as another's.

Keys are standard base64. An Ed25519 ``private_key`` is the 32-byte RFC 8032 seed. Who
reads what: intake and ``intervene seal`` the sealing ``.pub``; the executor the sealing
``.key`` (several, during a rotation), auth's signing ``.pub`` and the notifier's signing
``.pub`` (it checks the engineers' reports the notifier signs); auth its signing ``.key``; the
notifier its signing ``.key`` (and its ``.pub``, to check the facts it consumes back);
intake its signing ``.key`` (it signs every TicketSubmitted) and auth that ``.pub``.

Key ids are derived from the public key at creation (``exec-``/``auth-``/``notifier-``/
``intake-`` + 12 hex digits of its SHA-256), so re-reading a key always gives the same id.
Loaders accept any id that matches ``KEY_ID_PATTERN``, so an operator may name production
keys differently.

A private key file readable or writable by group or others is refused, as OpenSSH does:
on a shared host that is how a sealing key leaks.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.runtime.crypto import (
    SEALING_ALGORITHM,
    SIGNING_ALGORITHM,
    PrivateSealingKey,
    PublicSealingKey,
    SigningKey,
    VerifyKey,
    build_keyring,
)

__all__ = [
    "AUDIT_SERVICES",
    "INTAKE_SIGNING_PRIVATE_FILE",
    "INTAKE_SIGNING_PUBLIC_FILE",
    "KEYS_DIR_ENV",
    "NOTIFIER_SIGNING_PRIVATE_FILE",
    "NOTIFIER_SIGNING_PUBLIC_FILE",
    "OPERATOR_SIGNING_PRIVATE_FILE",
    "OPERATOR_SIGNING_PUBLIC_FILE",
    "SEALING_PRIVATE_FILE",
    "SEALING_PUBLIC_FILE",
    "SIGNING_PRIVATE_FILE",
    "SIGNING_PUBLIC_FILE",
    "KeyFileError",
    "KeyFileExistsError",
    "KeySetPaths",
    "audit_private_file",
    "audit_public_file",
    "default_keys_dir",
    "init_keys",
    "key_set_paths",
    "load_audit_signing_key",
    "load_audit_verify_keys",
    "load_sealing_keyring",
    "load_sealing_public",
    "load_signing_key",
    "load_verify_keys",
]

KEYS_DIR_ENV = "INTERVENTION_KEYS_DIR"

SEALING_PRIVATE_FILE = "executor-sealing.key"
SEALING_PUBLIC_FILE = "executor-sealing.pub"
SIGNING_PRIVATE_FILE = "auth-signing.key"
SIGNING_PUBLIC_FILE = "auth-signing.pub"
# The notifier signs the engineers' facts (acknowledgements, manual-step reports) it
# publishes; the executor acts on them only if they verify against this key's public half.
NOTIFIER_SIGNING_PRIVATE_FILE = "notifier-signing.key"
NOTIFIER_SIGNING_PUBLIC_FILE = "notifier-signing.pub"
# Intake signs every TicketSubmitted; auth decides only on a ticket that verifies.
INTAKE_SIGNING_PRIVATE_FILE = "intake-signing.key"
INTAKE_SIGNING_PUBLIC_FILE = "intake-signing.pub"
# An operator signs the registration of a customer's vault key (`intervene executor
# vault-key register`); the executor seals new passwords only to keys it signed. The private
# half stays with the operators (the executor needs only the public one).
OPERATOR_SIGNING_PRIVATE_FILE = "operator-signing.key"
OPERATOR_SIGNING_PUBLIC_FILE = "operator-signing.pub"
# Who signs the facts other services act on: (service, private file, public file).
FACT_SIGNERS: tuple[tuple[str, str, str], ...] = (
    ("notifier", NOTIFIER_SIGNING_PRIVATE_FILE, NOTIFIER_SIGNING_PUBLIC_FILE),
    ("intake", INTAKE_SIGNING_PRIVATE_FILE, INTAKE_SIGNING_PUBLIC_FILE),
    ("operator", OPERATOR_SIGNING_PRIVATE_FILE, OPERATOR_SIGNING_PUBLIC_FILE),
)
# The services that append to the audit log, each with its own audit signing key.
AUDIT_SERVICES: tuple[str, ...] = ("intake", "auth", "executor", "notifier")


def audit_private_file(service: str) -> str:
    return f"audit-{service}.key"


def audit_public_file(service: str) -> str:
    return f"audit-{service}.pub"

_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_DIR_MODE = 0o700
_T = TypeVar("_T")
_K = TypeVar("_K", PrivateSealingKey, VerifyKey)

_INIT_HINT = f"create a dev key set with `intervene keys init` or set {KEYS_DIR_ENV}"


class KeyFileError(Exception):
    """A key file is missing, malformed, of the wrong kind, or insecurely readable.

    Messages name the file and how to fix it, never the key material.
    """


class KeyFileExistsError(KeyFileError):
    """``init_keys`` found an existing key set and was not told to replace it."""


@dataclass(frozen=True, kw_only=True)
class KeySetPaths:
    directory: Path
    sealing_private: Path
    sealing_public: Path
    signing_private: Path
    signing_public: Path

    def audit_private(self, service: str) -> Path:
        return self.directory / audit_private_file(service)

    def audit_public(self, service: str) -> Path:
        return self.directory / audit_public_file(service)

    @property
    def notifier_signing_private(self) -> Path:
        return self.directory / NOTIFIER_SIGNING_PRIVATE_FILE

    @property
    def notifier_signing_public(self) -> Path:
        return self.directory / NOTIFIER_SIGNING_PUBLIC_FILE

    @property
    def intake_signing_private(self) -> Path:
        return self.directory / INTAKE_SIGNING_PRIVATE_FILE

    @property
    def intake_signing_public(self) -> Path:
        return self.directory / INTAKE_SIGNING_PUBLIC_FILE

    def audit_files(self) -> list[Path]:
        return [path for service in AUDIT_SERVICES
                for path in (self.audit_private(service), self.audit_public(service))]

    def added_files(self) -> list[Path]:
        """Keys added after the first four: per-service audit pairs and the fact signers'
        pairs (notifier, intake). ``init_keys`` adds any that are missing to an existing set."""
        return [*self.audit_files(), *(self.directory / name for _, private, public
                                       in FACT_SIGNERS for name in (private, public))]

    def all(self) -> tuple[Path, Path, Path, Path]:
        return (
            self.sealing_private,
            self.sealing_public,
            self.signing_private,
            self.signing_public,
        )


def default_keys_dir() -> Path:
    """``$INTERVENTION_KEYS_DIR``, else ``var/keys`` in the source checkout, else in the cwd.

    The checkout is found from this file, not the cwd, so every service and the CLI run
    from a checkout agree on one key set wherever they are started; an installed package
    (no ``pyproject.toml`` two levels up) falls back to the working directory.
    """
    configured = os.environ.get(KEYS_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    base = checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
    return base / "var" / "keys"


def key_set_paths(directory: Path) -> KeySetPaths:
    """Where the four files of the key set in ``directory`` live (nothing is touched)."""
    return KeySetPaths(
        directory=directory,
        sealing_private=directory / SEALING_PRIVATE_FILE,
        sealing_public=directory / SEALING_PUBLIC_FILE,
        signing_private=directory / SIGNING_PRIVATE_FILE,
        signing_public=directory / SIGNING_PUBLIC_FILE,
    )


# --- creating ----------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _write_atomically(path: Path, document: dict[str, str], mode: int) -> None:
    _write_text_atomically(path, json.dumps(document, indent=2) + "\n", mode)


def _write_text_atomically(path: Path, text: str, mode: int) -> None:
    """Write via a temp file and rename, so a crash never leaves a half-written key.

    The temp file is created 0600 by ``mkstemp`` (so the private key is never briefly
    world-readable) and then given its final mode explicitly, independent of the umask.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def init_keys(directory: Path, *, force: bool = False) -> KeySetPaths:
    """Create a fresh key set (sealing + auth's, the notifier's and intake's signing + one
    audit pair per service) in ``directory``.

    Refuses to replace existing key files unless ``force``: replacing the sealing key
    makes every secret sealed to the old one unreadable. A complete older key set without
    audit keys or a fact signer's pair gets the missing pairs added and nothing else touched.
    """
    paths = key_set_paths(directory)
    existing = [p for p in paths.all() if p.exists()]
    if not force and len(existing) == len(paths.all()) and any(
            not p.exists() for p in paths.added_files()):
        _init_audit_keys(paths, only_missing=True)
        _init_fact_keys(paths, only_missing=True)
        return paths
    existing += [p for p in paths.added_files() if p.exists()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        raise KeyFileExistsError(
            f"key files already exist: {names}; secrets sealed to them would become "
            "unreadable if replaced. Pass force (`intervene keys init --force`) to replace them"
        )
    directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)

    sealing = PrivateSealingKey.generate()
    signing = SigningKey.generate()
    sealing_doc = {"key_id": sealing.key_id, "algorithm": SEALING_ALGORITHM}
    signing_doc = {"key_id": signing.key_id, "algorithm": SIGNING_ALGORITHM}
    # Public halves last: a reader never sees a public key whose private half is missing.
    _write_atomically(
        paths.sealing_private,
        {**sealing_doc, "private_key": _b64(sealing.private_key)},
        _PRIVATE_MODE,
    )
    _write_atomically(
        paths.signing_private, {**signing_doc, "private_key": _b64(signing.seed)}, _PRIVATE_MODE
    )
    _write_atomically(
        paths.sealing_public,
        {**sealing_doc, "public_key": _b64(sealing.public.public_key)},
        _PUBLIC_MODE,
    )
    _write_atomically(
        paths.signing_public,
        {**signing_doc, "public_key": _b64(signing.verify_key.public_key)},
        _PUBLIC_MODE,
    )
    _init_audit_keys(paths, only_missing=False)
    _init_fact_keys(paths, only_missing=False)
    return paths


def _init_fact_keys(paths: KeySetPaths, *, only_missing: bool) -> None:
    for service, private_name, public_name in FACT_SIGNERS:
        private, public = paths.directory / private_name, paths.directory / public_name
        if only_missing and private.exists() and public.exists():
            continue
        key = SigningKey.generate(key_id_prefix=service)
        doc = {"key_id": key.key_id, "algorithm": SIGNING_ALGORITHM}
        _write_atomically(private, {**doc, "private_key": _b64(key.seed)}, _PRIVATE_MODE)
        _write_atomically(public, {**doc, "public_key": _b64(key.verify_key.public_key)},
                          _PUBLIC_MODE)


def _init_audit_keys(paths: KeySetPaths, *, only_missing: bool) -> None:
    for service in AUDIT_SERVICES:
        private, public = paths.audit_private(service), paths.audit_public(service)
        if only_missing and private.exists() and public.exists():
            continue
        key = SigningKey.generate(key_id_prefix=f"audit-{service}")
        doc = {"key_id": key.key_id, "algorithm": SIGNING_ALGORITHM, "service": service}
        _write_atomically(private, {**doc, "private_key": _b64(key.seed)}, _PRIVATE_MODE)
        _write_atomically(public, {**doc, "public_key": _b64(key.verify_key.public_key)},
                          _PUBLIC_MODE)


# --- loading -----------------------------------------------------------------------------


def _check_private_permissions(path: Path) -> None:
    if os.name != "posix":  # POSIX mode bits mean nothing on Windows ACLs
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"private key file {path} is accessible by group or others (mode {mode:04o}); "
            f"restrict it to its owner: chmod 600 {path}"
        )


def _read_document(path: Path, *, private: bool) -> dict[str, Any]:
    try:
        if private:
            _check_private_permissions(path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist; {_INIT_HINT}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise KeyFileError(f"key file {path} cannot be read: {reason}") from None
    except UnicodeDecodeError:
        # Not ``from exc``/``as exc``: the error object holds the raw file content.
        raise KeyFileError(f"key file {path} is not UTF-8 JSON") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
    else:
        if not isinstance(document, dict):
            raise KeyFileError(f"key file {path} must hold a JSON object")
        return document
    # Raised outside the ``except`` block: a JSONDecodeError keeps the whole document
    # (``exc.doc``, i.e. the private key) and must not travel on as ``__context__``.
    raise KeyFileError(f"key file {path} is not valid JSON ({where})")


def _field(document: dict[str, Any], name: str, path: Path) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise KeyFileError(f"key file {path} lacks the string field {name!r}")
    return value


def _load(
    path: Path,
    *,
    algorithm: str,
    material: str,
    build: Callable[[str, bytes], _T],
) -> _T:
    private = material == "private_key"
    document = _read_document(path, private=private)
    found = document.get("algorithm")
    if found != algorithm:
        raise KeyFileError(
            f"key file {path} holds a {found!r} key where a {algorithm!r} "
            f"{'private' if private else 'public'} key is expected"
        )
    key_id = _field(document, "key_id", path)
    encoded = _field(document, material, path)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"key file {path}: {material!r} is not standard base64") from None
    try:
        return build(key_id, raw)
    except ValueError as exc:  # bad id or key length; the message holds neither key bytes
        raise KeyFileError(f"key file {path}: {exc}") from None


def load_sealing_public(path: Path) -> PublicSealingKey:
    """The executor's public sealing key, for whoever seals credentials."""
    return _load(
        path,
        algorithm=SEALING_ALGORITHM,
        material="public_key",
        build=lambda key_id, raw: PublicSealingKey(key_id=key_id, public_key=raw),
    )


def load_sealing_keyring(*paths: Path) -> dict[str, PrivateSealingKey]:
    """The executor's private sealing keys by id: the current one plus any still rotating out."""
    if not paths:
        raise KeyFileError(f"no private sealing key file given; {_INIT_HINT}")
    keys = [
        _load(
            path,
            algorithm=SEALING_ALGORITHM,
            material="private_key",
            build=lambda key_id, raw: PrivateSealingKey(key_id=key_id, private_key=raw),
        )
        for path in paths
    ]
    return _keyring(keys, paths)


def load_signing_key(path: Path) -> SigningKey:
    """A private Ed25519 signing key (auth's, the notifier's or intake's)."""
    return _load(
        path,
        algorithm=SIGNING_ALGORITHM,
        material="private_key",
        build=lambda key_id, raw: SigningKey(key_id=key_id, seed=raw),
    )


def load_verify_keys(*paths: Path) -> dict[str, VerifyKey]:
    """Public signing keys by id (auth's for verdicts, the notifier's for engineers' facts,
    intake's for tickets), several during and after a rotation."""
    if not paths:
        raise KeyFileError(f"no public signing key file given; {_INIT_HINT}")
    keys = [
        _load(
            path,
            algorithm=SIGNING_ALGORITHM,
            material="public_key",
            build=lambda key_id, raw: VerifyKey(key_id=key_id, public_key=raw),
        )
        for path in paths
    ]
    return _keyring(keys, paths)


def _keyring(keys: list[_K], paths: tuple[Path, ...]) -> dict[str, _K]:
    try:
        return build_keyring(keys)
    except ValueError as exc:
        names = ", ".join(str(p) for p in paths)
        raise KeyFileError(f"{exc} (files: {names})") from None


# --- audit keys ----------------------------------------------------------------------------


def _service_of(path: Path, expected: str | None) -> str:
    document = _read_document(path, private=path.suffix == ".key")
    service = _field(document, "service", path)
    if expected is not None and service != expected:
        raise KeyFileError(f"audit key file {path} belongs to {service!r}, not {expected!r}")
    return service


def load_audit_signing_key(path: Path, service: str) -> SigningKey:
    """``service``'s private audit key (``audit-<service>.key``): it signs the records the
    service appends. The file must name that service."""
    _service_of(path, service)
    return _load(path, algorithm=SIGNING_ALGORITHM, material="private_key",
                 build=lambda key_id, raw: SigningKey(key_id=key_id, seed=raw))


def load_audit_verify_keys(directory: Path) -> dict[str, tuple[str, VerifyKey]]:
    """Every ``audit-*.pub`` in ``directory``: key id -> (service, public key). Empty when
    there are none (the verifier then says that signatures were not checked)."""
    found: dict[str, tuple[str, VerifyKey]] = {}
    for path in sorted(directory.glob("audit-*.pub")) if directory.is_dir() else ():
        service = _service_of(path, None)
        key = _load(path, algorithm=SIGNING_ALGORITHM, material="public_key",
                    build=lambda key_id, raw: VerifyKey(key_id=key_id, public_key=raw))
        if key.key_id in found and found[key.key_id] != (service, key):
            raise KeyFileError(f"two audit key files share the key id {key.key_id!r} ({path})")
        found[key.key_id] = (service, key)
    return found
