"""The rescue runbooks: one per category repaired from the provider's rescue system.

Their parameters come from the verdict (where the backups go, the server's address and SSH
port) plus the ticket's own validated parameters (the account of a password reset).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.events import AuthorizationVerified
from schemas.scope import Category
from services.executor.rescue.runbooks.filesystem import RESCUE_FILESYSTEM_REPAIR
from services.executor.rescue.runbooks.firewall import RESCUE_NETWORK_RECOVERY
from services.executor.rescue.runbooks.grub import RESCUE_BOOT_REPAIR
from services.executor.rescue.runbooks.password import RESCUE_PASSWORD_RESET
from services.executor.rescue.runbooks.sshd import RESCUE_SSH_RESTORATION
from services.executor.runbooks.model import Runbook

RESCUE_RUNBOOKS: Mapping[str, Runbook[Any]] = {
    r.name: r for r in (RESCUE_PASSWORD_RESET, RESCUE_FILESYSTEM_REPAIR, RESCUE_BOOT_REPAIR,
                        RESCUE_SSH_RESTORATION, RESCUE_NETWORK_RECOVERY)
}
RESCUE_CATEGORIES: frozenset[Category] = frozenset(r.category for r in RESCUE_RUNBOOKS.values())
# Steps that change something without repairing anything: getting into and out of the
# rescue system, mounting, and keeping backups. A run whose repair failed after them is
# "unresolved", not "partially resolved".
INCIDENTAL_STEPS: frozenset[str] = frozenset({
    "rescue_boot_rescue", "rescue_access", "rescue_connect", "rescue_boot_disk", "rescue_verify",
    "mount_root", "unmount_root", "plan_undo", "keep_undo",
    *(step.name for r in RESCUE_RUNBOOKS.values() for step in r.build(
        r.params.model_validate({"backup_tag": "x", "server_ip": "192.0.2.1"}), "linux")
      if step.name.startswith("backup_")),
})


def rescue_runbook_for(category: Category) -> str:
    return f"rescue.{category}"


def backup_tag(ticket_id: str, revision: int) -> str:
    return f"{ticket_id}-r{revision}"


def rescue_params(verdict: AuthorizationVerified,
                  management_sources: tuple[str, ...] = ()) -> dict[str, Any]:
    """The runbook's raw parameters: the ticket's, plus what the executor knows (the
    provider's management networks among them; never from the ticket)."""
    return {**dict(verdict.ticket.parameters),
            "backup_tag": backup_tag(verdict.ticket_id, verdict.revision),
            "server_ip": str(verdict.server.ip), "ssh_port": verdict.server.ssh_port,
            "management_sources": tuple(management_sources)}


__all__ = ["INCIDENTAL_STEPS", "RESCUE_CATEGORIES", "RESCUE_RUNBOOKS", "backup_tag",
           "rescue_params", "rescue_runbook_for"]
