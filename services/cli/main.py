"""The `intervene` command: the local stack, keys, and (as services land) the ticket tools."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from services.runtime import localstack

COMMAND_MODULES = ("intake", "integrations", "auth", "executor", "notifier", "audit",
                   "lifecycle", "demo", "docs")


def _cmd_up(args: argparse.Namespace) -> int:
    began = time.monotonic()
    for line in localstack.up(with_services=not args.no_services):
        print(line, flush=True)
    print(f"stack up in {time.monotonic() - began:.1f}s; `intervene status` shows health and logs")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    for line in localstack.down():
        print(line, flush=True)
    return 0


def _cmd_stuck() -> int:
    from datetime import UTC, datetime

    from pymongo import AsyncMongoClient

    from services.cli.stuck import StuckTicket, find_stuck_tickets
    from services.runtime.settings import RuntimeSettings

    async def find() -> list[StuckTicket]:
        settings = RuntimeSettings()
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            settings.mongodb_uri, serverSelectionTimeoutMS=5000)
        try:
            return await find_stuck_tickets(client[settings.mongodb_database],
                                            datetime.now(UTC))
        finally:
            await client.close()

    stuck = asyncio.run(find())
    if not stuck:
        print("no stuck tickets: every running SLA clock is within its deadline or progressing")
        return 0
    print(f"{len(stuck)} stuck ticket(s), most overdue first:")
    for t in stuck:
        minutes = int(t.overdue.total_seconds() // 60)
        print(f"  {t.ticket_id} r{t.revision}  {t.state:<16} {t.clock} clock {minutes} min past "
              f"{t.deadline:%Y-%m-%d %H:%M}Z — waiting for {t.waiting_for}")
    return 1


def _cmd_status(args: argparse.Namespace) -> int:
    if args.stuck:
        return _cmd_stuck()
    if args.ticket:
        from services.cli.ticket_status import print_ticket_status

        return print_ticket_status(args.ticket)
    rows = localstack.status()
    for row in rows:
        print(row.line())
    infra_ok = all(r.healthy for r in rows if r.name in ("kafka", "ferretdb"))
    return 0 if infra_ok else 1


def _cmd_topics_create(args: argparse.Namespace) -> int:
    from services.runtime.kafka_admin import TopicsError, ensure_topics
    from services.runtime.kafka_security import KafkaConnectError
    from services.runtime.settings import RuntimeSettings, SettingsError

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", localstack.kafka_bootstrap())
    try:
        # The Kafka TLS/SASL variables (an administrator's principal, with Create), and
        # KAFKA_REPLICATION_FACTOR / KAFKA_MIN_INSYNC_REPLICAS for the new topics.
        settings = RuntimeSettings()
        created = asyncio.run(ensure_topics(bootstrap, settings=settings))
    except (SettingsError, KafkaConnectError, TopicsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not created:
        print("topics: all present")
        return 0
    insync = settings.kafka_min_insync_replicas
    print(f"topics: {len(created)} created (replication factor "
          f"{settings.kafka_replication_factor}, min.insync.replicas "
          f"{insync if insync is not None else 'the broker default'})")
    for name in created:
        print(f"  {name}")
    return 0


def _cmd_keys_init(args: argparse.Namespace) -> int:
    from services.intake.integrations import load_integration_key
    from services.runtime.keys import KeyFileError, default_keys_dir, init_keys

    directory = Path(args.dir) if args.dir else default_keys_dir()
    try:
        paths = init_keys(directory, force=args.force)
        # Intake's integration key is kept even with --force: replacing it would void every
        # registered integration's secret and account map.
        load_integration_key(directory, create=True)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"dev key set written to {directory}:")
    for path in sorted(directory.iterdir()):
        print(f"  {path.name}")
    del paths
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intervene", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install if needed and start Kafka, FerretDB and the services")
    up.add_argument("--no-services", action="store_true", help="start only Kafka and FerretDB")
    up.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop everything `up` started").set_defaults(func=_cmd_down)
    status = sub.add_parser("status", help="health, pids and log files; with TICKET, the "
                                           "ticket's status and timeline from the audit log")
    status.add_argument("ticket", nargs="?", help="ticket id (MONGODB_URI, MONGODB_DATABASE)")
    status.add_argument("--stuck", action="store_true",
                        help="list tickets past an SLA deadline with no progress since (exit 1 "
                             "if any)")
    status.set_defaults(func=_cmd_status)

    topics = sub.add_parser("topics", help="Kafka topics of the catalogue").add_subparsers(
        dest="topics_command", required=True)
    topics.add_parser("create", help="create missing catalogue topics and their DLQs "
                      "(KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC_PREFIX, KAFKA_REPLICATION_FACTOR, "
                      "KAFKA_MIN_INSYNC_REPLICAS)").set_defaults(
        func=_cmd_topics_create)

    keys = sub.add_parser("keys", help="key sets").add_subparsers(dest="keys_command",
                                                                  required=True)
    init = keys.add_parser("init", help="create a dev key set (executor sealing, auth signing)")
    init.add_argument("--dir", help="key directory (default: $INTERVENTION_KEYS_DIR or var/keys)")
    init.add_argument("--force", action="store_true", help="replace an existing key set")
    init.set_defaults(func=_cmd_keys_init)
    # Each area's commands live in their own module (services/cli/commands_<area>.py) with a
    # `register(sub)` function, so areas evolve without editing this file together.
    for area in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"services.cli.commands_{area}")
        except ModuleNotFoundError as exc:
            if exc.name != f"services.cli.commands_{area}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except localstack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Impossible settings (the Kafka TLS/SASL variables are validated by every command's
        # settings, even one that only reads the store) are an operator's fix: one line,
        # exit 2, as `topics create` and `submit` say it. Imported here: the settings
        # module costs pydantic at start, which `intervene status` does not need.
        from services.runtime.settings import SettingsError

        if isinstance(exc, SettingsError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
