"""The executor's settings: the shared runtime's plus its keys, limits and clocks.

Environment variables (besides those of :class:`~services.runtime.settings.RuntimeSettings`):

- ``EXECUTOR_SEALING_KEYS``: comma-separated paths of the executor's private sealing key
  files (the current one first, then any still rotating out); default
  ``<INTERVENTION_KEYS_DIR or var/keys>/executor-sealing.key``.
- ``EXECUTOR_VERIFY_KEYS``: comma-separated paths of auth's public signing key files;
  default ``<keys dir>/auth-signing.pub``.
- ``EXECUTOR_FACT_VERIFY_KEYS``: comma-separated paths of the notifier's public signing key
  files (the current one plus any still rotating out): an engineer's report on a manual step
  (ManualStepCompleted) has an effect only if signed by one of them; default
  ``<keys dir>/notifier-signing.pub``.
- ``EXECUTOR_OPERATOR_VERIFY_KEYS``: comma-separated paths of the operators' public keys
  (``operator-signing.pub``, plus any rotating out): a customer's vault key counts only if
  its registration is signed by one of them; default ``<keys dir>/operator-signing.pub``.
- ``EXECUTOR_CONCURRENCY`` = 8: interventions running at once in this process.
- ``EXECUTOR_QUEUE_SIZE`` = 256: claims waiting for a worker; beyond that the periodic scan
  of open claims picks them up (the Kafka handler never waits for a free worker).
- ``EXECUTOR_TYPICAL_RUN_S`` = 120: the run duration assumed for a queued claim's expected
  start (InterventionQueued) until this process has seen runs finish; then the median of
  the recent ones is used (:mod:`services.executor.queue_estimate`).
- ``EXECUTOR_HOST_CONNECTS`` = 4: SSH handshakes in flight per host. OpenSSH's
  ``MaxStartups 10:30:100`` starts dropping unauthenticated connections beyond 10.
- ``EXECUTOR_GLOBAL_CONNECTS`` = 32: SSH handshakes in flight in this process.
- ``EXECUTOR_LEASE_S`` = 60: how long a claim stays owned without a heartbeat; a claim whose
  owner stopped renewing is resumed by another executor after this.
- ``EXECUTOR_RESCAN_S`` = 30: how often open claims are scanned for abandoned ones.
- ``EXECUTOR_MAX_ATTEMPTS`` = 3: runs of one claim before it is handed to an engineer.
- ``EXECUTOR_CONNECT_TIMEOUT_S`` = 15, ``EXECUTOR_COMMAND_TIMEOUT_S`` = 600.
- ``EXECUTOR_VERDICT_MAX_AGE_S`` = 86400: a signed verdict older than this is refused as
  stale (a replay after the claim store was purged, or a verdict stuck in a backlog).
- ``EXECUTOR_CLOCK_SKEW_S`` = 300: tolerance for a verdict dated in the future.
- ``EXECUTOR_DRY_RUN`` = false: plan only — run read-only checks, record the changes that
  would be made, change nothing.
- ``EXECUTOR_SERVICE_SETTLE_S`` = 3: wait after a service restart before checking that it
  stayed up (a crash-looping daemon looks "active" for its first second).
- ``EXECUTOR_RESCUE_API_URL``, ``EXECUTOR_RESCUE_API_TOKEN``: the provider's rescue API
  (:mod:`services.executor.rescue.provider`); unset, rescue repairs go to the console. The
  URL must be ``https://`` (``http://`` only to a loopback address, for the lab): anything
  else stops the executor at start naming the variable.
- ``EXECUTOR_RESCUE_MANAGEMENT_SOURCES``: comma-separated addresses or CIDR ranges of the
  provider's management network (where the executor and engineers connect from). A firewall
  repair accepts SSH from these (and from the sources the customer's own rules already
  allowed), never from the whole Internet when the customer had restricted it.
- ``EXECUTOR_RESCUE_HTTP_TIMEOUT_S`` = 15: one call to the provider API.
- ``EXECUTOR_RESCUE_BOOT_TIMEOUT_S`` = 900: a boot into rescue or back to disk, from the
  request to "succeeded"; past it the run ends with a clear outcome.
- ``EXECUTOR_RESCUE_POLL_S`` = 5: how often the provider's progress is read.
- ``EXECUTOR_RESCUE_SSH_WAIT_S`` = 120: how long SSH may take to answer after a boot (the
  rescue system's, and the server's own after boot-back).
- ``EXECUTOR_MANUAL_STEP_TIMEOUT_S`` = 14400: an engineer's console or rescue step (the
  procedure's complex-intervention bound, 4 h); past it the ticket completes as unresolved.
- ``EXECUTOR_DATACENTER_STEP_TIMEOUT_S`` = 86400: the same for on-site data-centre work.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from services.executor.rescue.provider import check_provider_url
from services.executor.rescue.runbooks.firewall import management_sources
from services.runtime.keys import (
    NOTIFIER_SIGNING_PUBLIC_FILE,
    OPERATOR_SIGNING_PUBLIC_FILE,
    SEALING_PRIVATE_FILE,
    SIGNING_PUBLIC_FILE,
    default_keys_dir,
)
from services.runtime.settings import RuntimeSettings, SettingsError


def _paths(value: str | None, default: Path) -> tuple[Path, ...]:
    if not value:
        return (default,)
    return tuple(Path(p.strip()).expanduser() for p in value.split(",") if p.strip())


class ExecutorSettings(RuntimeSettings):
    executor_sealing_keys: str | None = None
    executor_verify_keys: str | None = None
    executor_fact_verify_keys: str | None = None
    executor_operator_verify_keys: str | None = None
    executor_concurrency: int = Field(default=8, ge=1, le=1024)
    executor_queue_size: int = Field(default=256, ge=1, le=100_000)
    executor_typical_run_s: float = Field(default=120.0, ge=1.0, le=86_400.0)
    executor_host_connects: int = Field(default=4, ge=1, le=10)
    executor_global_connects: int = Field(default=32, ge=1, le=4096)
    executor_lease_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    executor_rescan_s: float = Field(default=30.0, ge=0.1, le=3600.0)
    executor_max_attempts: int = Field(default=3, ge=1, le=20)
    executor_connect_timeout_s: float = Field(default=15.0, gt=0, le=300)
    executor_command_timeout_s: float = Field(default=600.0, gt=0, le=7200)
    executor_verdict_max_age_s: float = Field(default=86400.0, gt=0)
    executor_clock_skew_s: float = Field(default=300.0, ge=0, le=86400)
    executor_dry_run: bool = False
    executor_service_settle_s: float = Field(default=3.0, ge=0, le=300)
    executor_rescue_api_url: str | None = None
    executor_rescue_api_token: str | None = Field(default=None, repr=False)
    executor_rescue_management_sources: str | None = None
    executor_rescue_http_timeout_s: float = Field(default=15.0, gt=0, le=300)
    executor_rescue_boot_timeout_s: float = Field(default=900.0, gt=0, le=86400)
    executor_rescue_poll_s: float = Field(default=5.0, gt=0, le=600)
    executor_rescue_ssh_wait_s: float = Field(default=120.0, ge=0, le=3600)
    executor_manual_step_timeout_s: float = Field(default=14400.0, gt=0, le=30 * 86400)
    executor_datacenter_step_timeout_s: float = Field(default=86400.0, gt=0, le=30 * 86400)

    @model_validator(mode="after")
    def _check_rescue(self) -> ExecutorSettings:
        # SettingsError (not ValueError) so pydantic does not wrap it with the raw input.
        if self.executor_rescue_api_url:
            try:
                check_provider_url(self.executor_rescue_api_url)
            except ValueError as exc:
                raise SettingsError(f"EXECUTOR_RESCUE_API_URL: {exc}") from None
        try:
            self.rescue_management_sources  # noqa: B018 - parsed for its errors
        except ValueError as exc:
            raise SettingsError(f"EXECUTOR_RESCUE_MANAGEMENT_SOURCES: {exc}") from None
        return self

    @property
    def rescue_management_sources(self) -> tuple[str, ...]:
        """The provider's management networks, normalised (``192.0.2.0/28``)."""
        return management_sources(self.executor_rescue_management_sources or "")

    def _keys_dir(self) -> Path:
        if self.intervention_keys_dir:
            return Path(self.intervention_keys_dir).expanduser()
        return default_keys_dir()

    @property
    def sealing_key_paths(self) -> tuple[Path, ...]:
        return _paths(self.executor_sealing_keys, self._keys_dir() / SEALING_PRIVATE_FILE)

    @property
    def verify_key_paths(self) -> tuple[Path, ...]:
        return _paths(self.executor_verify_keys, self._keys_dir() / SIGNING_PUBLIC_FILE)

    @property
    def operator_verify_key_paths(self) -> tuple[Path, ...]:
        return _paths(self.executor_operator_verify_keys,
                      self._keys_dir() / OPERATOR_SIGNING_PUBLIC_FILE)

    @property
    def fact_verify_key_paths(self) -> tuple[Path, ...]:
        return _paths(self.executor_fact_verify_keys,
                      self._keys_dir() / NOTIFIER_SIGNING_PUBLIC_FILE)
