"""The demo customer's servers: three real sshd targets on this machine, and their inventory.

- ``web-01`` — healthy, on loopback; also runs a throwaway SysV service (for the restart
  ticket) and sees a local apt repository of throwaway packages (for the install ticket);
- ``db-01`` — on loopback, with a **simulated** failing-disk signature: its sessions see
  ``smartctl`` and ``dmesg`` stand-ins that print a dying disk's output (each says it is a
  simulation); also has the account whose password the customer lost;
- ``edge-01`` — a rescue lab server (:mod:`devstack.demo.rescue_lab`): its own disk image
  on a loop device, booted in its own network namespace, locked out by the customer's
  firewall — ``/etc/nftables.conf`` on its disk drops TCP port 22, so SSH times out from
  outside. The provider's rescue API for it is a local stand-in (its own process); the
  executor gets its address (:meth:`Estate.executor_env`) and repairs the server from the
  rescue system.

Every account, process, namespace, disk and package is recorded in a :class:`Manifest` as
it is made, so the estate is removed completely however the run ends.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from devstack.demo import rescue_lab, signatures, targets
from devstack.demo.manifest import Manifest

ServerKey = Literal["healthy", "failing_disk", "locked_out"]

RESCUE_TIMINGS = {"EXECUTOR_RESCUE_POLL_S": "0.5", "EXECUTOR_RESCUE_BOOT_TIMEOUT_S": "60",
                  "EXECUTOR_RESCUE_SSH_WAIT_S": "30"}


@dataclass(frozen=True, kw_only=True)
class DemoServer:
    key: ServerKey
    service_id: str
    service_name: str
    host: str
    port: int
    host_key_line: str
    rescue: bool
    note: str
    ipkvm: bool = False


@dataclass(frozen=True, kw_only=True)
class Estate:
    run: str
    account_id: str
    admin: targets.ThrowawayUser  # the customer's admin login (password sudo) on every server
    reset_account: targets.ThrowawayUser  # the account whose password the customer lost
    service: targets.SysvService
    repo: targets.AptRepo
    lab: rescue_lab.LabServer  # edge-01
    rescue_api: rescue_lab.ProviderApi  # the provider stand-in's, for edge-01
    servers: dict[ServerKey, DemoServer]
    sshds: dict[ServerKey, targets.Sshd]  # the servers that are sshd processes on this host

    def server(self, key: ServerKey) -> DemoServer:
        return self.servers[key]

    def executor_env(self) -> dict[str, str]:
        """The executor's settings for this estate: the provider's rescue API, and rescue
        timings for lab servers, which boot in about a second (production: polled every
        5 s, boots given 15 min, SSH 2 min to answer after one)."""
        return {**self.rescue_api.executor_env(), **RESCUE_TIMINGS}

    def rescue_passwords(self) -> list[str]:
        """The one-time rescue root passwords the provider stand-in set for edge-01 so far
        (its record in the server's working directory, readable by root only)."""
        return self.lab.rescue_passwords()

    def inventory(self) -> list[dict[str, Any]]:
        """Rows for ``intervene servers import`` (JSON form): the provider's records."""
        return [{
            "service_id": s.service_id, "service_name": s.service_name, "ips": [s.host],
            "account_id": self.account_id, "authorized_contacts": [], "type": "dedicated",
            "os_family": "linux", "ipkvm": s.ipkvm, "rescue": s.rescue, "ssh_port": s.port,
            # Pinned from the start: the executor refuses any other key before sending the
            # customer's password (no trust on first use needed).
            "ssh_host_key": s.host_key_line, "datacenter": "local-demo",
        } for s in self.servers.values()]


def build_estate(manifest: Manifest, *, run: str, account_id: str,
                 prefix: str = "ivd") -> Estate:
    """Create users, the three servers, the service and the repository (needs root)."""
    reason = targets.available(netns=True) or rescue_lab.available()
    if reason is not None:
        raise RuntimeError(f"the demo servers cannot run on this machine: {reason}")
    admin = targets.ThrowawayUser.create(sudo=True, prefix=prefix)
    manifest.user(admin)
    reset_account = targets.ThrowawayUser.create(sudo=False, prefix=prefix)
    manifest.user(reset_account)

    service = targets.SysvService.install(prefix=prefix)
    manifest.sysv(service)
    repo = targets.AptRepo.create(count=2, prefix=prefix)
    manifest.apt_repo(repo)

    web_ip = targets.loopback_address()
    db_ip = next(ip for ip in iter(targets.loopback_address, None) if ip != web_ip)
    healthy = targets.Sshd.start([admin.name], listen=web_ip, prefix=prefix)
    manifest.sshd("sshd web-01 (healthy)", healthy)

    tools = Path(tempfile.mkdtemp(prefix=f"{prefix}-simulated-tools-"))
    manifest.add("path", path=str(tools))
    signatures.write_failing_disk_tools(tools)
    failing = targets.Sshd.start([admin.name, reset_account.name], tools=tools,
                                 listen=db_ip, prefix=prefix)
    manifest.sshd("sshd db-01 (simulated failing disk)", failing)

    lab, host_key, rescue_api = _locked_out_server(manifest, run=run, admin=admin,
                                                   prefix=prefix)

    servers: dict[ServerKey, DemoServer] = {
        "healthy": DemoServer(
            key="healthy", service_id=f"SRV-{run}-web", service_name="web-01",
            host=healthy.host, port=healthy.port, host_key_line=healthy.host_key_line,
            rescue=True, note="healthy"),
        "failing_disk": DemoServer(
            key="failing_disk", service_id=f"SRV-{run}-db", service_name="db-01",
            host=failing.host, port=failing.port, host_key_line=failing.host_key_line,
            rescue=True, note="simulated failing disk (smartctl/dmesg stand-ins)"),
        "locked_out": DemoServer(
            key="locked_out", service_id=lab.service_id, service_name="edge-01",
            host=lab.address, port=22, host_key_line=host_key,
            # With an IP-KVM too: where rescue mode is not automated, the console is next.
            rescue=True, ipkvm=True,
            note=f"its firewall drops port 22 (disk image, netns {lab.netns}); rescue API "
                 f"stand-in {rescue_api.url}"),
    }
    return Estate(run=run, account_id=account_id, admin=admin, reset_account=reset_account,
                  service=service, repo=repo, lab=lab, rescue_api=rescue_api, servers=servers,
                  sshds={"healthy": healthy, "failing_disk": failing})


def _locked_out_server(manifest: Manifest, *, run: str, admin: targets.ThrowawayUser,
                       prefix: str) -> tuple[rescue_lab.LabServer, str, rescue_lab.ProviderApi]:
    """edge-01: a lab server with the customer's admin login and a firewall that drops SSH,
    running (powered on by the provider stand-in); returns it, its host key (read from its
    disk, for the inventory) and the stand-in's API."""
    lab = rescue_lab.LabServer.create(
        service_id=f"SRV-{run}-edge", prefix=prefix,
        record=lambda server: manifest.lab_server("rescue lab server edge-01", server))
    rescue_lab.customer_login(lab, admin.name, admin.password)
    rescue_lab.break_firewall(lab, nic=None)
    host_key = lab.host_key()
    # Its log beside the server's console logs (removed with the server, stopped before).
    provider = rescue_lab.ProviderProcess.start([lab], log_path=lab.workdir / "provider.log")
    manifest.process("rescue provider API stand-in", provider.process.pid)
    provider.wait_ready()
    # sshd runs on the server, and the firewall on its disk drops SSH from outside.
    if not lab.wait_ssh(inside=True):
        raise RuntimeError(f"edge-01 did not boot: {lab.console()[-1500:]}")
    if lab.listening():
        raise RuntimeError("edge-01 answers on port 22: its firewall did not lock SSH out")
    return lab, host_key, provider.api
