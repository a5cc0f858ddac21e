"""The `intervene` command: the local stack, keys, and (as services land) the ticket tools."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from services.runtime import localstack


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


def _cmd_status(args: argparse.Namespace) -> int:
    rows = localstack.status()
    for row in rows:
        print(row.line())
    infra_ok = all(r.healthy for r in rows if r.name in ("kafka", "ferretdb"))
    return 0 if infra_ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intervene", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install if needed and start Kafka, FerretDB and the services")
    up.add_argument("--no-services", action="store_true", help="start only Kafka and FerretDB")
    up.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop everything `up` started").set_defaults(func=_cmd_down)
    sub.add_parser("status", help="health, pids and log files").set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except localstack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
