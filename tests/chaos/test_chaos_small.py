"""The small chaos run in CI: about 60 tickets while intake, auth, the executor, the
notifier, the Kafka broker and FerretDB are each SIGKILLed once and restarted, on a private
stack of their own (``bench/chaos.py``; the shared broker and store are never touched).

Nothing accepted is lost, nothing is done or told twice, no runbook step runs twice,
nothing is dead-lettered, no service exits by itself during the broker's or the store's
outage, the canary password is nowhere, the audit chain verifies and nothing is stuck.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos
import private_stack

from devstack.demo import targets

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


async def test_sixty_tickets_through_six_kills_lose_nothing_and_do_nothing_twice() -> None:
    private_stack.install_missing()
    reason = targets.available() or private_stack.unavailable()
    if reason is not None:
        # A missing real part is a failure, never a skip: the run proves nothing without it.
        pytest.fail(f"chaos run impossible here: {reason}")
    report = await chaos.run_chaos(chaos.parse_args([
        "--tickets", "60", "--rate", "0.6", "--first-kill", "5", "--interval", "8",
        "--down", "3", "--timeout", "240"]))
    print(report.line())
    assert report.problems == []
    assert len(report.kills) == 6
    assert (report.accepted, report.lost, report.duplicate, report.missing_updates) == (
        60, 0, 0, 0), report.line()
    assert (report.double_executed, report.dlq, report.canary, report.stuck,
            report.exited) == (0, 0, 0, 0, 0), report.line()
    assert report.audit_ok, report.line()
    assert report.ok
