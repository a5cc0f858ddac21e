"""``intervene engineers add|list``: the engineer records chat acknowledgements are tied to.

An acknowledgement from chat counts only from a chat identity mapped to an engineer record
(Matrix user id, Slack user id, Telegram user id); the tier decides who an escalation
reaches (tier 1 is paged first, each escalation adds the next tier).

Uses ``MONGODB_URI`` and ``MONGODB_DATABASE``. Exit status: 0 done, 1 refused (an identity
already belongs to another engineer), 2 unreachable store.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from schemas.events import ChatChannel
from services.notifier.acks import Engineer, EngineerDirectory
from services.runtime.settings import RuntimeSettings

T = TypeVar("T")
CHANNELS: tuple[ChatChannel, ...] = ("matrix", "slack", "telegram", "webhook")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    engineers = sub.add_parser(
        "engineers", help="engineers who acknowledge pages from chat (notifier)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="engineers_command", required=True)
    add = engineers.add_parser("add", help="add or update an engineer and their chat identities")
    add.add_argument("engineer_id", help="e.g. ENG-1")
    add.add_argument("--name", required=True, help="display name shown in acknowledgements")
    add.add_argument("--tier", type=int, default=1, help="on-call tier (default 1)")
    for channel in CHANNELS:
        add.add_argument(f"--{channel}", metavar="IDENTITY",
                         help=f"the engineer's {channel} identity")
    add.set_defaults(func=_cmd_add)
    engineers.add_parser("list", help="list engineers and identities").set_defaults(
        func=_cmd_list)


def _run(work: Callable[[EngineerDirectory], Awaitable[T]]) -> T:
    settings = RuntimeSettings()

    async def go() -> T:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        try:
            return await work(EngineerDirectory(client[settings.mongodb_database]))
        finally:
            await client.close()

    return asyncio.run(go())


def _cmd_add(args: argparse.Namespace) -> int:
    identities = {c: getattr(args, c) for c in CHANNELS if getattr(args, c)}
    engineer = Engineer(engineer_id=args.engineer_id, display_name=args.name, tier=args.tier,
                        identities=identities)
    try:
        _run(lambda directory: directory.register(engineer))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except PyMongoError as exc:
        print(f"error: the store is unreachable ({type(exc).__name__}); check MONGODB_URI",
              file=sys.stderr)
        return 2
    print(f"engineer {engineer.engineer_id} ({engineer.display_name}, tier {engineer.tier}): "
          + (", ".join(f"{c} {i}" for c, i in identities.items()) or "no chat identity"))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        engineers = _run(lambda directory: directory.all())
    except PyMongoError as exc:
        print(f"error: the store is unreachable ({type(exc).__name__}); check MONGODB_URI",
              file=sys.stderr)
        return 2
    for e in sorted(engineers, key=lambda e: (e.tier, e.engineer_id)):
        ids = ", ".join(f"{c} {i}" for c, i in sorted(e.identities.items()))
        print(f"{e.engineer_id}\ttier {e.tier}\t{e.display_name}\t{ids}")
    return 0
