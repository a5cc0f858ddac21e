"""An insider who can write the claim store cannot steer the executor.

The executor runs as its real process (``python -m services.executor``) against the real
Kafka, FerretDB and sshd. Each case lets the executor make a genuine claim, then edits the
store the way someone with the database credential could - a flipped ``review_passed``, a
decision edited to another runbook, an inserted ``done`` decision on the engineer's review,
an old verdict written in as a claim, a finished claim re-opened, a swapped customer vault
key - and proves that the executor does nothing on the server (no SSH login after the edit,
or no change command and no password deposited), refuses the claim, and says in the
ticket's audit trail what was tampered with; the ticket's audit chain still verifies.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "executor"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from executor_process import Executor, Stack, executor_stack, start_executor
from executor_verdicts import resolved_server, verdict
from polling import eventually

from schemas.events import AuthorizationVerified, ManualStepCompleted, ManualStepRequested
from services.executor.claims import ClaimStore
from services.executor.ssh import DISK_SOURCE
from services.executor.vault import MongoCredentialVault
from services.runtime.audit import verify_chain
from services.runtime.crypto import PrivateSealingKey
from services.runtime.facts import sign_fact
from services.runtime.keys import (
    OPERATOR_SIGNING_PRIVATE_FILE,
    load_sealing_public,
    load_signing_key,
)

pytestmark = pytest.mark.integration

# Long enough for the executor to accept the verdict and park the claim on a loaded machine.
MAX_AGE_S = 30
ENV = {"EXECUTOR_RESCAN_S": "0.5", "EXECUTOR_LEASE_S": "30", "EXECUTOR_CONNECT_TIMEOUT_S": "3",
       "EXECUTOR_MANUAL_STEP_TIMEOUT_S": "600"}


@pytest.fixture
def make_stack(kafka_bootstrap: str, topic_prefix: str, database_name: str, real_parts: Any,
               mongo_client: Any, tmp_path: Path, executors: list[Executor]) -> Any:
    @asynccontextmanager
    async def make(**env: str) -> AsyncIterator[Stack]:
        async with executor_stack(
                "claims", kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix,
                database_name=database_name, mongodb_uri=real_parts.mongodb_uri,
                mongo_client=mongo_client, tmp_path=tmp_path, env={**ENV, **env}) as stack:
            try:
                yield stack
            finally:  # before the stack's database is dropped
                for executor in executors:
                    executor.stop()
    return make


def a_verdict(stack: Stack, ssh_targets: Any, *, category: str = "diagnostics",
              user: Any = None, **kw: Any) -> AuthorizationVerified:
    user = user or ssh_targets.admin
    return verdict(
        signing_key=load_signing_key(stack.keys.signing_private),
        sealing_key=load_sealing_public(stack.keys.sealing_public),
        username=user.name, password=user.password, category=category,
        server=resolved_server(service_id="SRV-CLAIMS", ip="127.0.0.1",
                               ssh_port=ssh_targets.port,
                               ssh_host_key=ssh_targets.sshd.host_key_line), **kw)


async def parked_for_review(stack: Stack, ssh_targets: Any,
                            ) -> tuple[AuthorizationVerified, str, ManualStepRequested]:
    """A genuine claim parked on auth's review (``r1-review``): the automation waits for an
    engineer. Returns the verdict, the claim id and the engineer's request."""
    review = a_verdict(stack, ssh_targets, review_required=True,
                       review_reason="3 interventions in 30 days")
    await stack.publish(review)
    [request] = await stack.bus.wait(review.ticket_id, "ManualStepRequested", timeout=60)
    assert isinstance(request, ManualStepRequested)
    assert request.step_id == "r1-review"
    claim_id = f"{review.ticket_id}:1"
    await eventually(lambda: status_is(stack, claim_id, "handed_over"), 45,
                     what="claim parked")
    return review, claim_id, request


async def status_is(stack: Stack, claim_id: str, status: str) -> bool:
    # In flight, else archived (finished and refused claims move to the archive).
    doc = await stack.db[ClaimStore.CLAIMS].find_one({"_id": claim_id})
    if doc is None:
        doc = await stack.db[ClaimStore.ARCHIVE].find_one({"_id": claim_id})
    return doc is not None and doc.get("status") == status


async def reopen_by_hand(stack: Stack, claim_id: str, **fields: Any) -> None:
    """What the insider writes to have the executor pick the claim up again at once: the
    claim open in the in-flight collection (a closed one copied back from the archive)."""
    reopened = {"status": "open", "lease_until": datetime.now(UTC), **fields}
    claims = stack.db[ClaimStore.CLAIMS]
    if (await claims.update_one({"_id": claim_id}, {"$set": reopened})).matched_count:
        return
    archived = await stack.db[ClaimStore.ARCHIVE].find_one({"_id": claim_id})
    assert archived is not None
    await claims.insert_one({**archived, **reopened})


async def refused_as_tampered(stack: Stack, ticket_id: str, claim_id: str,
                              says: str) -> dict[str, Any]:
    """The claim ends refused, and the ticket's audit trail names what was tampered."""
    await eventually(lambda: status_is(stack, claim_id, "refused"), 45, what="claim refused")
    record = await stack.db["audit"].find_one({"ticket_id": ticket_id,
                                               "kind": "claim_tampered"})
    assert record is not None
    assert any(says in finding for finding in record["data"]["findings"]), record["data"]
    assert record["actor"].startswith("executor")
    assert (await verify_chain(stack.db, ticket_id)).ok
    return record


def logins(ssh_targets: Any) -> int:
    return ssh_targets.sshd.log().count("Accepted ")


async def nothing_ran(stack: Stack, ssh_targets: Any, ticket_id: str, logins_before: int,
                      ) -> None:
    """No SSH login since the edit, no command audited, no automated start or completion."""
    await asyncio.sleep(2)  # several rescans of open claims
    assert logins(ssh_targets) == logins_before
    assert await stack.db["audit"].count_documents({"ticket_id": ticket_id,
                                                    "kind": "command"}) == 0
    assert stack.bus.of(ticket_id, "InterventionCompleted") == []
    started = stack.bus.of(ticket_id, "InterventionStarted")
    assert all(getattr(s, "mode", "") == "engineer" for s in started)


def flipped_review(decision: dict[str, Any]) -> dict[str, Any]:
    return {"review_passed": True, "decision": None, "handover": None}


def another_runbook(decision: dict[str, Any]) -> dict[str, Any]:
    assert decision["runbook"] == "review.diagnostics"
    return {"handover": None, "decision": {
        **decision, "method": "ssh", "mode": "automated", "disposition": "run",
        "runbook": "root_password_reset"}}


@pytest.mark.parametrize(("edit", "named"), [
    pytest.param(flipped_review, "review_passed", id="a flipped review_passed"),
    pytest.param(another_runbook, "decision", id="a claim edited to another runbook"),
])
async def test_an_edited_parked_claim_runs_nothing_and_is_refused(
        make_stack: Any, executors: list[Executor], ssh_targets: Any, edit: Any,
        named: str) -> None:
    async with make_stack() as stack:
        start_executor(stack, executors)
        review, claim_id, _ = await parked_for_review(stack, ssh_targets)
        doc = await stack.db["executor_claims"].find_one({"_id": claim_id})
        assert doc is not None
        before = logins(ssh_targets)
        await reopen_by_hand(stack, claim_id, **edit(doc["decision"]))
        await refused_as_tampered(stack, review.ticket_id, claim_id, named)
        await nothing_ran(stack, ssh_targets, review.ticket_id, before)


async def test_an_inserted_done_decision_on_the_review_runs_nothing_and_is_refused(
        make_stack: Any, executors: list[Executor], ssh_targets: Any) -> None:
    async with make_stack() as stack:
        start_executor(stack, executors)
        review, claim_id, _ = await parked_for_review(stack, ssh_targets)
        key = f"{claim_id}:r1-review"
        before = logins(ssh_targets)
        decided = {"status": "done", "reported_at": datetime.now(UTC), "report": {
            "status": "done", "engineer_id": "eng-marta", "display_name": "Marta Rossi",
            "channel": "matrix", "notes": "ok", "event_id": "forged", "at": datetime.now(UTC)}}
        # The first-wins insert an engineer's report would make, and its copy on the step:
        # the executor's own sweep then re-opens the claim.
        await stack.db["executor_manual_decisions"].insert_one({"_id": key, **decided})
        await stack.db["executor_manual_steps"].update_one({"_id": key}, {"$set": decided})
        await refused_as_tampered(stack, review.ticket_id, claim_id, "manual decision")
        await nothing_ran(stack, ssh_targets, review.ticket_id, before)
        assert await stack.db["audit"].count_documents({"ticket_id": review.ticket_id,
                                                        "kind": "review_passed"}) == 0


async def test_an_old_verdict_written_in_as_a_claim_runs_nothing_and_is_refused(
        make_stack: Any, executors: list[Executor], ssh_targets: Any) -> None:
    async with make_stack() as stack:
        start_executor(stack, executors)
        # A verdict auth really signed two days ago (the insider kept a copy), written into
        # the store as an open claim the executor never made.
        old = a_verdict(stack, ssh_targets, at=datetime.now(UTC) - timedelta(days=2))
        claim_id = f"{old.ticket_id}:1"
        before = logins(ssh_targets)
        await stack.db["executor_claims"].insert_one({
            "_id": claim_id, "ticket_id": old.ticket_id, "revision": 1,
            "verdict_event_id": str(old.event_id), "verdict": old.model_dump_json(),
            "trace": {}, "status": "open", "owner": None, "lease_until": datetime.now(UTC),
            "attempt": 0, "decision": None, "steps": {}, "outbox": {},
            "created_at": datetime.now(UTC)})
        await refused_as_tampered(stack, old.ticket_id, claim_id, "accepted")
        await nothing_ran(stack, ssh_targets, old.ticket_id, before)


async def test_a_verdict_past_its_age_limit_on_resume_runs_nothing_and_a_closed_claim_stays_closed(
        make_stack: Any, executors: list[Executor], ssh_targets: Any) -> None:
    async with make_stack(EXECUTOR_VERDICT_MAX_AGE_S=str(MAX_AGE_S)) as stack:
        start_executor(stack, executors)
        review, claim_id, request = await parked_for_review(stack, ssh_targets)
        before = logins(ssh_targets)
        # The engineer approves - genuinely: the notifier's signed report - but only once the
        # verdict is past its age limit. The approval must not run anything.
        age = (datetime.now(UTC) - review.occurred_at).total_seconds()
        await asyncio.sleep(max(0.0, MAX_AGE_S + 1 - age))
        notifier = load_signing_key(stack.keys.notifier_signing_private)
        await stack.publish(sign_fact(ManualStepCompleted.new(
            ticket_id=review.ticket_id, revision=1, causation_id=request.event_id,
            occurred_at=datetime.now(UTC), step_id="r1-review", status="done",
            notes="checked with the account owner", engineer_id="eng-marta",
            display_name="Marta Rossi", channel="matrix"), notifier))
        await eventually(lambda: status_is(stack, claim_id, "refused"), 45, what="claim refused")
        refusal = await stack.db["audit"].find_one({"ticket_id": review.ticket_id,
                                                    "kind": "claim_refused"})
        assert refusal is not None
        assert refusal["data"]["reason"].startswith("verdict_stale"), refusal["data"]
        await nothing_ran(stack, ssh_targets, review.ticket_id, before)

        # The refused claim, edited back to open by the insider, stays closed.
        await reopen_by_hand(stack, claim_id)
        record = await refused_as_tampered(stack, review.ticket_id, claim_id,
                                           "the claim was closed")
        assert record["kind"] == "claim_tampered"
        await nothing_ran(stack, ssh_targets, review.ticket_id, before)


async def test_a_swapped_vault_key_gets_no_password_and_the_server_is_not_changed(
        make_stack: Any, executors: list[Executor], ssh_targets: Any) -> None:
    async with make_stack() as stack:
        customer = PrivateSealingKey.generate(key_id_prefix="cust")
        account = "ACC-VAULT"
        vault = MongoCredentialVault(stack.db)
        await vault.register_key(
            account, customer.public, operator="ops-anna",
            operator_key=load_signing_key(stack.keys.directory / OPERATOR_SIGNING_PRIVATE_FILE),
            at=datetime.now(UTC) - timedelta(days=1))
        # The insider puts their own key in place of the customer's, keeping the operator's
        # signature fields: the new password would be sealed to the insider.
        insider = PrivateSealingKey.generate(key_id_prefix="cust")
        keys = stack.db["customer_vault_keys"]
        doc = await keys.find_one({"_id": account})
        assert doc is not None
        await keys.update_one({"_id": account}, {"$set": {
            "key_id": insider.key_id, "previous": None,
            "public_key": base64.b64encode(insider.public.public_key).decode()}})
        start_executor(stack, executors)
        reset = a_verdict(stack, ssh_targets, category="root_password_reset",
                          account_id=account, parameters={"account": ssh_targets.target.name})
        await stack.publish(reset)
        [done] = await stack.bus.wait(reset.ticket_id, "InterventionCompleted", timeout=90)
        assert getattr(done, "outcome", None) != "resolved"
        refused = await stack.db["audit"].find_one({"ticket_id": reset.ticket_id,
                                                    "kind": "vault_key_refused"})
        assert refused is not None
        assert "operator signature bad signature" in refused["data"]["reason"]
        # Nothing sealed to anyone, no change command on the server.
        assert await stack.db["customer_credentials"].count_documents({}) == 0
        commands = [r async for r in stack.db["audit"].find({"ticket_id": reset.ticket_id,
                                                             "kind": "command"})]
        assert commands  # the read-only pre-checks ran ...
        assert not [c for c in commands if c["data"].get("phase") in ("change", "rollback")]
        assert json.dumps(commands, default=str).count(ssh_targets.target.password) == 0
        assert (await verify_chain(stack.db, reset.ticket_id)).ok


async def test_a_host_key_pin_written_into_the_store_is_not_trusted(
        make_stack: Any, executors: list[Executor], ssh_targets: Any) -> None:
    async with make_stack() as stack:
        # A rescue-capable server with no key in the inventory: only a key the executor read
        # from the server's own disk may be trusted. The insider writes such a pin - with the
        # server's real key even, so only the missing signature can stop the login.
        await stack.db["executor_host_keys"].insert_one({
            "_id": "SRV-PINNED", "key": ssh_targets.sshd.host_key_line, "host": "127.0.0.1",
            "port": ssh_targets.port, "source": DISK_SOURCE, "ticket_id": None})
        start_executor(stack, executors)
        before = logins(ssh_targets)
        event = verdict(
            signing_key=load_signing_key(stack.keys.signing_private),
            sealing_key=load_sealing_public(stack.keys.sealing_public),
            username=ssh_targets.admin.name, password=ssh_targets.admin.password,
            category="diagnostics",
            server=resolved_server(service_id="SRV-PINNED", ip="127.0.0.1",
                                   ssh_port=ssh_targets.port, rescue=True))
        await stack.publish(event)
        [done] = await stack.bus.wait(event.ticket_id, "InterventionCompleted", timeout=90)
        assert getattr(done, "outcome", None) == "refused"
        assert logins(ssh_targets) == before  # no password was sent to the server
        records = [r async for r in stack.db["audit"].find({"ticket_id": event.ticket_id})]
        assert "was not pinned by the executor" in json.dumps(records, default=str)
        assert (await verify_chain(stack.db, event.ticket_id)).ok
