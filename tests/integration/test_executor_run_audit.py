"""One intervention run's store round trips, and its audit records batched at fenced points.

Runs tickets through the real executor in-process (Kafka in and out, FerretDB, a real
sshd; the rig of ``test_executor_service``) and counts the store commands of each run with
the runtime's command listener (``runtime.store_round_trips``), audit included. A run's
records of things already done ride together to the next point that must not come before
them (a claim write, a publish, the close): one audit insert per such point, not one per
record. Then the run is crashed at each of those points and resumed, and the ticket's audit
trail still has every record an uninterrupted run writes, in one intact, signed chain.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from polling import eventually
from test_executor_service import Rig, one_ticket_counted
from test_executor_service import rig as rig  # the module's executor, sshd and bus

from bench.noop_executor import NOOP
from schemas.events import InterventionCompleted
from services.executor.claims import Claim, ClaimStore
from services.executor.runbooks import RUNBOOKS
from services.runtime.audit import AuditRecord, verify_chain
from services.runtime.keys import load_audit_verify_keys

pytestmark = pytest.mark.integration

AUDIT = ("insert", "audit")
# The executor's audit inserts for one ticket. No-op runbook: the claim's record (the
# consumer's), the host key and the access decision together before InterventionStarted
# is staged, and the record of each of the two events the runtime audits as it publishes
# them. Diagnostics adds one insert for all its commands, before the completion is staged
# (one per command before: 16 inserts for its 11 commands).
NOOP_AUDIT_INSERTS = 4
DIAGNOSTICS_AUDIT_INSERTS = 5


def _table(spent: Counter[tuple[str, str]]) -> str:
    return ", ".join(f"{op} {coll} {n}" for (op, coll), n in sorted(spent.items()))


def _executor_chain(records: list[AuditRecord]) -> list[AuditRecord]:
    return sorted((r for r in records if r.actor.startswith("executor")), key=lambda r: r.seq)


@pytest.fixture
def noop_diagnostics() -> Iterator[None]:
    """The benchmark's no-op diagnostics runbook (bench/noop_executor.py) in its place."""
    catalogue: dict[str, Any] = RUNBOOKS  # type: ignore[assignment]
    real = catalogue["diagnostics"]
    catalogue["diagnostics"] = NOOP
    try:
        yield
    finally:
        catalogue["diagnostics"] = real


async def _signed_and_intact(rig: Rig, ticket_id: str) -> None:
    keys = load_audit_verify_keys(Path(str(rig.service.runtime.settings.intervention_keys_dir)))
    assert any(service == "executor" for service, _ in keys.values())
    report = await verify_chain(rig.db, ticket_id, keys=keys)
    assert report.ok, report.first_broken


async def test_a_noop_run_writes_its_audit_records_in_one_insert_per_fenced_point(
        rig: Rig, mongo_client: Any, noop_diagnostics: None) -> None:
    event, spent = await one_ticket_counted(rig, mongo_client)
    print(f"\nexecutor round trips, one no-op run ({sum(spent.values())}): {_table(spent)}")
    chain = _executor_chain(await rig.audit(event.ticket_id))
    assert [r.kind for r in chain] == ["claim", "host_key", "access_decision", "event", "event"]
    assert spent[AUDIT] <= NOOP_AUDIT_INSERTS, _table(spent)
    await _signed_and_intact(rig, event.ticket_id)


async def test_a_diagnostics_run_writes_all_its_command_records_in_one_insert(
        rig: Rig, mongo_client: Any) -> None:
    event, spent = await one_ticket_counted(rig, mongo_client)
    print(f"\nexecutor round trips, one diagnostics run ({sum(spent.values())}): "
          f"{_table(spent)}")
    chain = _executor_chain(await rig.audit(event.ticket_id))
    kinds = [r.kind for r in chain]
    commands = kinds.count("command")
    assert commands >= 10
    # Every record, in the order things happened: chain order is write order.
    assert kinds == ["claim", "host_key", "access_decision", "event",
                     *["command"] * commands, "event"], kinds
    assert [r.data["event_type"] for r in chain if r.kind == "event"] == [
        "InterventionStarted", "InterventionCompleted"]
    steps = [r.data["step_index"] for r in chain if r.kind == "command"]
    assert steps == sorted(steps)
    ats = [r.at for r in chain]
    assert ats == sorted(ats)  # each stamped when it happened, not when written
    assert spent[AUDIT] <= DIAGNOSTICS_AUDIT_INSERTS, _table(spent)
    await _signed_and_intact(rig, event.ticket_id)


# --- a crash at each point the run's records are written -----------------------------

class Crash(Exception):
    """The executor process dies here: it writes nothing more."""


def _command_keys(records: list[AuditRecord]) -> set[tuple[int, str, str]]:
    return {(r.data["step_index"], r.data["phase"], r.data["command"])
            for r in records if r.kind == "command"}


@pytest.fixture(scope="module")
async def reference(rig: Rig) -> set[tuple[int, str, str]]:
    """The commands an uninterrupted diagnostics run on the lab server audits."""
    event = rig.verdict(category="diagnostics")
    await rig.publish(event)
    await rig.bus.wait(event.ticket_id, "InterventionCompleted")
    return _command_keys(await rig.audit(event.ticket_id))


@pytest.mark.parametrize(("where", "nth"), [
    ("before flush", 1),  # host key and access decision gathered, InterventionStarted next
    ("before flush", 2),  # the commands gathered, the completion's staging next
    ("after stage", 1),  # InterventionStarted staged, not published
    ("after stage", 2),  # the completion staged (with the journal), not published
])
async def test_a_run_crashed_at_a_flush_point_loses_no_audit_record(
        rig: Rig, reference: set[tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch,
        where: str, nth: int) -> None:
    """The crashed attempt's gathered records die with it. What it left durable (the access
    decision, the journal, a staged event) is always preceded by the records it implies,
    and the resumed attempt writes again what it does again: the ticket's trail has every
    record of an uninterrupted run, the decision's among them, in an intact signed chain."""
    records = rig.service.interventions._records
    store: ClaimStore = rig.service.claims
    event = rig.verdict(category="diagnostics")
    claim_id = f"{event.ticket_id}:1"
    counts = {"flush": 0, "stage": 0}
    crashed: set[int] = set()
    flush, stage = records.flush, store.stage

    async def crashing_flush(claim: Claim) -> None:
        if claim.id != claim_id:
            await flush(claim)
            return
        if claim.attempt in crashed:  # the dead process writes nothing
            records._pending.pop(claim.id, None)
            return
        if records.pending(claim) and claim.attempt == 1:
            counts["flush"] += 1
            if where == "before flush" and counts["flush"] == nth:
                crashed.add(claim.attempt)
                records._pending.pop(claim.id, None)
                raise Crash(f"before flush {nth}")
        await flush(claim)

    async def crashing_stage(cid: str, owner: Any, key: str, event_json: str) -> str:
        attempt = store._held[(cid, owner.id)].attempt if (cid, owner.id) in store._held else 0
        kept = await stage(cid, owner, key, event_json)
        if cid == claim_id and attempt == 1 and 1 not in crashed:
            counts["stage"] += 1
            if where == "after stage" and counts["stage"] == nth:
                crashed.add(1)
                raise Crash(f"after stage {nth}")
        return kept

    monkeypatch.setattr(records, "flush", crashing_flush)
    monkeypatch.setattr(store, "stage", crashing_stage)
    await rig.publish(event)
    # The worker's periodic scan resumes the open claim as attempt 2 (this process's
    # lease on attempt 1 is taken over at once: the owner is this executor).
    [completed] = await rig.bus.wait(event.ticket_id, "InterventionCompleted", timeout=90)
    assert crashed == {1}
    assert isinstance(completed, InterventionCompleted)
    assert completed.outcome == "resolved", completed.reason
    archive = rig.db[ClaimStore.ARCHIVE]
    doc = await eventually(lambda: archive.find_one({"_id": claim_id}), 30,
                           what="the claim archived")
    assert doc["attempt"] == 2
    await asyncio.sleep(0.3)

    trail = await rig.audit(event.ticket_id)
    kinds = Counter(r.kind for r in trail if r.actor.startswith("executor"))
    assert kinds["access_decision"] == 1
    assert kinds["claim_resumed"] == 1
    assert kinds["host_key"] >= 1
    published = [r.data["event_type"] for r in trail if r.kind == "event"]
    assert published.count("InterventionCompleted") == 1
    assert published.count("InterventionStarted") == 1
    # Every command an uninterrupted run audits is audited here (by one attempt or both).
    missing = reference - _command_keys(trail)
    assert not missing, missing
    await _signed_and_intact(rig, event.ticket_id)
