"""The demo tickets: one per situation the procedure covers, and where each should end.

Each :class:`Scenario` is a §4.1 helpdesk request for one of the demo servers
(:mod:`devstack.demo.estate`), the door it comes through (intake's HTTP API, or sealed on
the helpdesk topic as a helpdesk integration would publish it), and the settled states the
system is expected to reach. The demo prints them; the end-to-end tests assert them.

The lock-out (``edge-01``, a rescue lab server whose firewall drops SSH) ends resolved by
the rescue automation: SSH times out, the executor has the provider (the estate's API
stand-in) boot the server into its rescue system, repairs ``/etc/nftables.conf`` on the
disk, boots it back and logs in over SSH from outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from devstack.demo.estate import Estate, ServerKey
from devstack.demo.progress import Phase

Door = Literal["http", "helpdesk_topic"]
Expectation = tuple[Phase, str | None]  # (phase, outcome when completed; None: any)

AUTHORIZES = ("I authorize the provider's support to perform OS-level intervention on this "
              "server.")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    key: str
    title: str
    server: ServerKey
    door: Door
    expected: frozenset[Expectation]
    build: Callable[[Estate, str], dict[str, Any]]  # (estate, ticket id) -> request

    def ticket_id(self, run: str) -> str:
        return f"HD-{run}-{self.key}"

    def request(self, estate: Estate) -> dict[str, Any]:
        return self.build(estate, self.ticket_id(estate.run))

    def expectation_text(self) -> str:
        return " or ".join(f"{phase}{': ' + outcome if outcome else ''}"
                           for phase, outcome in sorted(self.expected, key=str))

    def met(self, phase: Phase, outcome: str | None) -> bool:
        return any(phase == p and (o is None or o == outcome) for p, o in self.expected)


def _request(estate: Estate, ticket_id: str, server: ServerKey, *, category: str | None,
             description: str, parameters: dict[str, Any] | None = None,
             language: str = "en", authorized: bool = True,
             error_messages: tuple[str, ...] = ()) -> dict[str, Any]:
    signed_at = datetime.now(UTC) - timedelta(minutes=2)
    authorization: dict[str, Any] = {
        "statement": AUTHORIZES if authorized else "Please have a look when you can.",
        "accepts_backup_responsibility": authorized,
        "accepts_service_interruption": authorized,
        "accepts_data_loss_disclaimer": authorized,
        "signed_by": "Dana Demo",
        "signed_at": signed_at.isoformat().replace("+00:00", "Z"),
    }
    request: dict[str, Any] = {
        "ticket_id": ticket_id, "revision": 1, "account_id": estate.account_id,
        "department": "technical_issues", "channel": "client_area", "language": language,
        "server": {"service_id": estate.server(server).service_id},
        "category": category, "description": description,
        "error_messages": list(error_messages),
        "credentials": {"username": estate.admin.name, "password": estate.admin.password},
        "authorization": authorization,
    }
    if parameters is not None:
        request["parameters"] = parameters
    return request


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        key="diagnostics", title="diagnostics (healthy server)", server="healthy", door="http",
        expected=frozenset({("completed", "resolved")}),
        build=lambda e, t: _request(
            e, t, "healthy", category="diagnostics",
            description="Please run a health check on web-01: load, memory and disks.")),
    Scenario(
        key="disk", title="diagnostics (simulated failing disk)", server="failing_disk",
        door="http", expected=frozenset({("completed", "partially_resolved")}),
        build=lambda e, t: _request(
            e, t, "failing_disk", category="diagnostics",
            description="db-01 became very slow and the application logs show I/O errors. "
                        "Please run diagnostics.",
            error_messages=("EXT4-fs warning (device sda1): I/O error",))),
    Scenario(
        key="restart", title="service restart", server="healthy", door="http",
        expected=frozenset({("completed", "resolved")}),
        build=lambda e, t: _request(
            e, t, "healthy", category="service_restart",
            description=f"The {e.service.name} service on web-01 hangs; please restart it.",
            parameters={"unit": e.service.name})),
    Scenario(
        key="install", title="software installation (Italian)", server="healthy",
        door="http", expected=frozenset({("completed", "resolved")}),
        build=lambda e, t: _request(
            e, t, "healthy", category="software_installation", language="it",
            description=f"Per favore installate il pacchetto {e.repo.packages[0]} su web-01.",
            parameters={"packages": [e.repo.packages[0]]})),
    Scenario(
        key="password", title="password reset", server="failing_disk", door="http",
        expected=frozenset({("completed", "resolved")}),
        build=lambda e, t: _request(
            e, t, "failing_disk", category="root_password_reset",
            description=f"We lost the password of the {e.reset_account.name} account on "
                        "db-01; please reset it.",
            parameters={"account": e.reset_account.name})),
    Scenario(
        key="lockout", title="firewall lock-out (rescue)", server="locked_out", door="http",
        expected=frozenset({("completed", "resolved")}),
        build=lambda e, t: _request(
            e, t, "locked_out", category="network_recovery",
            description="After I changed the firewall on edge-01 SSH times out; I locked "
                        "myself out. Please restore access.",
            error_messages=("ssh: connect to host edge-01 port 22: Connection timed out",))),
    Scenario(
        key="paid", title="paid-only request", server="healthy", door="helpdesk_topic",
        expected=frozenset({("refused", None)}),
        build=lambda e, t: _request(
            e, t, "healthy", category="performance_tuning",
            description="Please tune MySQL on web-01 for more throughput.")),
    Scenario(
        key="noauth", title="no written authorization", server="healthy",
        door="helpdesk_topic", expected=frozenset({("rejected", None)}),
        build=lambda e, t: _request(
            e, t, "healthy", category="diagnostics", authorized=False,
            description="Please check why web-01 is slow.")),
)
