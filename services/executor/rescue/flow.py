"""One rescue-mode intervention: boot the rescue system, repair, boot back, verify.

The procedure, each phase journalled in the claim (``rescue.*``) before the next starts, so
an executor resumed after a crash continues where the last one stopped and never
power-cycles the server twice (the provider deduplicates on ``request_id`` as well):

1. **boot_rescue** — the provider boots the server into its rescue system; progress is
   polled until it succeeded, failed, or ``EXECUTOR_RESCUE_BOOT_TIMEOUT_S`` passed;
2. **access** — the rescue system's address, host key and one-time root password, sealed to
   the executor's own key in the claim (the provider may hand them out once only);
3. **runbook** — SSH into the rescue system (its host key comes from the provider: the
   password is never sent to an unauthenticated host) and run the rescue runbook through
   the engine: journalled, every command audited, backups recorded;
4. **boot_disk** — the provider boots the server back to its own disk (also after a failed
   repair: a server is never left in the rescue system by the automation);
5. **verify** — from outside, as the customer would: SSH to the server's own address with
   the host key read from its disk, logging in with the new password (password reset) or
   the customer's credentials.

A provider that fails, times out or does not answer ends the run with a failed step whose
reason says so — the ticket gets a clear InterventionCompleted, never a stuck claim. A
runbook step that cannot be proven safe to repeat after a crash becomes a manual step, with
the server left in the rescue system for the engineer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from schemas.events import AuthorizationVerified
from schemas.values import SealedSecret
from services.executor.claims import Claim
from services.executor.rescue.phases import (
    RecordingIssuer,
    journal_outcomes,
    outcome_from,
    outcome_json,
    phase_outcome,
)
from services.executor.rescue.ports import (
    RescueFailed,
    RescuePorts,
    RescueResult,
    RescueTiming,
)
from services.executor.rescue.provider import (
    ProviderAction,
    ProviderError,
    RescueAccess,
)
from services.executor.rescue.runbooks import RESCUE_RUNBOOKS, rescue_params
from services.executor.runbooks.engine import (
    CredentialIssuer,
    Handover,
    RunResult,
    StepOutcome,
)
from services.executor.runbooks.model import StepResult
from services.executor.ssh import (
    Credential,
    SshError,
    SshSession,
    SshTarget,
)
from services.runtime.telemetry import client_span

__all__ = ["RescueFailed", "RescuePorts", "RescueResult", "RescueRun", "RescueTiming"]


class RescueRun:
    def __init__(self, ports: RescuePorts, claim: Claim, verdict: AuthorizationVerified,
                 credential: Credential, issuer: CredentialIssuer) -> None:
        self._p = ports
        self._claim = claim
        self._verdict = verdict
        self._credential = credential
        self._issuer = RecordingIssuer(issuer)
        self._state = claim.rescue

    # --- the procedure -------------------------------------------------------------------

    async def run(self) -> RescueResult:
        # A rescue run lasts minutes to hours (boots, fsck); other tickets' secrets arriving
        # meanwhile must not push this run's out of a bounded redactor while its output
        # can still show them. Secrets opened before the run are taught again to be held.
        with self._p.redactor.holding(self._claim.id):
            for secret in (self._credential.password, self._credential.private_key):
                if secret:
                    self._p.redactor.add(secret)
            return await self._run()

    async def _run(self) -> RescueResult:
        before: list[StepOutcome] = []
        run = RunResult(steps=(), facts={})
        try:
            before.append(await self._boot("boot_rescue"))
            if "runbook" in self._state:
                run = journal_outcomes(self._claim)
            else:
                access = await self._access()
                session, connected = await self._connect(access)
                before.append(connected)
                try:
                    run = await self._runbook(session)
                finally:
                    await session.aclose()
                if run.handover is not None:
                    # Left in the rescue system on purpose: the engineer continues there.
                    return RescueResult(run=self._combine(before, run, []),
                                        handover=self._rescue_handover(run.handover))
                await self._record("runbook", {"done": True})
        except RescueFailed as exc:
            before.append(phase_outcome(exc.phase, "failed",
                                        command=self._command(exc.phase), reason=exc.reason))
            # Whatever failed, the automation never leaves a server in the rescue system
            # (or switched off): it asks for the disk, and says if that failed too.
            return RescueResult(run=self._combine(before, run, await self._back(None)))
        repaired = not any(s.result in ("failed", "rolled_back") for s in run.steps)
        return RescueResult(run=self._combine(before, run,
                                              await self._back(run if repaired else None)))

    async def _back(self, verify: RunResult | None) -> list[StepOutcome]:
        """Boot back to disk; verify from outside when ``verify`` (the repair's result)."""
        try:
            outcomes = [await self._boot("boot_disk")]
        except RescueFailed as exc:
            return [phase_outcome("boot_disk", "failed", command=self._command("boot_disk"),
                                  reason=f"{exc.reason}; the server may still be in the "
                                         "rescue system: support follows up")]
        if verify is not None:
            outcomes.append(await self._verify(verify))
        return outcomes

    def _combine(self, before: list[StepOutcome], run: RunResult,
                 after: list[StepOutcome]) -> RunResult:
        facts = dict(run.facts)
        for outcome in (*before, *after):
            facts.update(outcome.facts)
        return RunResult(steps=(*before, *run.steps, *after), facts=facts)

    # --- provider phases -----------------------------------------------------------------

    def _command(self, phase: str) -> str:
        server = self._verdict.server.service_id
        return {"boot_rescue": f"provider API: boot-rescue {server}",
                "access": "provider API: rescue-credentials",
                "connect": "ssh root@<rescue system>",
                "boot_disk": f"provider API: boot-disk {server}",
                "verify": f"ssh {self._verdict.server.ip}:{self._verdict.server.ssh_port}",
                }.get(phase, phase)

    async def _boot(self, phase: Literal["boot_rescue", "boot_disk"]) -> StepOutcome:
        done = self._state.get(phase)
        if done and done.get("outcome"):
            return outcome_from(done["outcome"])
        server_id = self._verdict.server.service_id
        began = time.monotonic()
        with self._p.tracer.start_as_current_span(f"rescue {phase}", attributes={
                "server.id": server_id, "rescue.phase": phase}):
            action_id = (done or {}).get("action_id")
            requested_at = (done or {}).get("requested_at")
            if action_id is None:
                request_id = f"{self._claim.id}:{'rescue' if phase == 'boot_rescue' else 'disk'}"
                try:
                    start = (self._p.provider.boot_rescue if phase == "boot_rescue"
                             else self._p.provider.boot_disk)
                    action = await start(server_id, request_id=request_id)
                except ProviderError as exc:
                    raise RescueFailed(phase, f"the provider did not accept the request "
                                              f"({exc.kind}): {exc}") from None
                action_id = action.id
                requested_at = datetime.now(UTC).isoformat()
                await self._record(phase, {"action_id": action_id, "requested_at": requested_at,
                                           "request_id": request_id})
                await self._p.audit(self._claim, f"rescue:{self._claim.id}:{phase}:requested",
                                    "rescue_requested", {"phase": phase, "action_id": action_id,
                                                         "server_id": server_id,
                                                         "provider_message": action.message})
            action = await self._wait(phase, str(action_id), str(requested_at))
        outcome = phase_outcome(
            phase, "changed", duration_ms=int((time.monotonic() - began) * 1000),
            command=f"{self._command(phase)} (provider action {action.id}: "
                    f"{action.message or action.status})")
        await self._record(phase, {"action_id": action_id, "requested_at": requested_at,
                                   "outcome": outcome_json(outcome)})
        return outcome

    async def _wait(self, phase: str, action_id: str, requested_at: str) -> ProviderAction:
        timing = self._p.timing
        # The deadline counts from the request, which is journalled: a resumed run does not
        # get a fresh timeout.
        deadline = datetime.fromisoformat(requested_at).timestamp() + timing.boot_timeout_s
        last: ProviderAction | None = None
        seen: tuple[str, int] | None = None
        errors = 0
        while True:
            try:
                last = await self._p.provider.action(action_id)
                errors = 0
            except ProviderError as exc:
                errors += 1
                if exc.kind != "unavailable" or time.time() > deadline:
                    raise RescueFailed(phase, f"the provider's status of action {action_id} "
                                              f"failed ({exc.kind}): {exc}") from None
            if last is not None and (last.status, last.progress) != seen:
                seen = (last.status, last.progress)
                await self._p.audit(
                    self._claim, f"rescue:{self._claim.id}:{phase}:{last.status}:{last.progress}",
                    "rescue_progress", {"phase": phase, "action_id": action_id,
                                        "status": last.status, "progress": last.progress,
                                        "provider_message": last.message})
            if last is not None and last.status == "succeeded":
                return last
            if last is not None and last.status == "failed":
                raise RescueFailed(phase, f"the provider reports that {phase.replace('_', ' ')} "
                                          f"failed: {last.message or 'no reason given'}")
            if time.time() > deadline:
                where = f" (last: {last.progress}% {last.message})" if last is not None else ""
                raise RescueFailed(phase, f"{phase.replace('_', ' ')} did not finish within "
                                          f"{timing.boot_timeout_s:.0f} s{where}")
            await asyncio.sleep(timing.poll_s)

    async def _access(self) -> RescueAccess:
        stored = self._state.get("access")
        if stored:
            return RescueAccess(address=stored["address"], port=int(stored["port"]),
                                username=stored["username"], host_key=stored["host_key"],
                                password=self._p.unseal(SealedSecret.model_validate(
                                    stored["password"])))
        action_id = str(self._state["boot_rescue"]["action_id"])
        try:
            access = await self._p.provider.rescue_credentials(action_id)
        except ProviderError as exc:
            raise RescueFailed("access", f"the provider did not give the rescue system's "
                                         f"access ({exc.kind}): {exc}") from None
        sealed = self._p.seal(access.password)  # seal_text teaches the redactor first
        await self._record("access", {"address": access.address, "port": access.port,
                                      "username": access.username, "host_key": access.host_key,
                                      "password": sealed.model_dump()})
        return access

    async def _connect(self, access: RescueAccess) -> tuple[SshSession, StepOutcome]:
        server = self._verdict.server
        target = SshTarget(host=access.address, port=access.port,
                           service_id=f"{server.service_id}.rescue",
                           inventory_key=access.host_key)
        credential = Credential(username=access.username, password=access.password)
        began = time.monotonic()
        deadline = began + self._p.timing.ssh_wait_s
        with client_span(self._p.tracer, "rescue ssh connect", host=target.host,
                         port=target.port):
            while True:
                try:
                    session = await self._p.connector.open(target, credential, platform="linux",
                                                           ticket_id=self._claim.ticket_id)
                    break
                except SshError as exc:
                    # The rescue system's sshd may start a moment after the provider says
                    # "booted"; anything but "not there yet" is final.
                    if exc.outcome != "unreachable" or time.monotonic() > deadline:
                        raise RescueFailed("connect", f"could not log in to the rescue system "
                                                      f"at {target.host}: {exc}") from None
                    await asyncio.sleep(min(2.0, self._p.timing.poll_s))
        await self._p.audit(self._claim, f"rescue:{self._claim.id}:{self._claim.attempt}:hostkey",
                            "rescue_host_key", {
                                "host": target.host, "port": target.port,
                                "fingerprint": session.host_key.fingerprint,
                                "source": "provider", "privilege": session.privilege})
        if session.privilege == "none":
            await session.aclose()
            raise RescueFailed("connect", "the rescue system's account has no root rights")
        return session, phase_outcome(
            "connect", "ok", command=f"ssh {access.username}@{target.host}:{target.port} "
                                     f"(host key {session.host_key.fingerprint}, from the "
                                     "provider)",
            duration_ms=int((time.monotonic() - began) * 1000))

    async def _runbook(self, session: SshSession) -> RunResult:
        runbook = RESCUE_RUNBOOKS[f"rescue.{self._verdict.ticket.category}"]
        params = runbook.parse_params(rescue_params(self._verdict, self._p.management_sources))
        engine = self._p.engine(session, self._issuer)
        return await engine.run(runbook, params)

    def _rescue_handover(self, handover: Handover) -> Handover:
        access = self._state.get("access") or {}
        return Handover(
            index=handover.index, step=handover.step, title=handover.title,
            reason=handover.reason,
            instructions=(
                f"The server is in the provider's rescue system at {access.get('address')} "
                "(log in as root with the password from the provider panel, or boot it into "
                "rescue again).", *handover.instructions,
                "Boot the server back from its disk when done, and check SSH from outside."),
            verification=handover.verification)

    # --- verification ----------------------------------------------------------------------

    async def _verify(self, run: RunResult) -> StepOutcome:
        done = self._state.get("verify")
        if done and done.get("outcome"):
            return outcome_from(done["outcome"])
        server = self._verdict.server
        keys = [k for k in run.facts.get("server_host_keys") or [] if isinstance(k, str)]
        expected = self._expected_key(keys)
        if keys and server.ssh_host_key and server.ssh_host_key not in keys:
            # The disk is the authority (read through the provider-authenticated rescue
            # system); the inventory is stale and someone should update it.
            await self._p.audit(self._claim, f"rescue:{self._claim.id}:inventory-key",
                                "inventory_host_key_stale",
                                {"service_id": server.service_id,
                                 "inventory": server.ssh_host_key, "on_disk": keys})
        target = SshTarget(host=str(server.ip), port=server.ssh_port,
                           service_id=server.service_id,
                           inventory_key=expected or server.ssh_host_key,
                           # A server with rescue: its key comes from its disk or the
                           # inventory, never first use.
                           trust_first_use=False)
        credential, what = self._verification_credential(run)
        began = time.monotonic()
        deadline = began + self._p.timing.ssh_wait_s
        result: StepResult = "failed"
        note = ""
        with client_span(self._p.tracer, "rescue verify", host=target.host, port=target.port):
            while True:
                try:
                    session = await self._p.connector.open(target, credential,
                                                           platform=server.os_family,
                                                           ticket_id=self._claim.ticket_id)
                except SshError as exc:
                    if exc.outcome == "unreachable" and time.monotonic() < deadline:
                        await asyncio.sleep(min(2.0, self._p.timing.poll_s))
                        continue
                    if exc.outcome == "auth_failed":
                        if what == "the new password":
                            note = f"SSH answers, but refused {what}: {exc}"
                        else:
                            result = "ok"
                            note = (f"SSH answers and asks for credentials, but refused "
                                    f"{what}: check the credentials given on the ticket")
                    else:
                        note = (f"SSH did not answer within {self._p.timing.ssh_wait_s:.0f} s "
                                f"of boot-back: {exc}")
                    break
                result = "ok"
                note = f"logged in as {credential.username} with {what}"
                await session.aclose()
                break
        if result == "ok" and expected is not None:
            await self._pin(expected, keys)
        outcome = phase_outcome("verify", result,
                                command=f"{self._command('verify')}: {note}",
                                reason=None if result == "ok" else note,
                                duration_ms=int((time.monotonic() - began) * 1000),
                                facts={"findings_verify": [note]} if result == "ok" and
                                "refused" in note else {})
        await self._record("verify", {"outcome": outcome_json(outcome)})
        return outcome

    def _verification_credential(self, run: RunResult) -> tuple[Credential, str]:
        if self._issuer.issued is not None and run.facts.get("ssh_password_login", True):
            account, secret = self._issuer.issued
            return Credential(username=account, password=secret), "the new password"
        if run.new_credentials_issued:
            # The new password exists only sealed to the customer now (this run resumed
            # after a restart, or sshd refuses password logins for the account): the hash
            # was verified on the disk; from outside, SSH answering is what can be shown.
            return self._credential, ("the credentials on the ticket (the new password was "
                                      "verified against the disk in the rescue system)")
        return self._credential, "the credentials on the ticket"

    def _expected_key(self, keys: list[str]) -> str | None:
        """The host key to expect after boot-back: the inventory's key if the disk has it,
        else the first key read from the disk (ed25519 first)."""
        inventory = self._verdict.server.ssh_host_key
        if inventory and inventory in keys:
            return inventory
        return keys[0] if keys else None

    async def _pin(self, key: str, keys: list[str]) -> None:
        server = self._verdict.server
        try:
            pinned = await self._p.pins.get(server.service_id)
        except SshError:
            pinned = None  # a pin the executor did not write: the key read from disk replaces it
        if pinned == key:
            return
        if pinned is not None and pinned in keys:
            return  # another of the server's own keys: still right
        await self._p.pins.replace(server.service_id, key, host=str(server.ip),
                                   port=server.ssh_port, ticket_id=self._claim.ticket_id)
        await self._p.audit(self._claim, f"rescue:{self._claim.id}:pin", "host_key_pinned", {
            "service_id": server.service_id, "previous": pinned, "key": key,
            "source": "read from the server's disk through the rescue system"})

    async def _record(self, key: str, value: Mapping[str, Any]) -> None:
        merged = {**(self._state.get(key) or {}), **value}
        await self._p.claims.record_rescue(self._claim.id, self._p.owner, key, merged)
        self._state[key] = merged

