"""`intervene audit verify [TICKET]`: check the audit log against its keys and its anchors.

Three checks, each said on its own line before the verdict:

- the hash chains in the store, one per ticket and producer (the service that wrote them),
  which together make the ticket's timeline (always);
- every record's signature and actor, against the services' public audit keys
  (``audit-*.pub`` in ``INTERVENTION_KEYS_DIR``); without such files, said and skipped;
- the store against the heads anchored in Kafka (``intervention.audit-anchored``, with
  ``KAFKA_TOPIC_PREFIX`` and the Kafka TLS/SASL settings): rewritten, truncated, rolled-back
  or deleted histories. ``--no-anchors`` skips this (say, without Kafka access).

Exit 0 when everything checked holds, 1 naming each broken ticket's first problem (and any
anchor that is not trusted), 2 when a check could not run (keys unreadable, Kafka refused).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from schemas.topics import AUDIT_ANCHORED, physical
from services.runtime.audit import AuditKeys, verify_chain
from services.runtime.audit_anchors import AnchorRead, read_anchors
from services.runtime.kafka_security import KafkaConnectError
from services.runtime.keys import KeyFileError, default_keys_dir, load_audit_verify_keys
from services.runtime.settings import RuntimeSettings


def _keys(settings: RuntimeSettings) -> tuple[AuditKeys, Path]:
    directory = (Path(settings.intervention_keys_dir).expanduser()
                 if settings.intervention_keys_dir else default_keys_dir())
    return load_audit_verify_keys(directory), directory


async def _verify(ticket: str | None, *, anchors: bool) -> int:
    settings = RuntimeSettings()
    try:
        keys, directory = _keys(settings)
    except KeyFileError as exc:
        print(f"error: {exc}")
        return 2
    if keys:
        services = ", ".join(sorted({service for service, _ in keys.values()}))
        print(f"signatures: checked against {len(keys)} audit key(s) ({services})")
    else:
        print(f"signatures: NOT checked (no audit-*.pub in {directory}; `intervene keys init`)")
    read = AnchorRead()
    topic = physical(AUDIT_ANCHORED, settings.kafka_topic_prefix)
    if anchors:
        try:
            read = await read_anchors(settings, keys=keys or None)
        except (KafkaConnectError, TimeoutError) as exc:
            print(f"error: the anchors in {topic} could not be read ({exc or 'timed out'}); "
                  "--no-anchors checks the store alone")
            return 2
        if read.topic_missing:
            print(f"anchors: none ({topic} does not exist: nothing anchored yet)")
        else:
            print(f"anchors: {sum(len(a) for a in read.anchors.values())} anchor(s) of "
                  f"{len(read.anchors)} ticket(s) in {topic}")
    else:
        print("anchors: NOT checked (--no-anchors)")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, serverSelectionTimeoutMS=5000)
    try:
        report = await verify_chain(client[settings.mongodb_database], ticket,
                                    keys=keys or None, anchors=read.anchors if anchors else None)
    finally:
        await client.close()
    scope = f"ticket {ticket}" if ticket else "all tickets"
    if ticket is not None and report.chain_lengths:
        # The ticket's timeline is its chains merged: say what each producer contributed.
        print("chains: " + ", ".join(
            f"{producer or 'legacy (one chain for all services)'} {n} record(s)"
            for (_, producer), n in sorted(report.chain_lengths.items(),
                                           key=lambda c: c[0][1] or "")))
    untrusted = [u for u in read.untrusted if ticket is None or f"ticket {ticket} " in u]
    for problem in untrusted:
        print(f"  untrusted anchor: {problem}")
    if report.ok and not untrusted:
        print(f"audit chain OK: {scope}, {report.tickets_checked} ticket(s), "
              f"{report.chains_checked} chain(s), {report.records_checked} record(s)")
        return 0
    print(f"audit chain BROKEN: {scope}, {len(report.broken)} chain(s) affected"
          + (f", {len(untrusted)} untrusted anchor(s)" if untrusted else ""))
    for brk in report.broken:
        print(f"  {brk}")
    return 1


def _cmd_verify(args: argparse.Namespace) -> int:
    return asyncio.run(_verify(args.ticket, anchors=not args.no_anchors))


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="audit_command", required=True)
    verify = audit.add_parser(
        "verify", help="check the hash chains (per ticket and producer) of one ticket or all, "
                       "every record's signature "
                       "and actor (audit keys in INTERVENTION_KEYS_DIR) and the store against "
                       "the heads anchored in Kafka; exit 1 naming the first problem of each "
                       "ticket (MONGODB_URI, MONGODB_DATABASE, KAFKA_*)")
    verify.add_argument("ticket", nargs="?", help="ticket id (default: every ticket)")
    verify.add_argument("--no-anchors", action="store_true",
                        help="do not read the anchors from Kafka (store and keys only)")
    verify.set_defaults(func=_cmd_verify)
