"""Backups a step declares are recorded after its change, kept in the journal, and listed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from executor_fakes import FakeJournal, rig

from services.executor.runbooks.engine import JournalEntry
from services.executor.runbooks.model import BackupNote, Command, Runbook, Step


class NoParams(BaseModel):
    model_config = ConfigDict(frozen=True)


NOTE = BackupNote(location="/root/os-intervention/T-r1/etc/shadow",
                  description="copy of /etc/shadow before the reset")


class BackupLog:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, tuple[BackupNote, ...]]] = []

    async def backup(self, *, index: int, step: str, notes: Any) -> None:
        self.calls.append((index, step, tuple(notes)))


def book() -> Runbook[NoParams]:
    steps = (
        Step(name="backup", title="Back up", change=lambda ctx: [Command(argv=("cp", "a", "b"))],
             backups=lambda ctx: [NOTE]),
        Step(name="change", title="Change", change=lambda ctx: [Command(argv=("edit",))]),
    )
    return Runbook(name="t", category="diagnostics", title="t", platforms=frozenset({"linux"}),
                   params=NoParams, build=lambda p, platform: steps)


async def test_backups_are_audited_after_the_copy_and_listed_in_the_result() -> None:
    r = rig()
    log = BackupLog()
    r.engine._backups = log
    result = await r.engine.run(book(), NoParams())
    assert log.calls == [(0, "backup", (NOTE,))]
    assert result.backups == (NOTE,)
    entry = r.journal.entries[0]
    assert JournalEntry.from_json(entry.to_json()).backups == (NOTE,)


async def test_a_resumed_run_keeps_the_backups_of_finished_steps() -> None:
    first = rig()
    await first.engine.run(book(), NoParams())
    resumed = rig(journal=FakeJournal(entries={0: JournalEntry.from_json(
        first.journal.entries[0].to_json())}))
    result = await resumed.engine.run(book(), NoParams())
    assert result.backups == (NOTE,)
    assert ("cp", "a", "b") not in resumed.host.argvs()


async def test_a_dry_run_makes_and_lists_no_backups() -> None:
    r = rig(dry_run=True)
    log = BackupLog()
    r.engine._backups = log
    result = await r.engine.run(book(), NoParams())
    assert result.backups == ()
    assert log.calls == []
