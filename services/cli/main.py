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

COMMAND_MODULES = ("intake", "integrations", "auth", "executor", "notifier", "audit",
                   "lifecycle", "demo", "docs")


def _source_checkout_on_path() -> None:
    """Make ``devstack`` importable when this is a source checkout's (editable) install.

    ``devstack/`` is excluded from the distribution, so an editable install does not expose
    it, and the ``intervene`` script's ``sys.path`` starts at ``.venv/bin``: without this,
    ``make run`` (``.venv/bin/intervene demo``) found no ``demo`` command. An installed
    distribution has no ``devstack/`` beside ``services/`` and is left as it is.
    """
    root = Path(__file__).resolve().parents[2]
    if (root / "devstack" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.append(str(root))


_source_checkout_on_path()


def _cmd_up(args: argparse.Namespace) -> int:
    # The local stack is development tooling (devstack/, not shipped with the services):
    # imported by the commands that drive it, so the rest of `intervene` works without it.
    from devstack import localstack

    began = time.monotonic()
    for line in localstack.up(with_services=not args.no_services):
        print(line, flush=True)
    print(f"stack up in {time.monotonic() - began:.1f}s; `intervene status` shows health and logs")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from devstack import localstack

    for line in localstack.down():
        print(line, flush=True)
    return 0


def _cmd_stuck() -> int:
    from datetime import UTC, datetime

    from pymongo import AsyncMongoClient

    from services.cli.stuck import (
        StalledHandoff,
        StuckTicket,
        find_stalled_handoffs,
        find_stuck_tickets,
    )
    from services.runtime.settings import RuntimeSettings

    async def find() -> tuple[list[StuckTicket], list[StalledHandoff]]:
        settings = RuntimeSettings()
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            settings.mongodb_uri, serverSelectionTimeoutMS=5000)
        try:
            db, now = client[settings.mongodb_database], datetime.now(UTC)
            return await find_stuck_tickets(db, now), await find_stalled_handoffs(db, now)
        finally:
            await client.close()

    stuck, stalled = asyncio.run(find())
    if not stuck and not stalled:
        print("no stuck tickets: every running SLA clock is within its deadline or progressing,"
              " and no ticket waits at a hand-off")
        return 0
    if stuck:
        print(f"{len(stuck)} stuck ticket(s), most overdue first:")
    for t in stuck:
        minutes = int(t.overdue.total_seconds() // 60)
        print(f"  {t.ticket_id} r{t.revision}  {t.state:<16} {t.clock} clock {minutes} min past "
              f"{t.deadline:%Y-%m-%d %H:%M}Z — waiting for {t.waiting_for}")
    if stalled:
        print(f"{len(stalled)} ticket(s) waiting at a hand-off, oldest first:")
    for h in stalled:
        print(f"  {h.ticket_id} r{h.revision}  {h.stage:<25} for {int(h.age.total_seconds())} s "
              f"(since {h.since:%Y-%m-%d %H:%M:%S}Z) — waiting for {h.waits_for}")
    return 1


def _cmd_status(args: argparse.Namespace) -> int:
    if args.stuck:
        return _cmd_stuck()
    if args.ticket:
        from services.cli.ticket_status import print_ticket_status

        return print_ticket_status(args.ticket)
    from devstack import localstack

    rows = localstack.status()
    for row in rows:
        print(row.line())
    infra_ok = all(r.healthy for r in rows if r.name in ("kafka", "ferretdb"))
    return 0 if infra_ok else 1


def _local_bootstrap() -> str:
    """The local stack's broker (a source checkout), else the settings' default."""
    try:
        from devstack import localstack
    except ModuleNotFoundError as exc:
        if not _devstack_missing(exc):
            raise
        from services.runtime.settings import RuntimeSettings

        return str(RuntimeSettings.model_fields["kafka_bootstrap_servers"].default)
    return localstack.kafka_bootstrap()


def _cmd_topics_create(args: argparse.Namespace) -> int:
    from services.runtime.kafka_admin import TopicsError, ensure_topics
    from services.runtime.kafka_security import KafkaConnectError
    from services.runtime.settings import RuntimeSettings, SettingsError

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or _local_bootstrap()
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


def _write_key_files(args: argparse.Namespace, what: str,
                     write: Callable[[Path, bool], object]) -> int:
    """``intervene keys init|kafka``: write into ``--dir`` (or the keys dir), list it."""
    from services.runtime.keys import KeyFileError, default_keys_dir

    directory = Path(args.dir) if args.dir else default_keys_dir()
    try:
        write(directory, args.force)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{what} written to {directory}:")
    for path in sorted(directory.iterdir()):
        print(f"  {path.name}")
    return 0


def _cmd_keys_init(args: argparse.Namespace) -> int:
    from services.intake.integrations import load_integration_key
    from services.runtime.keys import init_keys

    def write(directory: Path, force: bool) -> None:
        init_keys(directory, force=force)
        # Intake's integration key is kept even with --force: replacing it would void every
        # registered integration's secret and account map.
        load_integration_key(directory, create=True)

    return _write_key_files(args, "dev key set", write)


def _cmd_keys_kafka(args: argparse.Namespace) -> int:
    from services.runtime.kafka_credentials import init_kafka_credentials

    return _write_key_files(args, "Kafka credentials for deploy/compose.yaml",
                            lambda directory, force: init_kafka_credentials(directory,
                                                                            force=force))


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
    init = keys.add_parser("init", help="create a dev key set (executor sealing, auth signing, "
                                        "one audit key per service)")
    init.add_argument("--dir", help="key directory (default: $INTERVENTION_KEYS_DIR or var/keys)")
    init.add_argument("--force", action="store_true", help="replace an existing key set")
    init.set_defaults(func=_cmd_keys_init)
    kafka = keys.add_parser("kafka", help="create the Kafka SASL credentials of a Compose "
                                          "deployment (one principal per service, admin, "
                                          "auditor) and the broker's JAAS file")
    kafka.add_argument("--dir", help="key directory (default: $INTERVENTION_KEYS_DIR or var/keys)")
    kafka.add_argument("--force", action="store_true", help="replace existing credentials")
    kafka.set_defaults(func=_cmd_keys_kafka)
    # Each area's commands live in their own module (services/cli/commands_<area>.py) with a
    # `register(sub)` function, so areas evolve without editing this file together.
    for area in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"services.cli.commands_{area}")
        except ModuleNotFoundError as exc:
            # An installed distribution has no devstack/: no `intervene demo` there.
            if exc.name != f"services.cli.commands_{area}" and not _devstack_missing(exc):
                raise
            continue
        module.register(sub)
    return parser


def _devstack_missing(exc: ModuleNotFoundError) -> bool:
    return (exc.name or "").split(".")[0] == "devstack"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:
        # A local-stack failure: raised only once devstack.localstack is imported.
        stack = sys.modules.get("devstack.localstack")
        if stack is not None and isinstance(exc, stack.StackError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, ModuleNotFoundError) and _devstack_missing(exc):
            print("error: this command drives the local stack, which is development tooling "
                  "(devstack/): run it from a source checkout", file=sys.stderr)
            return 2
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
