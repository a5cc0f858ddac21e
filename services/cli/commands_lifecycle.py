"""`intervene trace TICKET`: one ticket's spans as a tree, across the four services.

Trace ids come from the audit log (every audited event records the trace it was published
in); spans come from the local stack's span file (``INTERVENE_SPAN_FILE``, default
``var/traces/spans.jsonl``). Without spans, the audit timeline stands in, with the time
between records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from services.runtime.audit import AuditLog, AuditRecord
from services.runtime.redaction import Redactor
from services.runtime.settings import RuntimeSettings
from services.runtime.telemetry import SPAN_FILE_ENV


@dataclass
class SpanNode:
    span: dict[str, Any]
    children: list[SpanNode] = field(default_factory=list)


async def ticket_records(ticket: str) -> list[AuditRecord]:
    settings = RuntimeSettings()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, serverSelectionTimeoutMS=5000)
    try:
        # Read-only use: the redactor is never exercised, a fresh one keeps it explicit.
        return await AuditLog(client[settings.mongodb_database], redactor=Redactor()).records(
            ticket)
    finally:
        await client.close()


def trace_ids(records: list[AuditRecord]) -> list[str]:
    seen: list[str] = []
    for rec in records:
        tid = rec.data.get("trace_id")
        if isinstance(tid, str) and tid not in seen:
            seen.append(tid)
    return seen


def load_spans(path: Path, wanted: set[str]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    spans = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                span = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash: the rest of the file is still good
            if span.get("trace_id") in wanted:
                spans.append(span)
    return spans


def build_forest(spans: list[dict[str, Any]]) -> list[SpanNode]:
    nodes = {s["span_id"]: SpanNode(s) for s in spans}
    roots: list[SpanNode] = []
    for node in nodes.values():
        parent = nodes.get(node.span.get("parent_id") or "")
        (parent.children if parent else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.span["start_ns"])
    return sorted(roots, key=lambda n: n.span["start_ns"])


def render_forest(roots: list[SpanNode]) -> list[str]:
    if not roots:
        return []
    t0 = min(r.span["start_ns"] for r in roots)
    out: list[str] = []

    def walk(node: SpanNode, depth: int) -> None:
        span = node.span
        start_ms = (span["start_ns"] - t0) / 1e6
        dur_ms = ((span.get("end_ns") or span["start_ns"]) - span["start_ns"]) / 1e6
        status = "" if span.get("status") in ("UNSET", "OK") else f"  [{span.get('status')}]"
        out.append(f"{start_ms:9.1f} ms {dur_ms:8.1f} ms  {'  ' * depth}"
                   f"{span.get('service', '?')}: {span['name']}{status}")
        for child in node.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return out


def render_audit_timing(records: list[AuditRecord]) -> list[str]:
    out: list[str] = []
    previous = None
    for rec in records:
        at = rec.at
        label = rec.data.get("event_type")
        delta = ""
        if previous is not None:
            delta = f"+{(at - previous).total_seconds():.3f}s"
        stamp = at.isoformat(timespec="milliseconds")
        out.append(f"{stamp} {delta:>10}  {rec.actor:<9} {label or rec.kind}")
        previous = at
    return out


def _span_file() -> Path:
    """``$INTERVENE_SPAN_FILE``, else the local stack's span file (a source checkout)."""
    if os.environ.get(SPAN_FILE_ENV):
        return Path(os.environ[SPAN_FILE_ENV])
    from devstack.localstack import span_file  # development tooling, not shipped

    return span_file()


def _cmd_trace(args: argparse.Namespace) -> int:
    records = asyncio.run(ticket_records(args.ticket))
    if not records:
        print(f"no audit records for ticket {args.ticket}")
        return 1
    ids = trace_ids(records)
    path = Path(args.spans) if args.spans else _span_file()
    spans = load_spans(path, set(ids))
    if spans:
        count = len(ids)
        print(f"ticket {args.ticket}: {count} trace{'s' if count != 1 else ''} "
              f"({', '.join(ids)}), {len(spans)} spans from {path}")
        for line in render_forest(build_forest(spans)):
            print(line)
        return 0
    print(f"ticket {args.ticket}: no spans in {path}; audit timeline instead")
    for line in render_audit_timing(records):
        print(line)
    return 0


def register(sub: Any) -> None:
    trace = sub.add_parser("trace", help="a ticket's spans as a tree (services, durations, "
                                         "SSH steps)")
    trace.add_argument("ticket")
    trace.add_argument("--spans", help="span file (default: $INTERVENE_SPAN_FILE or "
                                       "var/traces/spans.jsonl)")
    trace.set_defaults(func=_cmd_trace)

