"""The demo customer's servers: three real sshd targets on this machine, and their inventory.

- ``web-01`` — healthy, on loopback; also runs a throwaway SysV service (for the restart
  ticket) and sees a local apt repository of throwaway packages (for the install ticket);
- ``db-01`` — on loopback, with a **simulated** failing-disk signature: its sessions see
  ``smartctl`` and ``dmesg`` stand-ins that print a dying disk's output (each says it is a
  simulation); also has the account whose password the customer lost;
- ``edge-01`` — in its own network namespace, locked out by the customer's firewall: an
  nftables rule inside the namespace drops TCP port 22, so SSH times out from outside.

Every account, process, namespace and package is recorded in a :class:`Manifest` as it is
made, so the estate is removed completely however the run ends.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from services.demo import signatures, targets
from services.demo.manifest import Manifest

ServerKey = Literal["healthy", "failing_disk", "locked_out"]


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
    netns: targets.Netns
    servers: dict[ServerKey, DemoServer]
    sshds: dict[ServerKey, targets.Sshd]

    def server(self, key: ServerKey) -> DemoServer:
        return self.servers[key]

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
    reason = targets.available(netns=True)
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

    netns = targets.Netns.create(prefix=prefix)
    manifest.netns(netns)
    locked = targets.Sshd.start([admin.name], netns=netns, prefix=prefix)
    manifest.sshd("sshd edge-01 (locked out)", locked)
    # Listening was proven above; from now on the customer's firewall drops SSH.
    netns.firewall_drop_tcp(22)

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
            key="locked_out", service_id=f"SRV-{run}-edge", service_name="edge-01",
            host=locked.host, port=locked.port, host_key_line=locked.host_key_line,
            # With an IP-KVM too: where rescue mode is not automated, the console is next.
            rescue=True, ipkvm=True, note=f"firewall drops port 22 (netns {netns.name})"),
    }
    return Estate(run=run, account_id=account_id, admin=admin, reset_account=reset_account,
                  service=service, repo=repo, netns=netns, servers=servers,
                  sshds={"healthy": healthy, "failing_disk": failing, "locked_out": locked})
