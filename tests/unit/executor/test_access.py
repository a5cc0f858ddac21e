"""Access-method selection, as the procedure's table: facts + category + probe -> method."""

from __future__ import annotations

import pytest

from schemas.scope import CATEGORIES, INCLUDED_CATEGORIES
from services.executor.access import (
    Probe,
    ServerFacts,
    needs_probe,
    select_access,
)

DED_KVM_RESCUE = ServerFacts(type="dedicated", os_family="linux", ipkvm=True, rescue=True)
DED_KVM = ServerFacts(type="dedicated", os_family="linux", ipkvm=True, rescue=False)
DED_BARE = ServerFacts(type="dedicated", os_family="linux", ipkvm=False, rescue=False)
VPS = ServerFacts(type="vps", os_family="linux", ipkvm=False, rescue=False)
VPS_RESCUE = ServerFacts(type="vps", os_family="linux", ipkvm=False, rescue=True)
WIN_DED = ServerFacts(type="dedicated", os_family="windows", ipkvm=True, rescue=True)
WIN_VPS = ServerFacts(type="vps", os_family="windows", ipkvm=False, rescue=True)

OK = Probe(outcome="ok", privileged=True)
OK_UNPRIVILEGED = Probe(outcome="ok", privileged=False)
DOWN = Probe(outcome="unreachable")
AUTH = Probe(outcome="auth_failed")
MISMATCH = Probe(outcome="host_key_mismatch", detail="pinned SHA256:a, offered SHA256:b")
NONE = Probe(outcome="not_attempted")

# server, category, probe -> method, mode, disposition, runbook
TABLE = [
    # SSH works: the four SSH runbooks run, automated.
    (DED_KVM_RESCUE, "diagnostics", OK, "ssh", "automated", "run", "diagnostics"),
    (VPS, "service_restart", OK, "ssh", "automated", "run", "service_restart"),
    (VPS, "software_installation", OK, "ssh", "automated", "run", "software_installation"),
    (DED_BARE, "root_password_reset", OK, "ssh", "automated", "run", "root_password_reset"),
    # Windows through Windows OpenSSH + PowerShell where a variant exists.
    (WIN_DED, "diagnostics", OK, "windows_openssh", "automated", "run", "diagnostics"),
    (WIN_VPS, "service_restart", OK, "windows_openssh", "automated", "run", "service_restart"),
    (WIN_DED, "root_password_reset", OK, "windows_openssh", "automated", "run",
     "root_password_reset"),
    (WIN_DED, "software_installation", OK, "windows_openssh", "engineer", "hand_over",
     "engineer.software_installation"),
    # No administrator rights: diagnostics still run, changes need a better account.
    (VPS, "diagnostics", OK_UNPRIVILEGED, "ssh", "automated", "run", "diagnostics"),
    (VPS, "service_restart", OK_UNPRIVILEGED, "ssh", "automated", "clarify", "service_restart"),
    # Credentials refused: ask the customer, except a lost password, which goes offline.
    (VPS, "diagnostics", AUTH, "ssh", "automated", "clarify", "diagnostics"),
    (DED_KVM_RESCUE, "root_password_reset", AUTH, "rescue", "automated", "run",
     "rescue.root_password_reset"),
    (DED_KVM, "root_password_reset", AUTH, "ipkvm", "engineer", "hand_over",
     "console.root_password_reset"),
    (VPS, "root_password_reset", AUTH, "vnc", "engineer", "hand_over",
     "console.root_password_reset"),
    # Unreachable: work on the running system goes to its console (rescue cannot restart
    # the customer's service), else the data centre.
    (DED_KVM_RESCUE, "service_restart", DOWN, "ipkvm", "engineer", "hand_over",
     "console.service_restart"),
    (DED_KVM, "diagnostics", DOWN, "ipkvm", "engineer", "hand_over", "console.diagnostics"),
    (VPS, "diagnostics", DOWN, "vnc", "engineer", "hand_over", "console.diagnostics"),
    (DED_BARE, "diagnostics", DOWN, "datacenter", "engineer", "hand_over",
     "console.diagnostics"),
    (WIN_DED, "diagnostics", DOWN, "ipkvm", "engineer", "hand_over", "console.diagnostics"),
    # Offline repairs never run on the live system.
    (DED_KVM_RESCUE, "boot_repair", NONE, "rescue", "automated", "run",
     "rescue.boot_repair"),
    (VPS_RESCUE, "filesystem_repair", NONE, "rescue", "automated", "run",
     "rescue.filesystem_repair"),
    (VPS, "filesystem_repair", NONE, "vnc", "engineer", "hand_over",
     "console.filesystem_repair"),
    (WIN_DED, "boot_repair", NONE, "ipkvm", "engineer", "hand_over", "console.boot_repair"),
    (WIN_VPS, "boot_repair", NONE, "vnc", "engineer", "hand_over", "console.boot_repair"),
    # Lock-outs: reachable from the provider's network -> an engineer looks; else offline.
    (DED_KVM_RESCUE, "network_recovery", OK, "ssh", "engineer", "hand_over",
     "engineer.network_recovery"),
    (DED_KVM_RESCUE, "network_recovery", DOWN, "rescue", "automated", "run",
     "rescue.network_recovery"),
    (DED_KVM_RESCUE, "remote_access_restoration", DOWN, "rescue", "automated", "run",
     "rescue.remote_access_restoration"),
    # Without the provider's API the same repairs are console work.
    (ServerFacts(type="dedicated", os_family="linux", ipkvm=True, rescue=True,
                 rescue_automated=False), "boot_repair", NONE, "ipkvm", "engineer",
     "hand_over", "console.boot_repair"),
    (VPS, "remote_access_restoration", DOWN, "vnc", "engineer", "hand_over",
     "console.remote_access_restoration"),
    (WIN_VPS, "remote_access_restoration", DOWN, "vnc", "engineer", "hand_over",
     "console.remote_access_restoration"),
    (WIN_VPS, "remote_access_restoration", OK, "windows_openssh", "engineer", "hand_over",
     "engineer.remote_access_restoration"),
    # A wrong host key stops everything, whatever the category.
    (DED_KVM_RESCUE, "diagnostics", MISMATCH, "ssh", "engineer", "refuse", "none"),
    (DED_KVM_RESCUE, "network_recovery", MISMATCH, "ssh", "engineer", "refuse", "none"),
    # Paid-only work is recognised and never executed.
    (DED_KVM_RESCUE, "malware_removal", OK, "ssh", "engineer", "refuse", "none"),
]


@pytest.mark.parametrize(("server", "category", "probe", "method", "mode", "disposition",
                          "runbook"), TABLE)
def test_access_method_table(server: ServerFacts, category: str, probe: Probe, method: str,
                             mode: str, disposition: str, runbook: str) -> None:
    decision = select_access(server, category, probe)  # type: ignore[arg-type]
    assert (decision.method, decision.mode, decision.disposition, decision.runbook) == (
        method, mode, disposition, runbook)
    assert decision.reason  # the choice is always explained


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("server", [DED_KVM_RESCUE, DED_BARE, VPS, WIN_DED, WIN_VPS])
@pytest.mark.parametrize("probe", [OK, OK_UNPRIVILEGED, DOWN, AUTH, MISMATCH, NONE,
                                   Probe(outcome="ssh_error")])
def test_every_combination_has_a_reasoned_answer(server: ServerFacts, category: str,
                                                 probe: Probe) -> None:
    decision = select_access(server, category, probe)  # type: ignore[arg-type]
    assert decision.reason
    if decision.disposition == "run" and decision.method != "rescue":
        assert decision.method in ("ssh", "windows_openssh")
        assert decision.timeline == "standard"
    if decision.method == "rescue":
        assert (decision.mode, decision.disposition, decision.timeline) == (
            "automated", "run", "complex")
        assert decision.runbook == f"rescue.{category}"
    if decision.mode == "engineer" and decision.disposition == "hand_over":
        assert decision.method != "rescue"
    if decision.method == "datacenter":
        assert decision.timeline == "datacenter"
    if decision.disposition == "clarify":
        assert decision.question
    if category not in INCLUDED_CATEGORIES:
        assert decision.disposition == "refuse"


def test_rescue_and_console_work_is_announced_as_complex() -> None:
    assert select_access(DED_KVM_RESCUE, "boot_repair", NONE).timeline == "complex"
    assert select_access(VPS, "diagnostics", DOWN).timeline == "complex"


def test_offline_repairs_do_not_probe_ssh() -> None:
    assert not needs_probe("boot_repair")
    assert not needs_probe("filesystem_repair")
    assert needs_probe("diagnostics")


def test_reason_names_the_mismatch_detail() -> None:
    assert "SHA256:b" in select_access(DED_KVM_RESCUE, "diagnostics", MISMATCH).reason


def test_a_rescue_capable_server_without_an_inventory_key_is_not_trusted_on_first_use() -> None:
    from services.executor.access import first_use_allowed

    assert not first_use_allowed(DED_KVM_RESCUE, None)
    assert not first_use_allowed(VPS_RESCUE, "")
    assert first_use_allowed(DED_KVM_RESCUE, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB")
    assert first_use_allowed(VPS, None)  # no rescue: nothing better than first use exists


@pytest.mark.parametrize("category", ["diagnostics", "service_restart", "network_recovery",
                                      "root_password_reset"])
def test_an_unpinned_rescue_capable_server_goes_to_an_engineer(category: str) -> None:
    decision = select_access(DED_KVM_RESCUE, category,  # type: ignore[arg-type]
                             Probe(outcome="host_key_unpinned"))
    assert (decision.mode, decision.disposition) == ("engineer", "hand_over")
    assert "not trusted on first use" in decision.reason
