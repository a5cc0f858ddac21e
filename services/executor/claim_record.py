"""The values a claim is made of: the claim as stored, and the executor process owning it.

:class:`Owner` says which process runs a claim and — on the same machine, since the same
boot, in the same pid namespace — whether that process is certainly gone, so its claim can
be taken at once instead of after the lease. The store that writes these is
:mod:`services.executor.claims`.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

ClaimStatus = Literal["open", "handed_over", "finished", "refused"]


def claim_id_for(ticket_id: str, revision: int) -> str:
    return f"{ticket_id}:{revision}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """Kernel start time of ``pid`` (clock ticks since boot); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


@dataclass(frozen=True, kw_only=True)
class Owner:
    """An executor process. Start time and boot id tell a dead pid from a reused one."""

    id: str
    host: str
    boot_id: str
    pid_ns: str
    pid: int
    started: str

    @classmethod
    def this_process(cls) -> Owner:
        pid = os.getpid()
        host = socket.gethostname()
        return cls(id=f"{host}:{pid}:{uuid.uuid4().hex[:8]}", host=host, boot_id=_boot_id(),
                   pid_ns=_pid_namespace(), pid=pid, started=_process_start(pid) or "")

    def is_gone_locally(self) -> bool:
        """True only when this owner certainly no longer runs: it ran on this machine since
        its last boot, in the same pid namespace (containers on one host share the boot id
        but not their pids), and that process is gone. Anything else waits for the lease."""
        if not self.boot_id or self.boot_id != _boot_id():
            return False
        if not self.pid_ns or self.pid_ns != _pid_namespace():
            return False
        if self.host != socket.gethostname():
            return False
        return _process_start(self.pid) != self.started

    def to_doc(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "boot_id": self.boot_id,
                "pid_ns": self.pid_ns, "pid": self.pid, "started": self.started}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> Owner | None:
        if not doc:
            return None
        return cls(id=str(doc.get("id", "")), host=str(doc.get("host", "")),
                   boot_id=str(doc.get("boot_id", "")), pid_ns=str(doc.get("pid_ns", "")),
                   pid=int(doc.get("pid", 0)), started=str(doc.get("started", "")))


@dataclass(kw_only=True)
class Claim:
    id: str
    ticket_id: str
    revision: int
    verdict_event_id: str
    verdict_json: str
    trace_carrier: dict[str, str]
    status: ClaimStatus
    owner: Owner | None
    lease_until: datetime | None
    attempt: int
    decision: dict[str, Any] | None = None
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    outbox: dict[str, dict[str, Any]] = field(default_factory=dict)
    rescue: dict[str, Any] = field(default_factory=dict)
    handover: dict[str, Any] | None = None
    resumptions: int = 0  # re-openings after a manual step: not failed attempts
    review_passed: bool = False
    released: int | None = None  # the attempt whose owner closed or parked the claim
    # The executor's signed claim records (services.executor.claim_integrity), by field.
    seals: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_attempts(self) -> int:
        """Runs that did not end by parking for an engineer (crashes, lost leases)."""
        return self.attempt - self.resumptions

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Claim:
        lease = doc.get("lease_until")
        if isinstance(lease, datetime) and lease.tzinfo is None:
            lease = lease.replace(tzinfo=UTC)
        return cls(
            id=str(doc["_id"]), ticket_id=str(doc["ticket_id"]), revision=int(doc["revision"]),
            verdict_event_id=str(doc["verdict_event_id"]), verdict_json=str(doc["verdict"]),
            trace_carrier=dict(doc.get("trace") or {}), status=doc.get("status", "open"),
            owner=Owner.from_doc(doc.get("owner")), lease_until=lease,
            attempt=int(doc.get("attempt", 0)), decision=doc.get("decision"),
            steps=dict(doc.get("steps") or {}), outbox=dict(doc.get("outbox") or {}),
            rescue=dict(doc.get("rescue") or {}), handover=doc.get("handover"),
            resumptions=int(doc.get("resumptions", 0)),
            review_passed=bool(doc.get("review_passed")),
            released=int(doc["released"]) if doc.get("released") is not None else None,
            seals=dict(doc.get("seals") or {}),
        )

    def expired(self, now: datetime) -> bool:
        return self.lease_until is None or self.lease_until < now

    @property
    def lease_released(self) -> bool:
        """The current attempt's owner closed or parked the claim: no lease to wait for."""
        return self.released is not None and self.released >= self.attempt


def aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

