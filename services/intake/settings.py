"""Intake's settings: the shared runtime's plus the HTTP edge and its limits.

Environment variables (besides those of :class:`~services.runtime.settings.RuntimeSettings`):

- ``INTAKE_HTTP_HOST`` = ``127.0.0.1``, ``INTAKE_HTTP_PORT`` = ``8080``: where the HTTP API
  (``POST /v1/tickets`` and friends) listens (ARCHITECTURE §6).
- ``INTAKE_SEALING_KEY``: path of the executor's *public* sealing key; default
  ``<INTERVENTION_KEYS_DIR or var/keys>/executor-sealing.pub``. Intake never reads a
  private key but its own signing key: it can seal credentials but not open them.
- ``INTAKE_SIGNING_KEY``: path of intake's private Ed25519 key that signs every
  TicketSubmitted (auth decides only on a ticket that verifies); default
  ``<keys dir>/intake-signing.key``. Missing or group-readable, intake does not start.
- ``INTAKE_MAX_BODY_BYTES`` = 262144: larger request bodies get 413. A maximal legitimate
  request (20 000-character description, 16 KiB private key, error messages) fits well
  below it, and the TicketSubmitted it becomes stays far below Kafka's 1 MB message limit.
- ``INTAKE_RATE_LIMIT_PER_MINUTE`` = 30 and ``INTAKE_RATE_LIMIT_BURST`` = 10: a token
  bucket per customer account (per process); beyond it the API answers 429 with
  ``Retry-After``. A helpdesk retrying one ticket a few times stays well inside it.
- ``INTAKE_RATE_LIMIT_ACCOUNTS`` = 10000: how many accounts' buckets are kept (least
  recently used are dropped), so hostile account ids cannot grow memory without bound.
- ``INTAKE_CLAIM_LEASE_S``: no longer used (a revision's accepted record is now written
  only once its outbox entry is durable, so no "pending" claim needs a lease); still
  accepted so an existing environment does not fail to start.
- ``OPS_HTTP_HOST`` = ``127.0.0.1``, ``OPS_HTTP_PORT`` = ``9100``: ``/healthz`` and
  ``/metrics``, on their own listener as for every service (never on the public API).
- ``INTAKE_CREATE_INTEGRATION_KEY`` = ``true``: create intake's integration key
  (``intake-integrations.key`` in the keys directory) at start when it is missing; set
  ``false`` where the key is mounted (Kubernetes), so a missing mount stops the start.

Who may call is not a setting: integrations are registered in the store with
``intervene integrations add`` (docs/security.md).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.runtime.keys import (
    INTAKE_SIGNING_PRIVATE_FILE,
    SEALING_PUBLIC_FILE,
    default_keys_dir,
)
from services.runtime.settings import RuntimeSettings


class IntakeSettings(RuntimeSettings):
    intake_http_host: str = "127.0.0.1"
    intake_http_port: int = Field(default=8080, ge=0, le=65535)
    intake_sealing_key: Path | None = None
    intake_signing_key: Path | None = None
    intake_max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=4 * 1024 * 1024)
    intake_rate_limit_per_minute: float = Field(default=30.0, gt=0)
    intake_rate_limit_burst: int = Field(default=10, ge=1)
    intake_rate_limit_accounts: int = Field(default=10_000, ge=1)
    intake_claim_lease_s: float = Field(default=30.0, gt=0)
    intake_create_integration_key: bool = True
    ops_http_port: int | None = Field(default=9100, ge=0, le=65535)

    @property
    def sealing_key_path(self) -> Path:
        """The one key file intake opens: the executor's public sealing key."""
        if self.intake_sealing_key is not None:
            return self.intake_sealing_key
        base = (
            Path(self.intervention_keys_dir).expanduser()
            if self.intervention_keys_dir
            else default_keys_dir()
        )
        return base / SEALING_PUBLIC_FILE

    @property
    def signing_key_path(self) -> Path:
        """Intake's private signing key (TicketSubmitted)."""
        if self.intake_signing_key is not None:
            return self.intake_signing_key
        base = (Path(self.intervention_keys_dir).expanduser() if self.intervention_keys_dir
                else default_keys_dir())
        return base / INTAKE_SIGNING_PRIVATE_FILE
