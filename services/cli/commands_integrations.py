"""``intervene integrations`` and ``intervene accounts``: who may call intake, for whom.

``integrations add NAME --kind api|zammad|whmcs --scopes submit,read`` registers a helpdesk
integration and prints its secret ONCE (store it in the helpdesk's configuration; intake
keeps it only sealed under its integration key). ``rotate NAME`` prints a new secret (the old
one stays valid for ``--grace-hours``, default 24), ``revoke NAME`` ends it, ``list`` shows
names, kinds, scopes, status and secret fingerprints - never a secret.

``accounts import FILE --integration NAME`` loads that integration's account map
(``customer,account_id`` rows: the helpdesk's authenticated customer identity and the
provider's account id) all or nothing; ``accounts list NAME`` shows it.

Every change is audited on the chain ``intake-admin-YYYYMMDD``. Uses ``MONGODB_URI``,
``MONGODB_DATABASE`` and the keys directory (``INTERVENTION_KEYS_DIR``, default var/keys),
where intake's integration key is created on first use. Exit status: 0 done, 1 refused
(named), 2 unreadable file, key or store.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from services.intake.accounts import AccountMap, AccountMapFileError, parse_account_map
from services.intake.integrations import (
    KINDS,
    IntegrationError,
    IntegrationKeyFile,
    IntegrationRegistry,
    check_name,
    env_keys_dir,
    parse_scopes,
)
from services.runtime.audit import AuditLog
from services.runtime.keys import KeyFileError
from services.runtime.service import audit_signer
from services.runtime.settings import RuntimeSettings

_T = TypeVar("_T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    integrations = sub.add_parser(
        "integrations", help="helpdesk integrations allowed to call intake (secrets, scopes)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="integrations_command", required=True)
    add = integrations.add_parser("add", help="register an integration; prints its secret once")
    add.add_argument("name")
    add.add_argument("--kind", choices=KINDS, default="api",
                     help="api (signed HTTP or helpdesk topic), zammad or whmcs")
    add.add_argument("--scopes", default="submit", help="comma-separated: submit, read")
    add.set_defaults(func=_cmd_add)
    rotate = integrations.add_parser("rotate", help="a new secret (printed once)")
    rotate.add_argument("name")
    rotate.add_argument("--grace-hours", type=float, default=24.0,
                        help="how long the current secret stays valid (0: at once invalid)")
    rotate.set_defaults(func=_cmd_rotate)
    revoke = integrations.add_parser("revoke", help="end an integration: every request refused")
    revoke.add_argument("name")
    revoke.set_defaults(func=_cmd_revoke)
    integrations.add_parser("list", help="names, kinds, scopes, status, fingerprints"
                            ).set_defaults(func=_cmd_list)

    accounts = sub.add_parser(
        "accounts", help="each integration's map from its authenticated customers to accounts",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="accounts_command", required=True)
    imp = accounts.add_parser("import", help="validate and load an account map (all or nothing)")
    imp.add_argument("file", type=Path, help="CSV with header customer,account_id, or JSON list")
    imp.add_argument("--integration", required=True)
    imp.add_argument("--format", choices=("csv", "json"))
    imp.add_argument("--check", action="store_true", help="validate only, write nothing")
    imp.set_defaults(func=_cmd_accounts_import)
    show = accounts.add_parser("list", help="an integration's account map")
    show.add_argument("integration")
    show.set_defaults(func=_cmd_accounts_list)


def _run(work: Callable[[AsyncDatabase[dict[str, Any]], IntegrationKeyFile, AuditLog],
                        Awaitable[_T]]) -> _T:
    settings = RuntimeSettings()

    async def go() -> _T:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        try:
            db = client[settings.mongodb_database]
            key = IntegrationKeyFile(env_keys_dir(), create=True)
            # Intake's own administration: written, and signed, as intake (its audit key).
            return await work(db, key, AuditLog(db, signer=audit_signer("intake", settings)))
        finally:
            await client.close()

    return asyncio.run(go())


def _guarded(action: Callable[[], int]) -> int:
    try:
        return action()
    except IntegrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PyMongoError as exc:
        print(f"error: the store did not answer ({type(exc).__name__}); check MONGODB_URI "
              "and that the store is up (`intervene status`)", file=sys.stderr)
        return 2


async def _audit(audit: AuditLog, kind: str, data: dict[str, Any]) -> None:
    at = datetime.now(UTC)
    await audit.append(f"intake-admin-{at:%Y%m%d}", record_id=f"{kind}:{at.isoformat()}:"
                       f"{data.get('integration')}", kind=kind, actor="intake:operator", data=data)


def _show_secret(verb: str, name: str, secret: str) -> None:
    print(f"{verb} integration {name}. Its secret (shown only now; store it in the "
          "helpdesk's configuration):")
    print(secret)


def _cmd_add(args: argparse.Namespace) -> int:
    def action() -> int:
        check_name(args.name)
        scopes = parse_scopes(args.scopes)

        async def work(db: AsyncDatabase[dict[str, Any]], key: IntegrationKeyFile,
                       audit: AuditLog) -> str:
            _, secret = await IntegrationRegistry(db, key).add(args.name, kind=args.kind,
                                                               scopes=scopes)
            await _audit(audit, "integration.added", {"integration": args.name,
                                                      "kind": args.kind,
                                                      "scopes": sorted(scopes)})
            return secret

        _show_secret("registered", args.name, _run(work))
        return 0
    return _guarded(action)


def _cmd_rotate(args: argparse.Namespace) -> int:
    def action() -> int:
        async def work(db: AsyncDatabase[dict[str, Any]], key: IntegrationKeyFile,
                       audit: AuditLog) -> str:
            _, secret = await IntegrationRegistry(db, key).rotate(
                args.name, grace=timedelta(hours=max(0.0, args.grace_hours)))
            await _audit(audit, "integration.rotated", {"integration": args.name,
                                                        "grace_hours": args.grace_hours})
            return secret

        _show_secret("rotated", args.name, _run(work))
        print(f"the previous secret stays valid for {args.grace_hours:g} h")
        return 0
    return _guarded(action)


def _cmd_revoke(args: argparse.Namespace) -> int:
    def action() -> int:
        async def work(db: AsyncDatabase[dict[str, Any]], key: IntegrationKeyFile,
                       audit: AuditLog) -> None:
            await IntegrationRegistry(db, key).revoke(args.name)
            await _audit(audit, "integration.revoked", {"integration": args.name})

        _run(work)
        print(f"revoked integration {args.name}: intake refuses its requests within seconds")
        return 0
    return _guarded(action)


def _cmd_list(args: argparse.Namespace) -> int:
    def action() -> int:
        async def work(db: AsyncDatabase[dict[str, Any]], key: IntegrationKeyFile,
                       audit: AuditLog) -> list[dict[str, Any]]:
            return [i.public() for i in await IntegrationRegistry(db, key).list()]

        rows = _run(work)
        if not rows:
            print("no integrations: register one with `intervene integrations add NAME`")
        for row in rows:
            print(f"{row['name']:<24} {row['kind']:<7} {','.join(row['scopes']):<12} "
                  f"{row['status']:<8} {' '.join(row['fingerprints'])}")
        return 0
    return _guarded(action)


def _cmd_accounts_import(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        parsed = parse_account_map(path, fmt=args.format)
    except AccountMapFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if parsed.errors:
        for error in parsed.errors:
            print(f"{path}:{error.line}: {error.field}: {error.message}", file=sys.stderr)
        print(f"{len(parsed.errors)} problem(s) in {path}; nothing was imported (fix the file "
              "and run the import again)", file=sys.stderr)
        return 1
    if args.check:
        print(f"{path}: {len(parsed.rows)} mapping(s) valid; nothing written (--check)")
        return 0

    def action() -> int:
        async def work(db: AsyncDatabase[dict[str, Any]], key: IntegrationKeyFile,
                       audit: AuditLog) -> str:
            if await IntegrationRegistry(db, key).get(args.integration) is None:
                raise IntegrationError(f"no integration named {args.integration!r}")
            summary = await AccountMap(db, key).upsert(args.integration, parsed.rows)
            await _audit(audit, "accounts.imported", {
                "integration": args.integration, "version": summary.version,
                "created": summary.created, "updated": summary.updated, "file": path.name})
            return (f"{path}: {len(parsed.rows)} mapping(s) for {args.integration}: "
                    f"{summary.created} new, {summary.updated} updated, {summary.unchanged} "
                    f"unchanged (version {summary.version})")

        print(_run(work))
        return 0
    return _guarded(action)


def _cmd_accounts_list(args: argparse.Namespace) -> int:
    def action() -> int:
        async def work(db: AsyncDatabase[dict[str, Any]], key: IntegrationKeyFile,
                       audit: AuditLog) -> list[dict[str, Any]]:
            return await AccountMap(db, key).entries(args.integration)

        rows = _run(work)
        for row in rows:
            print(f"{row['customer']:<40} {row['account_id']:<24} v{row['version']}")
        print(f"{len(rows)} mapping(s) for {args.integration}")
        return 0
    return _guarded(action)
