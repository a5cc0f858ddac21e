"""The runbook engine: order of play, journal, audit, dry run, rollback, and resumption."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

sys.path.insert(0, str(Path(__file__).parent))
from executor_fakes import FakeHost, FakeIssuer, FakeJournal, ok, rig

from services.executor.runbooks.engine import (
    ActionRecord,
    JournalEntry,
    LeaseLost,
    generate_password,
)
from services.executor.runbooks.model import (
    Command,
    CommandResult,
    FreshLogin,
    Runbook,
    Step,
)


class NoParams(BaseModel):
    model_config = ConfigDict(frozen=True)


def cmd(*argv: str, **kw: Any) -> Command:
    return Command(argv=argv, **kw)


def book(*steps: Step[NoParams]) -> Runbook[NoParams]:
    return Runbook(name="test", category="diagnostics", title="t", platforms=frozenset({"linux"}),
                   params=NoParams, build=lambda p, platform: steps)


class World:
    """A one-flag server: ``thing`` is on or off."""

    def __init__(self, on: bool = False, change_works: bool = True) -> None:
        self.on = on
        self.change_works = change_works
        self.changes = 0

    def __call__(self, command: Command) -> CommandResult:
        if command.argv == ("is-on",):
            return ok(exit_status=0 if self.on else 1)
        if command.argv == ("turn-on",):
            self.changes += 1
            self.on = self.change_works
            return ok()
        if command.argv == ("turn-off",):
            self.on = False
            return ok()
        return ok("fine")


def thing(**overrides: Any) -> Step[NoParams]:
    fields: dict[str, Any] = {
        "name": "thing", "title": "Turn the thing on",
        "precheck": lambda ctx: [cmd("is-on", ok_exit=frozenset({0, 1}))],
        "needed": lambda results, ctx: results[0].exit_status == 1,
        "simulate": lambda ctx: [cmd("simulate-on")],
        "change": lambda ctx: [cmd("turn-on", root=True)],
        "verify": lambda ctx: [cmd("is-on")],
        "rollback": lambda ctx: [cmd("turn-off", root=True)],
    }
    fields.update(overrides)
    return Step(**fields)


async def run(r: Any, *steps: Step[NoParams]) -> Any:
    return await r.engine.run(book(*steps), NoParams())


async def test_a_needed_change_is_journalled_before_and_after_and_verified() -> None:
    world = World()
    r = rig(FakeHost(world))
    result = await run(r, thing())
    assert [s.result for s in result.steps] == ["changed"]
    assert r.host.argvs() == [("is-on",), ("simulate-on",), ("turn-on",), ("is-on",)]
    assert r.journal.history == [(0, "changing", None), (0, "changed", None),
                                 (0, "done", "changed")]
    assert [(x["phase"], x["display"]) for x in r.log.records] == [
        ("precheck", "is-on"), ("simulate", "simulate-on"),
        ("change", "[as administrator] turn-on"), ("verify", "is-on")]
    assert result.actions[0] == ActionRecord(step="Turn the thing on",
                                             command="[as administrator] turn-on",
                                             exit_status=0, duration_ms=1, result="changed")
    [span] = [s for s in r.spans.get_finished_spans() if s.name.startswith("runbook step")]
    assert span.attributes is not None
    assert span.attributes["step.result"] == "changed"


async def test_no_change_when_the_precheck_says_it_is_not_needed() -> None:
    world = World(on=True)
    r = rig(FakeHost(world))
    result = await run(r, thing())
    assert result.steps[0].result == "no_change_needed"
    assert world.changes == 0
    assert r.host.argvs() == [("is-on",)]


async def test_failed_verification_rolls_back() -> None:
    world = World(change_works=False)
    r = rig(FakeHost(world))
    result = await run(r, thing(), Step(name="after", title="after",
                                        precheck=lambda ctx: [cmd("true")]))
    assert [s.result for s in result.steps] == ["rolled_back"]  # blocking: "after" not run
    assert ("turn-off",) in r.host.argvs()
    assert result.steps[0].reason == "verification failed"


async def test_failed_rollback_is_a_failure_with_both_reasons() -> None:
    def responder(command: Command) -> CommandResult:
        if command.argv == ("turn-off",):
            return CommandResult(exit_status=1, stderr="cannot undo", duration_ms=1)
        return World(change_works=False)(command)

    r = rig(FakeHost(responder))
    result = await run(r, thing())
    assert result.steps[0].result == "failed"
    assert "rollback failed" in (result.steps[0].reason or "")
    assert "cannot undo" in (result.steps[0].reason or "")


async def test_dry_run_runs_prechecks_and_simulations_only() -> None:
    world = World()
    r = rig(FakeHost(world), dry_run=True)
    result = await run(r, thing())
    assert world.changes == 0
    assert r.host.argvs() == [("is-on",), ("simulate-on",)]
    assert result.steps[0].result == "planned"
    assert result.steps[0].action.command == "[as administrator] turn-on"


async def test_failed_simulation_stops_before_the_change() -> None:
    def responder(command: Command) -> CommandResult:
        if command.argv == ("simulate-on",):
            return CommandResult(exit_status=100, stderr="E: Unable to locate package",
                                 duration_ms=1)
        return World()(command)

    r = rig(FakeHost(responder))
    result = await run(r, thing())
    assert result.steps[0].result == "failed"
    assert "Unable to locate package" in (result.steps[0].reason or "")
    assert ("turn-on",) not in r.host.argvs()


async def test_missing_tools_skip_the_step_and_nonblocking_failures_continue() -> None:
    r = rig(FakeHost(lambda c: CommandResult(exit_status=2, duration_ms=1)))
    result = await run(
        r,
        Step(name="smart", title="SMART", requires=("tool:smartctl",),
             precheck=lambda ctx: [cmd("smartctl")]),
        Step(name="logs", title="Logs", precheck=lambda ctx: [cmd("tail")], blocking=False),
        Step(name="last", title="Last", precheck=lambda ctx: [cmd("uname")]),
    )
    assert [s.result for s in result.steps] == ["skipped", "failed", "failed"]
    assert result.steps[0].reason == "not available on this server: tool:smartctl"
    assert r.host.argvs() == [("tail",), ("uname",)]


async def test_root_commands_are_not_sent_without_administrator_rights() -> None:
    r = rig(FakeHost(World(), privileged=False))
    result = await run(r, thing())
    assert result.steps[0].result == "failed"
    assert ("turn-on",) not in r.host.argvs()
    assert "administrator rights" in (result.steps[0].reason or "")


async def test_lost_lease_stops_before_the_change() -> None:
    world = World()
    r = rig(FakeHost(world), journal=FakeJournal(lose_lease_on="changing"))
    with pytest.raises(LeaseLost):
        await run(r, thing())
    assert world.changes == 0


async def test_learnt_facts_reach_later_steps() -> None:
    r = rig(FakeHost(lambda c: ok("apt-get")))
    seen: list[str] = []
    result = await run(
        r,
        Step(name="detect", title="detect", precheck=lambda ctx: [cmd("detect")],
             learn=lambda results, ctx: {"manager": results[0].stdout}),
        Step(name="use", title="use",
             precheck=lambda ctx: (seen.append(ctx.fact("manager")), [cmd("x")])[1]),
    )
    assert seen == ["apt-get"]
    assert result.facts["manager"] == "apt-get"


# --- resumption ------------------------------------------------------------------------


def done(name: str, result: Any = "changed", **facts: Any) -> JournalEntry:
    return JournalEntry(name=name, state="done", result=result, facts=facts,
                        action=ActionRecord(step=name, command="x", exit_status=0,
                                            duration_ms=5, result=result))


async def test_resume_skips_done_steps_and_restores_their_facts() -> None:
    world = World()
    journal = FakeJournal(entries={0: done("detect", manager="dnf")})
    r = rig(FakeHost(world), journal=journal)
    seen: list[str] = []
    result = await run(
        r,
        Step(name="detect", title="detect", precheck=lambda ctx: [cmd("detect")]),
        thing(precheck=lambda ctx: (seen.append(ctx.fact("manager")),
                                    [cmd("is-on", ok_exit=frozenset({0, 1}))])[1]),
    )
    assert ("detect",) not in r.host.argvs()
    assert seen == ["dnf"]
    assert [s.result for s in result.steps] == ["changed", "changed"]
    assert world.changes == 1


async def test_resume_after_the_change_only_verifies() -> None:
    world = World(on=True)
    journal = FakeJournal(entries={0: JournalEntry(name="thing", state="changed")})
    r = rig(FakeHost(world), journal=journal)
    result = await run(r, thing())
    assert world.changes == 0
    assert ("turn-on",) not in r.host.argvs()
    assert result.steps[0].result == "changed"


async def test_interrupted_change_that_applied_is_not_repeated() -> None:
    world = World(on=True)  # the change went through before the crash
    journal = FakeJournal(entries={0: JournalEntry(name="thing", state="changing")})
    r = rig(FakeHost(world), journal=journal)
    result = await run(r, thing())
    assert world.changes == 0
    assert result.steps[0].result == "changed"
    assert r.host.argvs() == [("is-on",), ("is-on",)]  # pre-check decided, then verify


async def test_interrupted_change_that_did_not_apply_is_redone_once() -> None:
    world = World(on=False)
    journal = FakeJournal(entries={0: JournalEntry(name="thing", state="changing")})
    r = rig(FakeHost(world), journal=journal)
    result = await run(r, thing())
    assert world.changes == 1
    assert result.steps[0].result == "changed"


async def test_interrupted_change_of_a_step_not_safe_to_repeat_goes_to_an_engineer() -> None:
    world = World(on=False)
    journal = FakeJournal(entries={0: JournalEntry(name="thing", state="changing")})
    r = rig(FakeHost(world), journal=journal)
    result = await run(r, thing(rerunnable=False, manual_instructions=("Check the thing.",)),
                       Step(name="next", title="next", precheck=lambda ctx: [cmd("x")]))
    assert world.changes == 0
    assert r.host.ran == []
    assert result.handover is not None
    assert result.handover.step == "thing"
    assert result.handover.instructions == ("Check the thing.",)
    assert result.steps == ()


async def test_a_changed_runbook_is_never_resumed_blindly() -> None:
    journal = FakeJournal(entries={0: done("old-step")})
    r = rig(FakeHost(World()), journal=journal)
    result = await run(r, thing())
    assert result.handover is not None
    assert "runbook changed" in result.handover.reason
    assert r.host.ran == []


# --- credentials -----------------------------------------------------------------------


def password_step(**overrides: Any) -> Step[NoParams]:
    fields: dict[str, Any] = {
        "name": "set_password", "title": "Set password",
        "issues_credential": lambda ctx: "root",
        "change": lambda ctx: [cmd("chpasswd", root=True,
                                   stdin=f"root:{ctx.secrets['new_password']}\n")],
        "verify": lambda ctx: [FreshLogin(username="root", secret=ctx.secrets["new_password"])],
    }
    fields.update(overrides)
    return Step(**fields)


async def test_a_new_password_is_deposited_before_the_change_and_activated_after() -> None:
    r = rig(FakeHost(lambda c: ok()))
    result = await run(r, password_step())
    [(account, secret)] = r.issuer.deposits.values()
    assert account == "root"
    assert r.issuer.events == [("deposit", "dep-0"), ("activate", "dep-0")]
    assert r.sink.secrets == [secret]  # the redactor knew it before anything ran
    [chpasswd] = r.host.ran
    assert secret not in " ".join(chpasswd.argv)
    assert chpasswd.stdin == f"root:{secret}\n"
    assert r.host.logins == [("root", secret)]
    assert result.new_credentials_issued
    assert all(secret not in str(x) for x in r.log.records)
    assert secret not in repr(chpasswd)


async def test_failed_password_change_discards_the_deposit() -> None:
    r = rig(FakeHost(lambda c: CommandResult(exit_status=1, duration_ms=1)))
    result = await run(r, password_step())
    assert r.issuer.events == [("deposit", "dep-0"), ("discard", "dep-0")]
    assert not result.new_credentials_issued
    assert result.steps[0].result == "failed"


async def test_no_vault_key_means_no_change() -> None:
    r = rig(FakeHost(lambda c: ok()), issuer=FakeIssuer(reason="account has no vault key"))
    result = await run(r, password_step())
    assert r.host.ran == []
    assert result.steps[0].reason == "account has no vault key"


async def test_failed_fresh_login_keeps_the_deposit_active_and_fails_the_step() -> None:
    host = FakeHost(lambda c: ok(), login_ok=False)
    r = rig(host)
    result = await run(r, password_step())
    assert ("activate", "dep-0") in r.issuer.events
    assert result.steps[0].result == "failed"
    assert result.new_credentials_issued  # the server has it, so the customer gets it


async def test_interrupted_password_change_is_redone_with_a_new_password() -> None:
    journal = FakeJournal(entries={0: JournalEntry(name="set_password", state="changed",
                                                   credential="old", credential_active=True)})
    r = rig(FakeHost(lambda c: ok()), journal=journal)
    result = await run(r, password_step())
    assert r.issuer.events == [("deposit", "dep-0"), ("activate", "dep-0")]
    assert result.steps[0].result == "changed"


async def test_a_pending_deposit_of_an_interrupted_reset_is_discarded_on_redo() -> None:
    journal = FakeJournal(entries={0: JournalEntry(name="set_password", state="changing",
                                                   credential="stale")})
    r = rig(FakeHost(lambda c: ok()), journal=journal)
    await run(r, password_step())
    assert r.issuer.events == [("discard", "stale"), ("deposit", "dep-0"), ("activate", "dep-0")]


async def test_dry_run_generates_no_password_and_changes_nothing() -> None:
    r = rig(FakeHost(lambda c: ok()), dry_run=True)
    result = await run(r, password_step())
    assert r.host.ran == []
    assert r.issuer.events == []
    assert result.steps[0].result == "planned"


def test_generated_passwords_are_strong_and_safe_for_chpasswd() -> None:
    passwords = {generate_password() for _ in range(200)}
    assert len(passwords) == 200
    for password in passwords:
        assert len(password) == 24
        assert ":" not in password
        assert "\n" not in password
        assert any(c.isupper() for c in password)
        assert any(c.isdigit() for c in password)
        assert any(not c.isalnum() for c in password)


async def test_journal_writes_are_redacted() -> None:
    # A reason or a fact can quote command output; the claim journal is stored, so it is
    # redacted like the audit log (the secret is one the process knows).
    leaked = "customer-pw-Zq81!x"
    r = rig(FakeHost(lambda command: ok(f"error: bad password {leaked}\n", exit_status=1)))
    r.sink.add(leaked)
    step = Step[NoParams](
        name="probe", title="Probe",
        precheck=lambda ctx: [cmd("probe", ok_exit=frozenset({0, 1}))],
        learn=lambda results, ctx: {"probe_output": results[0].stdout},
        refuse=lambda results, ctx: f"the server said: {results[0].stdout.strip()}")
    await run(r, step)
    entry = r.journal.entries[0]
    assert entry.reason is not None
    assert "[REDACTED]" in entry.reason
    assert leaked not in repr(entry.to_json())
    assert entry.facts["probe_output"] == "error: bad password [REDACTED]\n"
