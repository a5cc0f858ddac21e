"""What the end-to-end session fixtures hand to the tests (kept out of conftest.py so test
modules can import the types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.demo.helpdesk import HttpAnswer
from devstack.demo.launch import ServiceProcess
from devstack.demo.scenarios import Scenario
from services.intake.signing import Signer


@dataclass(frozen=True)
class System:
    prefix: str
    database: str
    mongodb_uri: str
    bootstrap: str
    env: dict[str, str]
    workdir: Path
    span_file: Path
    log_dir: Path
    intake_url: str
    services: list[ServiceProcess]
    signer: Signer
    """How the demo's helpdesk signs (its registered integration, for the demo customer)."""


@dataclass
class Submitted:
    scenarios: dict[str, Scenario]
    requests: dict[str, dict[str, Any]]
    answers: dict[str, HttpAnswer | str]
    stalled: list[str] = field(default_factory=list)

    def ticket(self, key: str) -> str:
        return str(self.requests[key]["ticket_id"])


