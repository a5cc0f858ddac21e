"""`intervene audit verify [TICKET]`: check the per-ticket hash chains of the audit log."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pymongo import AsyncMongoClient

from services.runtime.audit import verify_chain
from services.runtime.settings import RuntimeSettings


async def _verify(ticket: str | None) -> int:
    settings = RuntimeSettings()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, serverSelectionTimeoutMS=5000)
    try:
        report = await verify_chain(client[settings.mongodb_database], ticket)
    finally:
        await client.close()
    scope = f"ticket {ticket}" if ticket else "all tickets"
    if report.ok:
        print(f"audit chain OK: {scope}, {report.tickets_checked} ticket(s), "
              f"{report.records_checked} record(s)")
        return 0
    print(f"audit chain BROKEN: {scope}, {len(report.broken)} ticket(s) affected")
    for brk in report.broken:
        print(f"  {brk}")
    return 1


def _cmd_verify(args: argparse.Namespace) -> int:
    return asyncio.run(_verify(args.ticket))


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="audit_command", required=True)
    verify = audit.add_parser(
        "verify", help="walk the hash chain of one ticket or all; exit 1 naming the first "
                       "broken record (MONGODB_URI, MONGODB_DATABASE)")
    verify.add_argument("ticket", nargs="?", help="ticket id (default: every ticket)")
    verify.set_defaults(func=_cmd_verify)
