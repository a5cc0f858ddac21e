"""Auth's settings: the shared runtime's plus the verdict policy and auth's keys.

Environment variables (besides those of :class:`~services.runtime.settings.RuntimeSettings`):

- ``AUTH_SIGNING_KEY``: path of auth's private Ed25519 key file; default
  ``<INTERVENTION_KEYS_DIR or var/keys>/auth-signing.key``. Auth reads no other key: it
  never holds the executor's sealing key, so it cannot open the credentials it passes on.
- ``AUTH_INTAKE_VERIFY_KEYS``: comma-separated paths of intake's public signing key files
  (the current one plus any still rotating out); auth decides only on a TicketSubmitted
  signed by one of them, and audits and dead-letters any other. Default
  ``<keys dir>/intake-signing.pub``.
- ``AUTH_ALLOWED_DEPARTMENTS`` = ``technical_issues``: comma-separated helpdesk
  departments that may request an OS intervention (compared case- and separator-blind).
- ``AUTH_REVIEW_THRESHOLD`` = 3: this many earlier interventions on the same server within
  the window mark a new verdict for review.
- ``AUTH_REVIEW_WINDOW_DAYS`` = 30: the sliding window for that count.
- ``AUTH_AUTHORIZATION_MAX_AGE_DAYS`` = 30: a written authorization signed longer than this
  before the ticket revision was submitted is not bound to it.
- ``AUTH_CLOCK_SKEW_S`` = 300: tolerance for the customer's and the helpdesk's clocks when
  checking that an authorization was not signed in the future.
- ``AUTH_INVENTORY_CHECK_S`` = 2: how often each auth process reads the inventory's version
  (written by ``intervene servers import``) and drops its cached lookups when it changed: an
  import takes effect within this time; 0 reads it for every ticket.
- ``AUTH_DECISION_RETENTION_DAYS`` = 8: how long auth remembers a ticket's latest decided
  revision after its last decision (to refuse an older revision arriving late as
  ``revision_stale``); keep it at least the topics' retention and
  ``PROCESSED_EVENTS_RETENTION_DAYS``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field

from services.auth.verdict import Policy, department_key
from services.runtime.keys import (
    INTAKE_SIGNING_PUBLIC_FILE,
    SIGNING_PRIVATE_FILE,
    default_keys_dir,
)
from services.runtime.settings import RuntimeSettings


class AuthSettings(RuntimeSettings):
    auth_signing_key: Path | None = None
    auth_intake_verify_keys: str | None = None
    auth_allowed_departments: str = "technical_issues"
    auth_review_threshold: int = Field(default=3, ge=1, le=1000)
    auth_review_window_days: float = Field(default=30.0, gt=0, le=3650)
    auth_authorization_max_age_days: float = Field(default=30.0, gt=0, le=3650)
    auth_clock_skew_s: float = Field(default=300.0, ge=0, le=86400)
    auth_inventory_check_s: float = Field(default=2.0, ge=0, le=3600)
    auth_decision_retention_days: float = Field(default=8.0, gt=0, le=3650)

    @property
    def signing_key_path(self) -> Path:
        """The only key file auth opens."""
        if self.auth_signing_key is not None:
            return self.auth_signing_key
        base = (
            Path(self.intervention_keys_dir).expanduser()
            if self.intervention_keys_dir
            else default_keys_dir()
        )
        return base / SIGNING_PRIVATE_FILE

    @property
    def intake_verify_key_paths(self) -> tuple[Path, ...]:
        """Intake's public signing keys: a ticket counts only if signed by one of them."""
        value = self.auth_intake_verify_keys or ""
        paths = tuple(Path(p.strip()).expanduser() for p in value.split(",") if p.strip())
        if paths:
            return paths
        base = (Path(self.intervention_keys_dir).expanduser() if self.intervention_keys_dir
                else default_keys_dir())
        return (base / INTAKE_SIGNING_PUBLIC_FILE,)

    def policy(self) -> Policy:
        departments = frozenset(
            department_key(d) for d in self.auth_allowed_departments.split(",") if d.strip()
        )
        return Policy(
            allowed_departments=departments,
            review_threshold=self.auth_review_threshold,
            review_window=timedelta(days=self.auth_review_window_days),
            authorization_max_age=timedelta(days=self.auth_authorization_max_age_days),
            clock_skew=timedelta(seconds=self.auth_clock_skew_s),
        )
