"""Run one claimed ticket revision: probe, choose access, run the runbook, report.

The procedure, in order: re-check the verdict (the claim store is not trusted more than the
bus), open the customer's credentials for the duration of the run only, probe SSH, choose
the access method (:mod:`services.executor.access`), announce it (InterventionStarted),
then either hand over (rescue, console, engineer) or run the runbook through the engine,
escalate hardware evidence (HardwareEscalated) and close with exactly one
InterventionCompleted.

Every event goes through the claim's outbox (see :mod:`services.executor.claims`): staged
with a deterministic id, then published, so a run resumed after a crash republishes the
same events byte for byte and never a second, different outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import Status, StatusCode

from schemas.envelope import EventEnvelope
from schemas.events import (
    Action,
    AuthorizationVerified,
    ClarificationRequested,
    HardwareEscalated,
    InterventionCompleted,
    InterventionStarted,
    ManualStepRequested,
)
from schemas.registry import parse_event
from services.executor import hardware
from services.executor.access import (
    AccessDecision,
    Probe,
    ServerFacts,
    needs_probe,
    select_access,
)
from services.executor.claims import Claim, ClaimJournal, ClaimStore, Owner
from services.executor.outcome import decide_outcome, recommendations
from services.executor.runbooks import RUNBOOKS
from services.executor.runbooks.diagnostics import evidence, findings
from services.executor.runbooks.engine import (
    Engine,
    Handover,
    LeaseLost,
    RunResult,
)
from services.executor.runbooks.model import CommandResult, ParameterError, Phase, RunOptions
from services.executor.settings import ExecutorSettings
from services.executor.ssh import (
    Credential,
    HostKeyMismatch,
    SshConnector,
    SshError,
    SshSession,
    SshTarget,
)
from services.executor.vault import CustomerCredentialVault, DepositTarget, VaultIssuer
from services.runtime.crypto import CryptoError, PrivateSealingKey, VerifyKey, open_text
from services.runtime.service import ServiceRuntime
from services.runtime.telemetry import current_ticket
from services.runtime.verdicts import SignatureError, verify_verdict

log = logging.getLogger(__name__)

# Namespace of the executor's derived event ids: uuid5(ns, "<claim id>:<outbox key>").
_EVENT_NS = uuid.UUID("0c8b5d7e-5f0a-4f4e-8a7d-2f6f3c9e1b42")
OUTPUT_AUDIT_CHARS = 64 * 1024


def derived_event_id(claim_id: str, key: str) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NS, f"{claim_id}:{key}")


@dataclass(frozen=True, kw_only=True)
class Dependencies:
    runtime: ServiceRuntime
    claims: ClaimStore
    connector: SshConnector
    vault: CustomerCredentialVault
    sealing_keys: Mapping[str, PrivateSealingKey]
    verify_keys: Mapping[str, VerifyKey]
    settings: ExecutorSettings
    owner: Owner


class AuditCommandLog:
    """Each command of a run, appended to the ticket's audit chain as it returns."""

    def __init__(self, runtime: ServiceRuntime, *, claim: Claim, actor: str, host: str,
                 user: str, dry_run: bool) -> None:
        self._runtime = runtime
        self._claim = claim
        self._actor = actor
        self._host = host
        self._user = user
        self._dry_run = dry_run

    async def command(self, *, index: int, step: str, phase: Phase, n: int, display: str,
                      root: bool, result: CommandResult) -> None:
        claim = self._claim
        await self._runtime.audit.append(
            claim.ticket_id,
            record_id=f"cmd:{claim.id}:{claim.attempt}:{index:03d}:{phase}:{n}",
            kind="command", actor=self._actor,
            # The audit log redacts by value (the customer's and every generated password
            # are known to the redactor) before hashing and storing.
            data={"revision": claim.revision, "step": step, "step_index": index,
                  "phase": phase, "command": display, "as_administrator": root,
                  "host": self._host, "user": self._user, "exit_status": result.exit_status,
                  "duration_ms": result.duration_ms, "error": result.error,
                  "stdout": result.stdout[-OUTPUT_AUDIT_CHARS:],
                  "stderr": result.stderr[-OUTPUT_AUDIT_CHARS:], "dry_run": self._dry_run,
                  "attempt": claim.attempt})


class Interventions:
    def __init__(self, deps: Dependencies) -> None:
        self._deps = deps
        self._tracer = deps.runtime.telemetry.tracer()
        # Claims running in this process. The store's compare-and-set accepts the current
        # owner re-acquiring (that is how a restarted worker of the same process resumes),
        # so two callers in one process must be kept apart here.
        self._running: set[str] = set()

    async def run(self, claim_id: str) -> None:
        """Run ``claim_id`` if this executor can take it; return when it is closed, handed
        over, or no longer ours."""
        if claim_id in self._running:
            return
        self._running.add(claim_id)
        try:
            await self._acquire_and_run(claim_id)
        finally:
            self._running.discard(claim_id)

    async def _acquire_and_run(self, claim_id: str) -> None:
        deps = self._deps
        claim = await deps.claims.acquire(claim_id, deps.owner,
                                          lease_s=deps.settings.executor_lease_s)
        if claim is None:
            return
        token = current_ticket.set(claim.ticket_id)
        task = asyncio.current_task()
        beat = asyncio.create_task(self._heartbeat(claim_id, task))
        try:
            await self._run(claim)
        except LeaseLost:
            log.warning("claim %s was taken over by another executor; stopped", claim_id)
        except asyncio.CancelledError:
            if beat.done() and not beat.cancelled() and isinstance(beat.exception(), LeaseLost):
                log.warning("lease on claim %s lost; stopped", claim_id)
                return
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await beat
            current_ticket.reset(token)

    async def _heartbeat(self, claim_id: str, task: asyncio.Task[Any] | None) -> None:
        lease = self._deps.settings.executor_lease_s
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await self._deps.claims.renew(claim_id, self._deps.owner, lease_s=lease)
            except LeaseLost:
                if task is not None:
                    task.cancel()
                raise
            except Exception:  # noqa: BLE001 - a store hiccup: the next beat retries well within the lease
                log.warning("lease renewal of claim %s failed; retrying", claim_id)

    # --- the procedure -------------------------------------------------------------------

    async def _run(self, claim: Claim) -> None:
        deps = self._deps
        parent = propagate.extract(claim.trace_carrier)
        with self._tracer.start_as_current_span(
            "executor intervention", context=parent,
            attributes={"ticket.id": claim.ticket_id, "ticket.revision": claim.revision,
                        "claim.attempt": claim.attempt},
        ) as span:
            try:
                verdict = parse_event(claim.verdict_json, AuthorizationVerified)
                verify_verdict(verdict, deps.verify_keys)
            except (SignatureError, ValueError) as exc:
                # The claim store was edited: refuse, say why, publish nothing for a
                # verdict that cannot be trusted.
                await self._audit(claim, f"claim-refused:{claim.id}", "claim_refused",
                                  {"reason": str(exc)[:500]})
                await deps.claims.close(claim.id, deps.owner, "refused", outcome="refused")
                span.set_status(Status(StatusCode.ERROR, "stored verdict does not verify"))
                return
            if claim.attempt > 1:
                await self._audit(claim, f"resume:{claim.id}:{claim.attempt}", "claim_resumed",
                                  {"attempt": claim.attempt,
                                   "steps_journalled": sorted(claim.steps)})
            if "z_completed" in claim.outbox:
                await self._publish_outbox(claim)
                await deps.claims.close(claim.id, deps.owner, "finished",
                                        outcome=self._staged_outcome(claim))
                return
            if claim.attempt > deps.settings.executor_max_attempts:
                await self._hand_over(claim, verdict, self._decision_of(claim) or _retry_decision(
                    verdict), kind="retries", handover=Handover(
                    index=-1, step="automation", title="Finish the intervention by hand",
                    reason=f"the automated run was interrupted {claim.attempt - 1} times",
                    instructions=("Review the audit trail of this ticket: every command run so "
                                  "far is recorded there.",
                                  "Finish or undo the intervention by hand and report.")))
                return
            await self._proceed(claim, verdict)

    async def _proceed(self, claim: Claim, verdict: AuthorizationVerified) -> None:
        deps = self._deps
        try:
            credential = self._open_credentials(verdict)
        except CryptoError as exc:
            await self._complete(claim, verdict, outcome="refused", access_method=None,
                                 reason=f"the credentials could not be opened: {exc}")
            return
        session: SshSession | None = None
        try:
            decision = self._decision_of(claim)
            if decision is None:
                decision, session = await self._decide(claim, verdict, credential)
                stored = await deps.claims.set_decision(claim.id, deps.owner, asdict(decision))
                decision = AccessDecision(**stored)
                claim.decision = stored
                await self._audit(claim, f"access:{claim.id}", "access_decision", stored)
            await self._act(claim, verdict, decision, credential, session)
        finally:
            if session is not None:
                await session.aclose()

    async def _decide(self, claim: Claim, verdict: AuthorizationVerified,
                      credential: Credential) -> tuple[AccessDecision, SshSession | None]:
        server = verdict.server
        facts = ServerFacts(type=server.type, os_family=server.os_family, ipkvm=server.ipkvm,
                            rescue=server.rescue)
        category = verdict.ticket.category
        if verdict.review_required:
            return AccessDecision(
                method="ssh" if server.os_family == "linux" else "windows_openssh",
                mode="engineer", disposition="hand_over", runbook=f"review.{category}",
                reason=f"auth asked for a review before any automation: "
                       f"{verdict.review_reason}"), None
        session: SshSession | None = None
        probe = Probe(outcome="not_attempted")
        if needs_probe(category):
            probe, session = await self._probe(claim, verdict, credential)
        decision = select_access(facts, category, probe)
        if decision.disposition == "run":
            try:
                runbook = RUNBOOKS[decision.runbook]
                runbook.steps(runbook.parse_params(verdict.ticket.parameters),
                              server.os_family)
            except ParameterError as exc:
                decision = AccessDecision(
                    method=decision.method, mode="automated", disposition="clarify",
                    runbook=decision.runbook, reason=str(exc),
                    question=f"We could not use the details of your request: {exc}. Please "
                             "correct them on this ticket.")
        return decision, session

    async def _probe(self, claim: Claim, verdict: AuthorizationVerified,
                     credential: Credential) -> tuple[Probe, SshSession | None]:
        try:
            session = await self._connect(claim, verdict, credential)
        except HostKeyMismatch as exc:
            return Probe(outcome="host_key_mismatch", detail=str(exc)), None
        except SshError as exc:
            return Probe(outcome=exc.outcome, detail=str(exc)), None
        return Probe(outcome="ok", privileged=session.privileged), session

    async def _connect(self, claim: Claim, verdict: AuthorizationVerified,
                       credential: Credential) -> SshSession:
        deps = self._deps
        server = verdict.server
        target = SshTarget(host=str(server.ip), port=server.ssh_port,
                           service_id=server.service_id, inventory_key=server.ssh_host_key)
        where = {"host": target.host, "port": target.port, "service_id": target.service_id}
        with self._tracer.start_as_current_span("ssh connect", attributes={
                "net.peer.name": target.host, "net.peer.port": target.port}):
            try:
                session = await deps.connector.open(target, credential,
                                                    platform=server.os_family,
                                                    ticket_id=claim.ticket_id)
            except HostKeyMismatch as exc:
                await self._audit(claim, f"hostkey-mismatch:{claim.id}:{claim.attempt}",
                                  "host_key_mismatch",
                                  {**where, "expected": exc.expected, "offered": exc.offered,
                                   "pinned_by": exc.source, "refused": True})
                raise
            except SshError as exc:
                await self._audit(claim, f"ssh-failed:{claim.id}:{claim.attempt}",
                                  "ssh_connect_failed",
                                  {**where, "outcome": exc.outcome, "detail": str(exc)})
                raise
        key = session.host_key
        await self._audit(claim, f"hostkey:{claim.id}:{claim.attempt}", "host_key", {
            **where, "fingerprint": key.fingerprint, "source": key.source,
            "trusted_on_first_use": key.newly_pinned, "user": credential.username,
            "privilege": session.privilege})
        return session

    def _open_credentials(self, verdict: AuthorizationVerified) -> Credential:
        sealed = verdict.ticket.credentials
        # open_text teaches the plaintext to the process redactor before returning it.
        secret = open_text(sealed.sealed, self._deps.sealing_keys)
        if sealed.kind == "password":
            return Credential(username=sealed.username, password=secret)
        return Credential(username=sealed.username, private_key=secret)

    async def _act(self, claim: Claim, verdict: AuthorizationVerified, decision: AccessDecision,
                   credential: Credential, session: SshSession | None) -> None:
        deps = self._deps
        if decision.disposition == "refuse":
            await self._complete(claim, verdict, outcome="refused", reason=decision.reason,
                                 access_method=decision.method)
            return
        if decision.disposition == "clarify":
            await self._stage(claim, "b_clarification", ClarificationRequested.caused_by(
                verdict, producer="executor",
                event_id=derived_event_id(claim.id, "b_clarification"),
                question=decision.question or decision.reason, field="credentials"))
            await self._complete(claim, verdict, outcome="unresolved", reason=decision.reason,
                                 access_method=decision.method)
            return
        dry_run = deps.settings.executor_dry_run
        await self._stage(claim, "a_started", InterventionStarted.caused_by(
            verdict, event_id=derived_event_id(claim.id, "a_started"),
            access_method=decision.method, reason=decision.reason[:2000],
            runbook=decision.runbook, mode=decision.mode, timeline=decision.timeline,
            dry_run=dry_run))
        await self._publish_outbox(claim)
        if decision.disposition == "hand_over":
            await self._hand_over(claim, verdict, decision, kind=decision.runbook.split(".")[0])
            return

        if session is None:
            try:
                session = await self._connect(claim, verdict, credential)
            except SshError as exc:
                await self._hand_over(claim, verdict, decision, kind="reconnect",
                                      handover=Handover(
                                          index=-1, step="reconnect", title="Reconnect",
                                          reason=f"the executor could not reconnect after a "
                                                 f"restart: {exc}",
                                          instructions=(
                                              "Review the audit trail of this ticket for the "
                                              "steps already done.",
                                              "Reach the server and finish the runbook by "
                                              "hand.")))
                return
        runbook = RUNBOOKS[decision.runbook]
        params = runbook.parse_params(verdict.ticket.parameters)
        engine = Engine(
            host=session, journal=ClaimJournal(store=deps.claims, claim=claim, owner=deps.owner),
            log=AuditCommandLog(deps.runtime, claim=claim,
                                actor=f"executor:{deps.owner.id}",
                                host=f"{session.target.host}:{session.target.port}",
                                user=credential.username, dry_run=dry_run),
            issuer=VaultIssuer(vault=deps.vault, claim_id=claim.id, attempt=claim.attempt,
                               target=DepositTarget(account_id=verdict.account_id,
                                                    ticket_id=verdict.ticket_id,
                                                    revision=verdict.revision,
                                                    service_id=verdict.server.service_id)),
            secrets_sink=deps.runtime.redactor, tracer=self._tracer,
            options=RunOptions(dry_run=dry_run,
                               service_settle_s=deps.settings.executor_service_settle_s))
        result = await engine.run(runbook, params)
        if result.handover is not None:
            await self._hand_over(claim, verdict, decision, kind="resume",
                                  handover=result.handover, run=result)
            return
        await self._finish_run(claim, verdict, decision, result, dry_run=dry_run)

    async def _finish_run(self, claim: Claim, verdict: AuthorizationVerified,
                          decision: AccessDecision, result: RunResult, *, dry_run: bool) -> None:
        redact = self._deps.runtime.redactor.redact_text
        found = hardware.escalations(evidence(result.facts))
        for n, escalation in enumerate(found):
            key = f"c_escalation_{n:02d}"
            await self._stage(claim, key, HardwareEscalated.caused_by(
                verdict, event_id=derived_event_id(claim.id, key),
                component=escalation.component,
                device=_one_line(redact(escalation.device))[:500] if escalation.device else None,
                evidence=tuple(redact(e)[:2000] for e in escalation.evidence),
                severity=escalation.severity))
        verdict_ = decide_outcome(result, found, dry_run=dry_run)
        advice = recommendations(
            credentials_shared=True, new_credentials=result.new_credentials_issued,
            hardware=bool(found), dry_run=dry_run, findings=findings(result.facts))
        await self._complete(claim, verdict, outcome=verdict_.outcome, reason=verdict_.reason,
                             access_method=decision.method, run=result, advice=advice,
                             dry_run=dry_run)

    # --- closing -------------------------------------------------------------------------

    async def _complete(self, claim: Claim, verdict: AuthorizationVerified, *, outcome: Any,
                        reason: str | None, access_method: Any, run: RunResult | None = None,
                        advice: tuple[str, ...] | None = None, dry_run: bool = False) -> None:
        redact = self._deps.runtime.redactor.redact_text
        actions = tuple(
            Action(step=_one_line(a.step)[:500], command=redact(a.command)[:2000] or "-",
                   exit_status=a.exit_status if a.exit_status is None
                   or -255 <= a.exit_status <= 255 else None,
                   duration_ms=a.duration_ms, result=a.result)
            for a in (run.actions if run else ()))[:500]
        if advice is None:
            advice = recommendations(credentials_shared=True, new_credentials=False,
                                     hardware=False, dry_run=False)
        await self._stage(claim, "z_completed", InterventionCompleted.caused_by(
            verdict, event_id=derived_event_id(claim.id, "z_completed"), outcome=outcome,
            access_method=access_method, actions=actions,
            new_credentials_issued=bool(run and run.new_credentials_issued),
            recommendations=advice, reason=redact(reason)[:2000] if reason else None,
            dry_run=dry_run))
        await self._publish_outbox(claim)
        await self._deps.claims.close(claim.id, self._deps.owner, "finished", outcome=outcome)

    async def _hand_over(self, claim: Claim, verdict: AuthorizationVerified,
                         decision: AccessDecision, *, kind: str,
                         handover: Handover | None = None, run: RunResult | None = None) -> None:
        """Rescue is automated by the rescue service (it picks the claim up from the
        hand-over record); anything else is a ManualStepRequested for an engineer."""
        deps = self._deps
        record: dict[str, Any] = {"kind": kind, "method": decision.method,
                                  "runbook": decision.runbook, "reason": decision.reason,
                                  "ticket_id": claim.ticket_id, "revision": claim.revision}
        if decision.method != "rescue" or handover is not None:
            if handover is not None:
                step = handover
            elif kind == "review":
                step = _review_handover(verdict, decision)
            else:
                step = _console_handover(verdict, decision)
            step_id = f"r{claim.revision}-{kind}"[:64]
            key = f"d_manual_{kind}"[:60]
            await self._stage(claim, key, ManualStepRequested.caused_by(
                verdict, event_id=derived_event_id(claim.id, key), step_id=step_id,
                method=decision.method, instructions=step.instructions,
                verification=step.verification, reason=step.reason[:2000]))
            record.update({"step_id": step_id, "step": step.step, "reason": step.reason})
        if run is not None:
            record["steps_done"] = [s.name for s in run.steps]
        await self._publish_outbox(claim)
        await deps.claims.close(claim.id, deps.owner, "handed_over", handover=record)

    # --- outbox and audit ----------------------------------------------------------------

    async def _stage(self, claim: Claim, key: str, event: EventEnvelope) -> None:
        stored = await self._deps.claims.stage(claim.id, self._deps.owner, key,
                                               event.model_dump_json())
        claim.outbox.setdefault(key, {"event": stored, "published": False})

    async def _publish_outbox(self, claim: Claim) -> None:
        for key in sorted(claim.outbox):
            entry = claim.outbox[key]
            if entry.get("published"):
                continue
            await self._deps.runtime.publish(parse_event(str(entry["event"])))
            await self._deps.claims.mark_published(claim.id, key)
            entry["published"] = True

    def _staged_outcome(self, claim: Claim) -> str | None:
        staged = parse_event(str(claim.outbox["z_completed"]["event"]), InterventionCompleted)
        return staged.outcome

    def _decision_of(self, claim: Claim) -> AccessDecision | None:
        return AccessDecision(**claim.decision) if claim.decision else None

    async def _audit(self, claim: Claim, record_id: str, kind: str,
                     data: Mapping[str, Any]) -> None:
        await self._deps.runtime.audit.append(
            claim.ticket_id, record_id=record_id, kind=kind,
            actor=f"executor:{self._deps.owner.id}",
            data={"revision": claim.revision, **data})


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


def _retry_decision(verdict: AuthorizationVerified) -> AccessDecision:
    return AccessDecision(method="ssh" if verdict.server.os_family == "linux"
                          else "windows_openssh", mode="engineer", disposition="hand_over",
                          runbook=f"engineer.{verdict.ticket.category}",
                          reason="the automated run could not complete")


_CONSOLE_NAMES = {"ipkvm": "the IP-KVM console", "vnc": "the VNC console",
                  "datacenter": "on-site access in the data centre",
                  "ssh": "SSH", "windows_openssh": "Windows OpenSSH", "rescue": "rescue mode"}
_CATEGORY_WORK = {
    "boot_repair": "Repair the boot loader (GRUB, or Windows Boot Manager with bootrec/bcdboot), "
                   "keeping a copy of what you change.",
    "filesystem_repair": "Check the unmounted filesystems (fsck -f / chkdsk /f) and repair them; "
                         "note the before/after summary. A failing disk goes to the "
                         "hardware-failure procedure.",
    "root_password_reset": "Reset the administrator password; deliver it through the "
                           "customer's account area, never on the ticket.",
    "network_recovery": "Restore the network and firewall configuration so the server is "
                        "reachable again, keeping backups of what you change.",
    "remote_access_restoration": "Restore SSH/RDP access (service running, configuration "
                                 "valid, firewall open for it), keeping backups of changes.",
    "service_restart": "Restart the service the customer named after checking its "
                       "configuration, and read its log.",
    "diagnostics": "Collect OS diagnostics (load, memory, disks, errors, SMART, RAID, ECC).",
    "software_installation": "Install the packages the customer asked for with the system's "
                             "package manager, simulating first.",
}


def _review_handover(verdict: AuthorizationVerified, decision: AccessDecision) -> Handover:
    server = verdict.server
    return Handover(
        index=-1, step=decision.runbook, title="Review before automation",
        reason=decision.reason,
        instructions=(
            f"Auth flagged this ticket for review: {verdict.review_reason}.",
            f"Check the recent interventions on server {server.service_name} "
            f"({server.service_id}) and whether this request should go ahead.",
            "Report this step done to let the intervention proceed, or failed to stop it.",
        ),
        verification=("The customer's request and written authorization match this server.",),
    )


def _console_handover(verdict: AuthorizationVerified, decision: AccessDecision) -> Handover:
    server = verdict.server
    category = verdict.ticket.category
    where = _CONSOLE_NAMES.get(decision.method, decision.method)
    return Handover(
        index=-1, step=decision.runbook, title=f"{category.replace('_', ' ')} via {where}",
        reason=decision.reason,
        instructions=(
            f"Open {where} for server {server.service_name} ({server.service_id}, {server.ip}, "
            f"{server.datacenter}).",
            _CATEGORY_WORK.get(category, "Do what the ticket asks, with minimal changes."),
            "Record every command you run and its result in your report on this step.",
        ),
        verification=("The customer can log in to the server again (SSH or RDP from outside).",
                      "Nothing beyond what the ticket asked for was changed."),
    )
