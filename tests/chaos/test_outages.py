"""Every service rides out an outage of the broker and of the store, under load.

On a private stack (``bench/chaos.py``; the shared one is never touched), while tickets
flow through all four services: the Kafka broker is frozen (SIGSTOP) for 40 s - its
connections hang rather than fail - then resumed; FerretDB is SIGKILLed, left down 40 s and
restarted. During each outage every service answers ``/healthz`` 503 naming the dependency,
since when it is down and why, and none exits; afterwards each recovers by itself (no
restart) and every accepted ticket is done and told exactly once, nothing dead-lettered.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos
import private_stack

from devstack.demo import targets

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


async def test_every_service_reports_and_rides_out_a_frozen_broker_and_a_dead_store() -> None:
    reason = targets.available() or private_stack.unavailable()
    if reason is not None:
        pytest.fail(f"outage run impossible here: {reason}")
    report = await chaos.run_chaos(chaos.parse_args([
        "--tickets", "30", "--rate", "0.5", "--kills", "kafka-freeze,ferretdb",
        "--first-kill", "5", "--interval", "5", "--down", "40", "--timeout", "240"]))
    print(report.line())
    for kill, dependency in zip(report.kills, ("kafka", "mongodb"), strict=True):
        assert set(kill.health) == set(chaos.SERVICES)
        for service, (code, body) in kill.health.items():
            assert code == 503, f"{service} during {kill.target}: {code} {body}"
            down = body["dependencies"][dependency]
            assert down["ok"] is False, f"{service} during {kill.target}: {body}"
            assert down["error"], f"{service} does not say why: {body}"
            since = datetime.fromisoformat(down["since"]).timestamp()
            # Since the service first noticed: a handler's failure or, at the latest, the
            # probe of this very request.
            assert kill.at - 5 <= since <= kill.health_at, (
                f"{service} dates the {dependency} outage at {down['since']}")
        assert kill.recovery_s < 120, f"{kill.target}: {kill.recovery_s:.0f}s to recover"
    assert report.exited == 0, report.problems
    assert (report.accepted, report.lost, report.duplicate, report.missing_updates,
            report.dlq) == (30, 0, 0, 0, 0), report.line()
    assert report.ok, report.line()
