"""``intervene servers import FILE``: load the ownership inventory auth checks tickets against.

All or nothing: every row is validated first and every problem printed as
``FILE:LINE: field: message``; if there is any, nothing is written and the exit status is 1,
so the inventory never holds half a file nobody reviewed - fix the file and run it again.
A valid file is upserted by service id (rows equal to what is stored are not rewritten), so
importing the same file twice changes nothing. Servers absent from the file are kept.

Uses ``MONGODB_URI`` and ``MONGODB_DATABASE``. Exit status: 0 imported (or valid, with
``--check``), 1 invalid rows, 2 unreadable file or unreachable store.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from services.auth.inventory import (
    FIELDS,
    InventoryError,
    MongoServerInventory,
    ServerRecord,
    UpsertSummary,
    parse_inventory,
)
from services.auth.settings import AuthSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    servers = sub.add_parser(
        "servers", help="the server ownership inventory auth checks tickets against"
    ).add_subparsers(dest="servers_command", required=True)
    imp = servers.add_parser(
        "import",
        help="validate and upsert servers from a CSV or JSON file (all or nothing)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"columns / keys: {', '.join(FIELDS)}",
    )
    imp.add_argument("file", type=Path, help="CSV with a header row, or a JSON list of objects")
    imp.add_argument(
        "--format", choices=("csv", "json"), help="default: from the file name (.json or CSV)"
    )
    imp.add_argument("--check", action="store_true", help="validate only, write nothing")
    imp.set_defaults(func=_cmd_servers_import)


def _cmd_servers_import(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        parsed = parse_inventory(path, fmt=args.format)
    except InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if parsed.errors:
        for error in parsed.errors:
            print(f"{path}:{error.line}: {error.field}: {error.message}", file=sys.stderr)
        print(
            f"{len(parsed.errors)} problem(s) in {path}; nothing was imported "
            "(fix the file and run the import again)",
            file=sys.stderr,
        )
        return 1
    if args.check:
        print(f"{path}: {len(parsed.records)} server(s) valid; nothing written (--check)")
        return 0
    settings = AuthSettings()
    try:
        summary = asyncio.run(_upsert(settings, parsed.records))
    except PyMongoError as exc:
        # The exception class only: messages can carry connection-string details.
        print(
            f"error: the inventory store did not accept the import ({type(exc).__name__}); "
            f"check MONGODB_URI and that the store is up (`intervene status`)",
            file=sys.stderr,
        )
        return 2
    print(
        f"{path}: {len(parsed.records)} server(s): {summary.created} new, "
        f"{summary.updated} updated, {summary.unchanged} unchanged "
        f"(database {settings.mongodb_database})"
    )
    return 0


async def _upsert(settings: AuthSettings, records: Sequence[ServerRecord]) -> UpsertSummary:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, tz_aware=True, serverSelectionTimeoutMS=5000
    )
    try:
        inventory = MongoServerInventory(client[settings.mongodb_database])
        await inventory.ensure_indexes()
        return await inventory.upsert(records)
    finally:
        await client.close()
