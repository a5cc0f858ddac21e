"""``intervene executor ...``: the executor's operator commands.

- ``executor claims``: open and handed-over claims (ticket revision, status, owner, lease,
  steps journalled) — what a restart would resume, and what waits for an engineer.
- ``executor manual [--all]``: manual steps waiting for an engineer's report (ticket,
  step, method, deadline), with ``--all`` also the reported and timed-out ones.
- ``executor vault-key init DIR``: a customer credential-vault key pair for demos and tests
  (the account area keeps the private half; new passwords are sealed to the public half).
- ``executor vault-key register ACCOUNT FILE [--operator NAME]``: register (or replace) an
  account's vault public key, so a password reset for that account can deliver the new
  password. An operator's action: the registration is signed with the operator key
  (``operator-signing.key`` in ``INTERVENTION_KEYS_DIR``) and audited (``vault_key_registered``
  on the chain ``executor-admin-<YYYYMMDD>``, as ``executor:operator``); it counts only for
  tickets verified after it (:mod:`services.executor.vault`).

Uses ``MONGODB_URI`` and ``MONGODB_DATABASE``. Exit status 0 done, 2 bad input or store.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from services.executor.claims import ClaimStore
from services.executor.manual import ManualSteps
from services.executor.settings import ExecutorSettings
from services.executor.vault import MongoCredentialVault
from services.runtime.audit import AuditLog
from services.runtime.crypto import (
    SEALING_ALGORITHM,
    PrivateSealingKey,
    PublicSealingKey,
    SigningKey,
)
from services.runtime.keys import (
    OPERATOR_SIGNING_PRIVATE_FILE,
    KeyFileError,
    default_keys_dir,
    load_sealing_public,
    load_signing_key,
)
from services.runtime.service import audit_signer


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    executor = sub.add_parser("executor", help="executor claims and customer vault keys",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter
                              ).add_subparsers(dest="executor_command", required=True)
    claims = executor.add_parser("claims", help="list open and handed-over claims")
    claims.add_argument("--all", action="store_true", help="finished claims too")
    claims.set_defaults(func=_cmd_claims)
    manual = executor.add_parser("manual", help="manual steps waiting for an engineer")
    manual.add_argument("--all", action="store_true", help="reported and timed-out steps too")
    manual.set_defaults(func=_cmd_manual)
    vault = executor.add_parser("vault-key", help="customer credential-vault keys"
                                ).add_subparsers(dest="vault_command", required=True)
    init = vault.add_parser("init", help="create a customer vault key pair (demo/tests)")
    init.add_argument("dir", type=Path)
    init.set_defaults(func=_cmd_vault_init)
    reg = vault.add_parser("register", help="store an account's vault public key")
    reg.add_argument("account_id")
    reg.add_argument("file", type=Path, help="customer-vault.pub written by `vault-key init`")
    reg.add_argument("--operator", default=None,
                     help="who registers it (default: the login name), signed and audited")
    reg.set_defaults(func=_cmd_vault_register)


Db = AsyncDatabase[dict[str, Any]]
T = TypeVar("T")


async def _with_db(settings: ExecutorSettings, use: Callable[[Db], Awaitable[T]]) -> T:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri,
                                                                tz_aware=True)
    try:
        return await use(client[settings.mongodb_database])
    finally:
        await client.close()


def _print_rows(rows_of: Callable[[Db], Awaitable[list[str]]], *, store: str,
                none: str) -> int:
    try:
        rows = asyncio.run(_with_db(ExecutorSettings(), rows_of))
    except PyMongoError as exc:
        print(f"error: the {store} did not answer ({type(exc).__name__})", file=sys.stderr)
        return 2
    print("\n".join(rows) if rows else none)
    return 0


def _cmd_claims(args: argparse.Namespace) -> int:
    return _print_rows(lambda db: _claims(db, include_finished=args.all),
                       store="claim store", none="no claims")


async def _claims(db: Db, *, include_finished: bool) -> list[str]:
    # The claims in flight; with --all also the finished ones, which live in the archive.
    # (One crashed between archiving and deleting is in both: shown once, in flight.)
    collections = [ClaimStore.ARCHIVE, ClaimStore.CLAIMS] if include_finished else [
        ClaimStore.CLAIMS]
    docs = {str(doc["_id"]): doc for name in collections async for doc in db[name].find({})}
    rows = []
    store = ClaimStore(db)
    # Claims waiting for a worker are in the claim queue, not in flight yet.
    for claim_id, partition in sorted((await store.queued_claim_ids()).items()):
        queued = await db[partition].find_one({"_id": claim_id}) or {}
        rows.append(f"{claim_id}  queued  since {queued.get('created_at')}  "
                    f"owner {(queued.get('owner') or {}).get('id', '-')}  (in {partition})")
    for _, doc in sorted(docs.items()):
        # The live attempt, owner and lease are in the newest lease document, not the claim.
        claim = await store.get(str(doc["_id"]))
        if claim is None or (claim.status not in ("open", "handed_over")
                             and not include_finished):
            continue
        steps = doc.get("steps") or {}
        rows.append(
            f"{claim.id}  {claim.status}  attempt {claim.attempt}  "
            f"owner {claim.owner.id if claim.owner else '-'}  "
            f"lease until {claim.lease_until}  "
            f"steps journalled {len(steps) if isinstance(steps, dict) else 0}")
    return rows


def _cmd_manual(args: argparse.Namespace) -> int:
    return _print_rows(lambda db: _manual(db, include_done=args.all),
                       store="store", none="no manual steps")


async def _manual(db: Db, *, include_done: bool) -> list[str]:
    query: dict[str, object] = {} if include_done else {"status": "waiting"}
    rows = []
    async for doc in db[ManualSteps.STEPS].find(query).sort("deadline", 1):
        report = doc.get("report") or {}
        who = f"  by {report.get('display_name')}" if isinstance(report, dict) and \
            report.get("display_name") else ""
        rows.append(f"{doc.get('ticket_id')} r{doc.get('revision')}  {doc.get('step_id')}  "
                    f"{doc.get('method')}  {doc.get('status')}{who}  "
                    f"deadline {doc.get('deadline')}  {doc.get('title')}")
    return rows


def _cmd_vault_init(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    private, public = directory / "customer-vault.key", directory / "customer-vault.pub"
    if private.exists() or public.exists():
        print(f"error: {directory} already holds a vault key pair", file=sys.stderr)
        return 2
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = PrivateSealingKey.generate(key_id_prefix="cust")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"key_id": key.key_id, "algorithm": SEALING_ALGORITHM,
                   "private_key": base64.b64encode(key.private_key).decode()}, out)
    public.write_text(json.dumps({"key_id": key.key_id, "algorithm": SEALING_ALGORITHM,
                                  "public_key": base64.b64encode(
                                      key.public.public_key).decode()}))
    print(f"customer vault key {key.key_id} written to {directory}")
    return 0


def _cmd_vault_register(args: argparse.Namespace) -> int:
    settings = ExecutorSettings()
    keys_dir = (Path(settings.intervention_keys_dir).expanduser()
                if settings.intervention_keys_dir else default_keys_dir())
    operator = args.operator or getpass.getuser()
    try:
        key = load_sealing_public(args.file)
        operator_key = load_signing_key(keys_dir / OPERATOR_SIGNING_PRIVATE_FILE)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_with_db(settings, lambda db: _register(
            db, settings, args.account_id, key, operator_key=operator_key, operator=operator)))
    except PyMongoError as exc:
        print(f"error: the vault store did not answer ({type(exc).__name__})", file=sys.stderr)
        return 2
    print(f"account {args.account_id}: vault key {key.key_id} registered by {operator} "
          "(for tickets verified from now on)")
    return 0


async def _register(db: Db, settings: ExecutorSettings, account_id: str,
                    key: PublicSealingKey, *, operator_key: SigningKey, operator: str) -> None:
    registration = await MongoCredentialVault(db).register_key(
        account_id, key, operator_key=operator_key, operator=operator)
    # Audited before the command reports success; as the executor's (its audit key, when
    # this host holds it), since the executor is what acts on the key.
    at = datetime.now(UTC)
    audit = AuditLog(db, signer=audit_signer("executor", settings))
    await audit.append(f"executor-admin-{at:%Y%m%d}",
                       record_id=f"vault_key_registered:{registration['registered_at']}:"
                                 f"{account_id}",
                       kind="vault_key_registered", actor="executor:operator",
                       data={"account_id": account_id, "key_id": key.key_id,
                             "operator": operator,
                             "operator_key_id": registration["signature"]["key_id"],
                             "registered_at": registration["registered_at"]})
