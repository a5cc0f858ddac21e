"""Engineer instructions: exact, with backups first and a check from outside."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from executor_verdicts import resolved_server

from schemas.events import ManualStepRequested
from schemas.scope import INCLUDED_CATEGORIES
from services.executor.console_steps import console_instructions


def test_windows_boot_manager_repair_is_written_out() -> None:
    server = resolved_server(os_family="windows", service_name="win-01")
    steps, verify = console_instructions(server, "boot_repair", "ipkvm")
    text = "\n".join(steps)
    assert steps[0].startswith("Open the IP-KVM console for server win-01")
    assert text.index("bcdedit /export") < text.index("bootrec /fixmbr")  # backup first
    for command in ("bootrec /fixboot", "bootrec /rebuildbcd", "bcdboot C:\\Windows /s S:"):
        assert command in text
    assert any("RDP login works" in v for v in verify)


def test_rdp_restoration_backs_up_the_registry_and_firewall_first() -> None:
    steps, verify = console_instructions(resolved_server(os_family="windows"),
                                         "remote_access_restoration", "vnc")
    text = "\n".join(steps)
    assert text.index("reg export") < text.index("fDenyTSConnections")
    assert "Enable-NetFirewallRule -DisplayGroup 'Remote Desktop'" in text
    assert any("Test-NetConnection" in v for v in verify)


@pytest.mark.parametrize("os_family", ["linux", "windows"])
@pytest.mark.parametrize("category", sorted(INCLUDED_CATEGORIES))
@pytest.mark.parametrize("method", ["ipkvm", "vnc", "datacenter"])
def test_every_console_step_fits_the_event(os_family: str, category: str, method: str) -> None:
    steps, verify = console_instructions(resolved_server(os_family=os_family), category,  # type: ignore[arg-type]
                                         method)  # type: ignore[arg-type]
    assert len(steps) >= 3
    assert verify
    assert verify[-1] == "Nothing beyond what the ticket asked for was changed."
    ManualStepRequested.new(ticket_id="HD-1", revision=1, step_id="r1-console",
                            method=method, instructions=steps,  # type: ignore[arg-type]
                            verification=verify, reason="r")
