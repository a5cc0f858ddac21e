"""The one engine that runs every runbook: step by step, journalled, audited, resumable.

For each step the engine journals *before* it changes anything (``changing``) and after
(``changed``, then ``done``), so a run interrupted by a crash resumes exactly where it was:

- ``done``: the step is not run again; its facts and action are taken from the journal;
- ``changed``: the change went through; only the verification runs again;
- ``changing``: the change may or may not have happened. A step declared re-runnable runs
  its pre-check again, which decides (not needed any more → it had applied; still needed →
  the change runs again). Any other step is handed to an engineer: the engine never
  repeats a change it cannot prove safe to repeat.

Every command is passed to the :class:`CommandLog` (the audit trail) as soon as it returns,
each step runs in its own span, and a dry run executes pre-checks and simulations only.
The journal write before a change doubles as the lease check: an executor that lost its
claim gets :class:`LeaseLost` there and stops before touching the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import string
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace

from services.executor.procedure import step as steps
from services.executor.runbooks.model import (
    BackupNote,
    CommandResult,
    Context,
    FreshLogin,
    Operation,
    Phase,
    Results,
    Runbook,
    RunOptions,
    Step,
    StepResult,
)
from services.executor.runbooks.results import (
    ActionRecord,
    BackupLog,
    CommandLog,
    CredentialIssuer,
    Handover,
    Host,
    JournalEntry,
    JournalState,
    LeaseLost,
    RunResult,
    SecretSink,
    StepJournal,
    StepOutcome,
)

__all__ = [
    "PASSWORD_LENGTH", "ActionRecord", "BackupLog", "CommandLog", "CredentialIssuer",
    "Engine", "Handover", "Host", "JournalEntry", "JournalState", "LeaseLost", "RunResult",
    "SecretSink", "StepJournal", "StepOutcome", "generate_password",
]

PASSWORD_LENGTH = 24
# No characters that shells, chpasswd (":") or people (l/1/I/O/0) trip over.
_PASSWORD_ALPHABET = "".join(
    c for c in string.ascii_letters + string.digits + "%+-_=.,@" if c not in "lI1O0"
)


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password with at least one lower, upper, digit and symbol (CSPRNG)."""
    while True:
        password = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))
        if (any(c.islower() for c in password) and any(c.isupper() for c in password)
                and any(c.isdigit() for c in password)
                and any(not c.isalnum() for c in password)):
            return password


_DRY_RUN_SECRET = "<generated at run time>"  # noqa: S105 - a placeholder shown in plans


class Engine:
    def __init__(self, *, host: Host, journal: StepJournal, log: CommandLog,
                 issuer: CredentialIssuer | None, secrets_sink: SecretSink,
                 tracer: trace.Tracer, options: RunOptions,
                 backups: BackupLog | None = None) -> None:
        self._host = host
        self._backups = backups
        self._journal = journal
        self._log = log
        self._issuer = issuer
        self._sink = secrets_sink
        self._tracer = tracer
        self._options = options

    async def run(self, runbook: Runbook[Any], params: Any) -> RunResult:
        steps = runbook.steps(params, self._host.platform)
        ctx: Context[Any] = Context(params=params, platform=self._host.platform,
                                    options=self._options,
                                    facts={"privileged": self._host.privileged})
        outcomes: list[StepOutcome] = []
        stop = False
        for index, step in enumerate(steps):
            if stop:
                break
            prior = self._journal.entry(index)
            if prior is not None and prior.name != step.name:
                return RunResult(steps=tuple(outcomes), facts=ctx.facts, handover=Handover(
                    index=index, step=step.name, title=step.title,
                    reason=(f"the journal has step {prior.name!r} at position {index} but the "
                            f"runbook now has {step.name!r}: the runbook changed since the run "
                            "was interrupted"),
                    instructions=(f"Review the audit trail of this ticket and finish runbook "
                                  f"{runbook.name} by hand from step {index + 1}.",),
                ))
            with self._tracer.start_as_current_span(
                f"runbook step {runbook.name}.{step.name}",
                attributes={"runbook": runbook.name, "step": step.name, "step.index": index,
                            "dry_run": self._options.dry_run},
            ) as span:
                result = await self._step(index, step, ctx, prior)
                if isinstance(result, Handover):
                    span.set_attribute("step.result", "handed_over")
                    return RunResult(steps=tuple(outcomes), facts=ctx.facts, handover=result)
                span.set_attribute("step.result", result.result)
            outcomes.append(result)
            if result.result in ("failed", "rolled_back") and step.blocking:
                stop = True
        return RunResult(steps=tuple(outcomes), facts=ctx.facts)

    # --- one step ----------------------------------------------------------------------

    async def _step(self, index: int, step: Step[Any], ctx: Context[Any],
                    prior: JournalEntry | None) -> StepOutcome | Handover:
        """Step k: each choice of what comes next is :mod:`services.executor.procedure.step`."""
        resume: JournalState | None = prior.state if prior is not None else None
        if prior is not None and prior.state != "done":
            ctx.resuming = True
            ctx.facts.update(prior.facts)
        elif prior is None:
            ctx.resuming = False

        def missing() -> list[str]:
            return [r for r in step.requires if not ctx.satisfies(r)]

        edge = steps.on_entry(journalled=resume, rerunnable=lambda: step.is_rerunnable(ctx),
                              missing=lambda: bool(missing()))
        if edge.target == "done" and edge.result is None:  # journalled done: replay it
            assert prior is not None
            assert prior.result is not None
            assert prior.action is not None
            ctx.facts.update(prior.facts)
            return StepOutcome(index=index, name=step.name, result=prior.result,
                               reason=prior.reason, action=prior.action, facts=prior.facts,
                               credential_issued=prior.credential_active,
                               backups=prior.backups)
        if edge.target == "handed_over":
            return self._handover(index, step, "the executor stopped while this step was "
                                  "changing the server, and the step cannot be proven safe to "
                                  "repeat")
        if edge.target == "done":
            return await self._done(index, step, ctx, "skipped",
                                    reason=f"not available on this server: "
                                           f"{', '.join(missing())}", ops=(), results=())
        learnt: dict[str, Any] = dict(prior.facts) if prior is not None else {}

        pre_ops = tuple(step.precheck(ctx)) if step.precheck else ()
        pre = await self._run_all(index, step, "precheck", pre_ops)
        if step.learn is not None:
            new = dict(step.learn(pre, ctx))
            learnt.update(new)
            ctx.facts.update(new)
        broken = _first_failure(pre_ops, pre)
        refusal = step.refuse(pre, ctx) if broken is None and step.refuse is not None else None
        redo_credential = step.issues_credential is not None and resume is not None
        edge = steps.after_precheck(failed=broken is not None, refused=refusal is not None,
                                    has_change=step.change is not None, journalled=resume,
                                    redo_credential=redo_credential,
                                    needed=lambda: step.needed(pre, ctx))
        if edge.target == "done":
            reason = (f"pre-check: {broken}" if broken is not None else refusal)
            return await self._done(index, step, ctx, _result(edge), reason=reason,
                                    ops=pre_ops, results=pre, facts=learnt)
        deposit: str | None = None
        change_ops: tuple[Operation, ...] = ()
        change_results: Results = ()
        if edge.target == "simulate":
            assert step.change is not None
            sim_ops = tuple(step.simulate(ctx)) if step.simulate else ()
            sim = await self._run_all(index, step, "simulate", sim_ops)
            broken = _first_failure(sim_ops, sim)
            edge = steps.after_simulate(failed=broken is not None,
                                        dry_run=self._options.dry_run,
                                        issues_credential=step.issues_credential is not None)
            if edge.result == "failed":
                return await self._done(index, step, ctx, "failed",
                                        reason=f"simulation: {broken}", ops=sim_ops,
                                        results=sim, facts=learnt)
            if edge.result == "planned":
                if step.issues_credential is not None:
                    ctx.secrets["new_password"] = _DRY_RUN_SECRET
                planned = tuple(step.change(ctx))
                return await self._done(index, step, ctx, "planned",
                                        reason="dry run: not changed", ops=planned, results=(),
                                        facts=learnt)
            if edge.target == "credential":
                if (prior is not None and prior.credential and not prior.credential_active
                        and self._issuer is not None):
                    # The interrupted attempt's deposit never reached the server for sure.
                    await self._issuer.discard(prior.credential)
                outcome = await self._prepare_credential(index, step, ctx, learnt)
                edge = steps.after_credential(deposited=isinstance(outcome, str))
                if edge.target == "done":
                    assert isinstance(outcome, StepOutcome)
                    return outcome
                assert isinstance(outcome, str)
                deposit = outcome
            # The intent is durable (and our lease checked) before the server is touched.
            await self._record(index, JournalEntry(
                name=step.name, state="changing", facts=learnt, credential=deposit))
            change_ops = tuple(step.change(ctx))
            change_results = await self._run_all(index, step, "change", change_ops)
            broken = _first_failure(change_ops, change_results)
            edge = steps.after_change(failed=broken is not None)
            if edge.target == "rollback":
                if deposit is not None and self._issuer is not None:
                    await self._issuer.discard(deposit)
                return await self._roll_back(index, step, ctx, learnt, change_ops,
                                             change_results, f"change: {broken}")
            if deposit is not None and self._issuer is not None:
                await self._issuer.activate(deposit)
            await self._record(index, JournalEntry(
                name=step.name, state="changed", facts=learnt, credential=deposit,
                credential_active=deposit is not None,
                action=_action(step, change_ops, change_results, "changed")))

        if step.settle is not None and (delay := step.settle(ctx)) > 0:
            await asyncio.sleep(delay)
        ver_ops = tuple(step.verify(ctx)) if step.verify else ()
        ver = await self._run_all(index, step, "verify", ver_ops)
        issued = deposit is not None or (prior is not None and prior.credential_active
                                          and not redo_credential)
        shown_ops = change_ops or ver_ops
        shown_results = change_results or ver
        edge = steps.after_verify(
            verified=not ver_ops or (_first_failure(ver_ops, ver) is None
                                     and step.verified(ver, ctx)),
            issues_credential=step.issues_credential is not None)
        if edge.result == "changed":
            notes = tuple(step.backups(ctx)) if step.backups is not None else ()
            if notes and self._backups is not None:
                await self._backups.backup(index=index, step=step.name, notes=notes)
            return await self._done(index, step, ctx, "changed", ops=shown_ops,
                                    results=shown_results, facts=learnt,
                                    credential=deposit, credential_active=issued,
                                    backups=notes)
        if edge.result == "failed":
            return await self._done(index, step, ctx, "failed",
                                    reason="the change went through but verification failed",
                                    ops=shown_ops, results=shown_results, facts=learnt,
                                    credential=deposit, credential_active=issued)
        return await self._roll_back(index, step, ctx, learnt, shown_ops, shown_results,
                                     "verification failed")

    async def _prepare_credential(self, index: int, step: Step[Any], ctx: Context[Any],
                                  learnt: dict[str, Any]) -> str | StepOutcome:
        assert step.issues_credential is not None
        if self._issuer is None:
            return await self._done(index, step, ctx, "failed", ops=(), results=(),
                                    reason="no credential vault is configured", facts=learnt)
        unavailable = await self._issuer.unavailable()
        if unavailable is not None:
            return await self._done(index, step, ctx, "failed", ops=(), results=(),
                                    reason=unavailable, facts=learnt)
        password = generate_password()
        # Taught to the redactor before it exists anywhere else, so no output, log line or
        # audit record written from here on can carry it in the clear.
        self._sink.add(password)
        ctx.secrets["new_password"] = password
        return await self._issuer.deposit(step_key=f"{index:03d}-{step.name}",
                                          account=step.issues_credential(ctx), secret=password)

    async def _roll_back(self, index: int, step: Step[Any], ctx: Context[Any],
                         learnt: dict[str, Any], ops: Sequence[Operation], results: Results,
                         reason: str) -> StepOutcome:
        if step.rollback is None:
            edge = steps.after_rollback(has_rollback=False, failed=True)
            return await self._done(index, step, ctx, _result(edge), reason=reason, ops=ops,
                                    results=results, facts=learnt)
        back_ops = tuple(step.rollback(ctx))
        back = await self._run_all(index, step, "rollback", back_ops)
        broken = _first_failure(back_ops, back)
        edge = steps.after_rollback(has_rollback=True, failed=broken is not None)
        if broken is not None:
            reason = f"{reason}; rollback failed: {broken}"
        return await self._done(index, step, ctx, _result(edge), reason=reason,
                                ops=back_ops, results=back, facts=learnt)

    def _handover(self, index: int, step: Step[Any], reason: str) -> Handover:
        instructions = step.manual_instructions or (
            f"Check on the server whether step '{step.title}' took effect (see the audit trail "
            "of this ticket for the commands already run).",
            "Complete or undo it by hand, then report the result.",
        )
        return Handover(index=index, step=step.name, title=step.title, reason=reason,
                        instructions=instructions,
                        verification=(f"'{step.title}' is in the state the customer asked for.",))

    async def _done(self, index: int, step: Step[Any], ctx: Context[Any], result: StepResult, *,
                    ops: Sequence[Operation], results: Results, reason: str | None = None,
                    facts: dict[str, Any] | None = None, credential: str | None = None,
                    credential_active: bool = False,
                    backups: tuple[BackupNote, ...] = ()) -> StepOutcome:
        action = _action(step, ops, results, result)
        outcome = StepOutcome(index=index, name=step.name, result=result, reason=reason,
                              action=action, facts=dict(facts or {}),
                              credential_issued=credential_active, backups=backups)
        await self._record(index, JournalEntry(
            name=step.name, state="done", result=result, reason=reason,
            facts=outcome.facts, action=action, credential=credential,
            credential_active=credential_active, backups=backups))
        return outcome

    async def _record(self, index: int, entry: JournalEntry) -> None:
        """Journal ``entry`` redacted: the claim journal is stored like the audit log, and
        a failure reason or a fact may quote command output holding a secret."""
        redact = self._sink.redact
        action = entry.action
        if action is not None:
            action = dataclasses.replace(action, step=str(redact(action.step)),
                                         command=str(redact(action.command)))
        await self._journal.record(index, dataclasses.replace(
            entry, reason=None if entry.reason is None else str(redact(entry.reason)),
            facts=dict(redact(entry.facts)), action=action,
            backups=tuple(BackupNote(location=str(redact(b.location)),
                                     description=str(redact(b.description)))
                          for b in entry.backups)))

    # --- commands ----------------------------------------------------------------------

    async def _run_all(self, index: int, step: Step[Any], phase: Phase,
                       ops: Sequence[Operation]) -> Results:
        results = []
        for n, op in enumerate(ops):
            began = time.perf_counter()
            if isinstance(op, FreshLogin):
                result = await self._host.fresh_login(op.username, op.secret)
                root = False
            else:
                if op.root and not self._host.privileged:
                    result = CommandResult(exit_status=None, error="needs administrator rights, "
                                           "which the given account does not have")
                else:
                    result = await self._host.run(op)
                root = op.root
            if result.duration_ms == 0:
                result = CommandResult(
                    exit_status=result.exit_status, stdout=result.stdout, stderr=result.stderr,
                    error=result.error, duration_ms=int((time.perf_counter() - began) * 1000))
            await self._log.command(index=index, step=step.name, phase=phase, n=n,
                                    display=op.display(), root=root, result=result)
            results.append(result)
            if not _accepted(op, result):
                break  # later commands of the phase assume the earlier ones worked
        return tuple(results)


def _result(edge: steps.StepEdge) -> StepResult:
    assert edge.result is not None, f"{edge} ends no step"
    return edge.result


def _accepted(op: Operation, result: CommandResult) -> bool:
    if result.error is not None:
        return False
    if isinstance(op, FreshLogin):
        return result.exit_status == 0
    return op.accepts(result.exit_status)


def _first_failure(ops: Sequence[Operation], results: Results) -> str | None:
    for op, result in zip(ops, results, strict=False):
        if not _accepted(op, result):
            if result.error is not None:
                return f"{op.display()}: {result.error}"
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            return f"{op.display()} exited with {result.exit_status}: {tail[0][:300]}".rstrip(": ")
    if len(results) < len(ops):
        return f"{ops[len(results)].display()} did not run"
    return None


def _action(step: Step[Any], ops: Sequence[Operation], results: Results,
            result: StepResult) -> ActionRecord:
    command = "; ".join(op.display() for op in ops) or "(no command)"
    exits = [r.exit_status for r in results]
    return ActionRecord(
        step=step.title, command=command[:2000],
        exit_status=exits[-1] if exits and exits[-1] is not None else None,
        duration_ms=sum(r.duration_ms for r in results), result=result)
