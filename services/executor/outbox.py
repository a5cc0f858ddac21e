"""The claim's outbox and audit trail: how the executor's events and records are written.

Every event goes through the claim's outbox (see :mod:`services.executor.claims`): staged
with an id derived from the claim and the outbox key, then published, so a run resumed
after a crash republishes the same events byte for byte and never a second, different
outcome. Audit records are keyed by record id, so writing one twice keeps the first.

A run's audit records of things already done (the host key seen, the access decision, each
command as it returned) are gathered per claim (:meth:`ClaimRecords.audit_later`) and
written in ONE insert at the next point that must not come before them: every claim write
this module makes (:meth:`ClaimRecords.stage`), every publish, and what the interpreter
flushes before (a journal write that reaches the store, parking, closing, the end of a
run). A record that must be durable before the caller acts goes through
:meth:`ClaimRecords.audit`, which writes it together with those gathered before it, in
order: a chain's order is still the order things happened. A crash loses only gathered
records: of steps whose journal entries die with them (the resumed attempt runs those
steps again and audits them under its own attempt), of the crashed attempt's connection
(the resumed attempt connects and audits its own), and of a stored access decision not yet
announced (the resumed attempt records it again).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from schemas.envelope import EventEnvelope
from schemas.events import (
    Action,
    AuthorizationVerified,
    Backup,
    ClarificationRequested,
    HardwareEscalated,
    InterventionCompleted,
    InterventionStarted,
)
from schemas.registry import parse_event
from services.executor.claims import Claim, ClaimStore, Owner
from services.executor.outcome import one_line
from services.executor.procedure import commands as cmd
from services.runtime.audit import AuditBatch
from services.runtime.service import ServiceRuntime

# Namespace of the executor's derived event ids: uuid5(ns, "<claim id>:<outbox key>").
_EVENT_NS = uuid.UUID("0c8b5d7e-5f0a-4f4e-8a7d-2f6f3c9e1b42")


def derived_event_id(claim_id: str, key: str) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NS, f"{claim_id}:{key}")


class ClaimRecords:
    """Stage, publish and audit on behalf of one executor process."""

    def __init__(self, *, runtime: ServiceRuntime, claims: ClaimStore, owner: Owner) -> None:
        self._runtime = runtime
        self._claims = claims
        self._owner = owner
        self.actor = f"executor:{owner.id}"
        # The records each running claim gathered and has not written yet (one run per
        # claim in a process: the interpreter keeps them apart).
        self._pending: dict[str, AuditBatch] = {}

    async def stage(self, claim: Claim, key: str, event: EventEnvelope) -> None:
        # The claim write carries the journal entries the store deferred (steps done): the
        # records of their commands must not come after them.
        await self.flush(claim)
        stored = await self._claims.stage(claim.id, self._owner, key, event.model_dump_json())
        claim.outbox.setdefault(key, {"event": stored, "published": False})

    async def publish(self, claim: Claim) -> None:
        await self.flush(claim)
        for key in sorted(claim.outbox):
            entry = claim.outbox[key]
            if entry.get("published"):
                continue
            await self._runtime.publish(parse_event(str(entry["event"])))
            await self._claims.mark_published(claim.id, self._owner, key)
            entry["published"] = True

    async def audit(self, claim: Claim, record_id: str, kind: str,
                    data: Mapping[str, Any]) -> None:
        """Durable when it returns, with every record gathered before it (one insert)."""
        self.audit_later(claim, record_id, kind, data)
        await self.flush(claim)

    def audit_later(self, claim: Claim, record_id: str, kind: str,
                    data: Mapping[str, Any]) -> None:
        """Gather a record of something already done; written at the claim's next flush
        (module doc). Validated, redacted and timestamped now."""
        batch = self._pending.get(claim.id)
        if batch is None:
            batch = self._pending[claim.id] = self._runtime.audit.batch()
        batch.add(claim.ticket_id, record_id=record_id, kind=kind, actor=self.actor,
                  data={"revision": claim.revision, **data})

    async def flush(self, claim: Claim) -> None:
        """Write the records gathered for ``claim`` (none: no round trip)."""
        batch = self._pending.pop(claim.id, None)
        if batch is not None and len(batch):
            await batch.flush()

    def pending(self, claim: Claim) -> int:
        """How many of the claim's records are gathered and not yet written."""
        batch = self._pending.get(claim.id)
        return len(batch) if batch is not None else 0

    @staticmethod
    def staged_outcome(claim: Claim) -> str | None:
        staged = parse_event(str(claim.outbox["z_completed"]["event"]), InterventionCompleted)
        return staged.outcome

    # --- the events, built from validated values and redacted -----------------------------

    def started(self, claim: Claim, verdict: AuthorizationVerified,
                command: cmd.Announce) -> InterventionStarted:
        decision = command.decision
        return InterventionStarted.caused_by(
            verdict, event_id=derived_event_id(claim.id, command.key),
            access_method=decision.method, reason=decision.reason[:2000],
            runbook=decision.runbook, mode=decision.mode, timeline=decision.timeline,
            dry_run=command.dry_run)

    def clarification(self, claim: Claim, verdict: AuthorizationVerified,
                      command: cmd.StageClarification) -> ClarificationRequested:
        return ClarificationRequested.caused_by(
            verdict, producer="executor", event_id=derived_event_id(claim.id, command.key),
            question=command.question, field="credentials")

    def escalation(self, claim: Claim, verdict: AuthorizationVerified,
                   command: cmd.StageEscalation) -> HardwareEscalated:
        redact = self._runtime.redactor.redact_text
        found = command.escalation
        return HardwareEscalated.caused_by(
            verdict, event_id=derived_event_id(claim.id, command.key),
            component=found.component,
            device=one_line(redact(found.device))[:500] if found.device else None,
            evidence=tuple(redact(e)[:2000] for e in found.evidence),
            severity=found.severity)

    def completion(self, claim: Claim, verdict: AuthorizationVerified,
                   command: cmd.StageCompletion) -> InterventionCompleted:
        redact = self._runtime.redactor.redact_text
        run = command.run
        actions = tuple(
            Action(step=one_line(a.step)[:500], command=redact(a.command)[:2000] or "-",
                   exit_status=a.exit_status if a.exit_status is None
                   or -255 <= a.exit_status <= 255 else None,
                   duration_ms=a.duration_ms, result=a.result)
            for a in (run.actions if run else ()))[:500]
        backups = tuple(dict.fromkeys(
            Backup(location=redact(b.location)[:2000], description=redact(b.description)[:2000])
            for b in (run.backups if run else ())))[:100]
        reason = command.reason
        return InterventionCompleted.caused_by(
            verdict, event_id=derived_event_id(claim.id, command.key), outcome=command.outcome,
            access_method=command.access_method, actions=actions, backups=backups,
            new_credentials_issued=bool(run and run.new_credentials_issued),
            recommendations=command.advice, reason=redact(reason)[:2000] if reason else None,
            dry_run=command.dry_run)
