"""The runbook catalogue: one declaration per category the executor automates over SSH.

Rescue-mode and console runbooks (boot loader, filesystem, lock-outs) are the rescue
issue's; access selection hands those categories over instead of running them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.executor.runbooks.diagnostics import DIAGNOSTICS
from services.executor.runbooks.model import Runbook
from services.executor.runbooks.password_reset import ROOT_PASSWORD_RESET
from services.executor.runbooks.service_restart import SERVICE_RESTART
from services.executor.runbooks.software_installation import SOFTWARE_INSTALLATION

RUNBOOKS: Mapping[str, Runbook[Any]] = {
    r.name: r for r in (DIAGNOSTICS, SERVICE_RESTART, SOFTWARE_INSTALLATION, ROOT_PASSWORD_RESET)
}

__all__ = ["RUNBOOKS"]
