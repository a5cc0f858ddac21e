"""The rescue flow's records: each provider phase as a step outcome, and the journal read back.

A rescue run's phases (boot into rescue, log in, boot back, verify) are reported to the
customer like runbook steps; their outcomes are journalled in the claim's ``rescue`` field
and, with the runbook's own journal, make up what a resumed run — or the completion after
an engineer's step — reports without reconnecting to a rescue system that is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.executor.claim_record import Claim
from services.executor.runbooks.model import StepResult
from services.executor.runbooks.results import (
    ActionRecord,
    CredentialIssuer,
    JournalEntry,
    RunResult,
    StepOutcome,
)


class RecordingIssuer:
    """Passes deposits through to the vault and remembers the activated secret in memory,
    so the verification after boot-back can log in with it. Never stored anywhere."""

    def __init__(self, inner: CredentialIssuer) -> None:
        self._inner = inner
        self._pending: dict[str, tuple[str, str]] = {}
        self.issued: tuple[str, str] | None = None  # (account, secret)

    async def unavailable(self) -> str | None:
        return await self._inner.unavailable()

    async def deposit(self, *, step_key: str, account: str, secret: str) -> str:
        deposit_id = await self._inner.deposit(step_key=step_key, account=account, secret=secret)
        self._pending[deposit_id] = (account, secret)
        return deposit_id

    async def activate(self, deposit_id: str) -> None:
        await self._inner.activate(deposit_id)
        self.issued = self._pending.pop(deposit_id, self.issued)

    async def discard(self, deposit_id: str) -> None:
        self._pending.pop(deposit_id, None)
        await self._inner.discard(deposit_id)


_PHASE_TITLES = {
    "boot_rescue": "Boot the server into the provider's rescue system",
    "access": "Receive the rescue system's one-time access",
    "connect": "Log in to the rescue system over SSH",
    "boot_disk": "Boot the server back from its own disk",
    "verify": "Verify SSH access to the server from outside",
}


def phase_outcome(name: str, result: StepResult, *, command: str, duration_ms: int = 0,
           reason: str | None = None, facts: Mapping[str, Any] | None = None) -> StepOutcome:
    return StepOutcome(index=-1, name=f"rescue_{name}", result=result, reason=reason,
                       action=ActionRecord(step=_PHASE_TITLES[name], command=command[:2000],
                                           exit_status=None, duration_ms=duration_ms,
                                           result=result),
                       facts=dict(facts or {}))


def outcome_from(data: Mapping[str, Any]) -> StepOutcome:
    action = ActionRecord.from_json(data["action"])
    return StepOutcome(index=-1, name=str(data["name"]), result=data["result"],
                       reason=data.get("reason"), action=action,
                       facts=dict(data.get("facts") or {}))


def outcome_json(outcome: StepOutcome) -> dict[str, Any]:
    return {"name": outcome.name, "result": outcome.result, "reason": outcome.reason,
            "action": outcome.action.to_json(), "facts": outcome.facts}


def journal_outcomes(claim: Claim, *, with_rescue: bool = False) -> RunResult:
    """The runbook's finished steps as the journal has them (a resumed run that is past
    the runbook reports them without reconnecting to a rescue system that is gone); with
    ``with_rescue``, framed by the provider phases the claim recorded."""
    steps = []
    facts: dict[str, Any] = {}
    phases = {k: outcome_from(v["outcome"]) for k, v in claim.rescue.items()
              if with_rescue and isinstance(v, dict) and v.get("outcome")}
    for key in sorted(claim.steps):
        entry = JournalEntry.from_json(claim.steps[key])
        facts.update(entry.facts)
        if entry.state == "done" and entry.action is not None and entry.result is not None:
            steps.append(StepOutcome(index=int(key), name=entry.name, result=entry.result,
                                     reason=entry.reason, action=entry.action,
                                     facts=entry.facts, credential_issued=entry.credential_active,
                                     backups=entry.backups))
    first = [phases[k] for k in ("boot_rescue",) if k in phases]
    last = [phases[k] for k in ("boot_disk", "verify") if k in phases]
    return RunResult(steps=(*first, *steps, *last), facts=facts)
