"""How to reach the server for this ticket: a pure function of server facts, the category and
a live probe, returning the method, who works it, the runbook and — always — why.

The procedure's order of preference: SSH (Windows OpenSSH + PowerShell for Windows hosts)
whenever it works and the work can be done on a running system; rescue mode (automated
through the provider's API) when the system must be repaired offline or cannot be reached;
the console when there is no rescue: IP-KVM for dedicated servers with that option, the
VNC console for VPS, data-centre staff otherwise. Rescue mode is automated for the repairs
that have a rescue runbook (:data:`RESCUE_AUTOMATED`) when this executor has a provider API
configured; work that needs the running system (a service restart, diagnostics, software)
on a server SSH cannot reach goes to the console, where an engineer sees that system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.events import AccessMethod
from schemas.scope import INCLUDED_CATEGORIES, Category

ProbeOutcome = Literal[
    "ok",               # connected, host key accepted, logged in
    "unreachable",      # no TCP connection (timeout, refused, no route)
    "ssh_error",        # TCP worked but the SSH handshake did not
    "auth_failed",      # the customer's credentials were refused
    "host_key_mismatch",  # the server presented another key than the pinned one
    "host_key_unpinned",  # no pinned key, and this server's key may not be trusted on first use
    "not_attempted",
]
Disposition = Literal["run", "hand_over", "refuse", "clarify"]
Timeline = Literal["standard", "complex", "datacenter"]

# Work that needs the root filesystem offline: never on the running system.
OFFLINE_CATEGORIES: frozenset[Category] = frozenset({"boot_repair", "filesystem_repair"})
# Lock-outs: if we can log in, an engineer looks with the customer; if not, rescue/console.
LOCKOUT_CATEGORIES: frozenset[Category] = frozenset(
    {"network_recovery", "remote_access_restoration"})
# Automated over SSH by this service's runbooks.
SSH_RUNBOOKS: dict[Category, str] = {
    "diagnostics": "diagnostics",
    "service_restart": "service_restart",
    "software_installation": "software_installation",
    "root_password_reset": "root_password_reset",
}
WINDOWS_SSH_RUNBOOKS = frozenset({"diagnostics", "service_restart", "root_password_reset"})
# Diagnostics still say something useful without administrator rights; the others do not.
UNPRIVILEGED_OK = frozenset({"diagnostics"})
# Repaired from the provider's rescue system by a rescue runbook (Linux only).
RESCUE_AUTOMATED: frozenset[Category] = frozenset({
    "root_password_reset", "filesystem_repair", "boot_repair", "remote_access_restoration",
    "network_recovery"})


@dataclass(frozen=True, kw_only=True)
class ServerFacts:
    type: Literal["dedicated", "vps"]
    os_family: Literal["linux", "windows"]
    ipkvm: bool
    rescue: bool
    rescue_automated: bool = True  # this executor has the provider's rescue API configured


@dataclass(frozen=True, kw_only=True)
class Probe:
    outcome: ProbeOutcome
    privileged: bool = False
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class AccessDecision:
    method: AccessMethod
    mode: Literal["automated", "engineer"]
    disposition: Disposition
    runbook: str
    reason: str
    timeline: Timeline = "standard"
    question: str | None = None  # for "clarify": what to ask the customer


def first_use_allowed(server: ServerFacts, inventory_key: str | None) -> bool:
    """May the executor trust the host key a server offers on first contact?

    Not for a server that can be booted into rescue: its real key can be read from its own
    disk through the provider-authenticated rescue system, so a key merely offered over
    the network (by whoever answers on its address) is never trusted with the customer's
    password. Such a server needs its key in the inventory (or pinned from its disk by an
    earlier rescue run); without one the probe stops at ``host_key_unpinned`` and an
    engineer confirms the key. Servers without rescue keep trust on first use: nothing
    better exists for them.
    """
    return not server.rescue or bool(inventory_key)


def needs_probe(category: Category) -> bool:
    """Offline repairs go to rescue/console whatever SSH says; everything else probes."""
    return category not in OFFLINE_CATEGORIES


def console_for(server: ServerFacts) -> AccessMethod:
    if server.type == "vps":
        return "vnc"
    return "ipkvm" if server.ipkvm else "datacenter"


def _console_name(method: AccessMethod) -> str:
    return {"vnc": "the VNC console", "ipkvm": "IP-KVM",
            "datacenter": "on-site data-centre access"}.get(method, method)


def _offline(server: ServerFacts, category: Category, why: str) -> AccessDecision:
    """Rescue when the server has it (Linux) and a rescue runbook exists, else the console,
    else the data centre."""
    if server.os_family == "linux" and server.rescue and category in RESCUE_AUTOMATED \
            and server.rescue_automated:
        return AccessDecision(
            method="rescue", mode="automated", disposition="run",
            runbook=f"rescue.{category}", timeline="complex",
            reason=f"{why}; the server supports rescue mode, so it is booted into the rescue "
                   "system, repaired there and booted back from its disk.")
    method = console_for(server)
    if server.os_family == "windows":
        no_rescue = "Windows repairs of this kind are console work"
    elif not server.rescue:
        no_rescue = "the server has no rescue mode"
    elif category not in RESCUE_AUTOMATED:
        no_rescue = "this work needs the running system, which only the console shows"
    else:
        no_rescue = "rescue mode is not automated by this executor (no provider API)"
    return AccessDecision(
        method=method, mode="engineer", disposition="hand_over",
        runbook=f"console.{category}", timeline="datacenter" if method == "datacenter"
        else "complex",
        reason=f"{why}; {no_rescue}, so an engineer works through {_console_name(method)}.")


def select_access(server: ServerFacts, category: Category, probe: Probe) -> AccessDecision:
    ssh: AccessMethod = "windows_openssh" if server.os_family == "windows" else "ssh"
    ssh_name = "Windows OpenSSH" if ssh == "windows_openssh" else "SSH"

    if category not in INCLUDED_CATEGORIES:
        return AccessDecision(method=ssh, mode="engineer", disposition="refuse",
                              runbook="none", reason=f"{category} is not part of the OS "
                              "intervention procedure (paid service); nothing is executed.")
    if probe.outcome == "host_key_mismatch":
        return AccessDecision(
            method=ssh, mode="engineer", disposition="refuse", runbook="none",
            reason=f"the server presented a different {ssh_name} host key than the one pinned "
                   f"for it ({probe.detail or 'see the audit trail'}); the connection was "
                   "refused. An engineer must confirm a reinstall or a key change before "
                   "anyone logs in.")
    if probe.outcome == "host_key_unpinned":
        return AccessDecision(
            method=ssh, mode="engineer", disposition="hand_over",
            runbook=f"engineer.{category}",
            reason=f"the server can be booted into rescue mode but has no {ssh_name} host key "
                   "pinned in the inventory, and its key is not trusted on first use (the "
                   "customer's credentials would go to whoever answers on its address). An "
                   "engineer confirms the host key (and adds it to the inventory) first.")
    if category in OFFLINE_CATEGORIES:
        return _offline(server, category, f"{category.replace('_', ' ')} needs the system "
                        "offline")
    if category in LOCKOUT_CATEGORIES:
        if probe.outcome == "ok":
            return AccessDecision(
                method=ssh, mode="engineer", disposition="hand_over",
                runbook=f"engineer.{category}",
                reason=f"{ssh_name} works from the provider's network with the customer's "
                       "credentials, so the server is up; an engineer reviews the firewall and "
                       "remote-access configuration for the customer's own connections.")
        return _offline(server, category, f"{ssh_name} is not reachable "
                        f"({probe.outcome.replace('_', ' ')})")

    runbook = SSH_RUNBOOKS[category]
    if probe.outcome == "ok":
        if server.os_family == "windows" and runbook not in WINDOWS_SSH_RUNBOOKS:
            return AccessDecision(
                method=ssh, mode="engineer", disposition="hand_over",
                runbook=f"engineer.{category}",
                reason=f"{ssh_name} works, but {category.replace('_', ' ')} is not automated "
                       "on Windows; an engineer does it over the same connection.")
        if not probe.privileged and runbook not in UNPRIVILEGED_OK:
            return AccessDecision(
                method=ssh, mode="automated", disposition="clarify", runbook=runbook,
                reason=f"the account given logs in over {ssh_name} but has no administrator "
                       "rights, which this intervention needs.",
                question="The account you gave us logs in but cannot act as administrator "
                         "(sudo on Linux). Please give an account with administrator rights, "
                         "or add this one to the administrators.")
        return AccessDecision(
            method=ssh, mode="automated", disposition="run", runbook=runbook,
            reason=f"{ssh_name} login with the customer's credentials works"
                   + ("" if probe.privileged else " (without administrator rights: "
                      "administrator-only checks are skipped)") + ".")
    if probe.outcome == "auth_failed":
        if category == "root_password_reset":
            return _offline(server, category, f"the given account cannot log in over "
                            f"{ssh_name}, so the password must be reset offline")
        return AccessDecision(
            method=ssh, mode="automated", disposition="clarify", runbook=runbook,
            reason=f"{ssh_name} answers but refused the credentials given.",
            question="The username and password (or key) you gave us were refused by the "
                     "server. Please check them and send them again on this ticket.")
    return _offline(server, category, f"{ssh_name} is not reachable "
                    f"({probe.outcome.replace('_', ' ')})")
