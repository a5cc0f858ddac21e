"""The notifier's settings: the shared runtime's plus SLA policy, delivery and chat adapters.

Environment variables (besides those of :class:`~services.runtime.settings.RuntimeSettings`).
A chat adapter is enabled when its required variables are set; with none set the notifier
still publishes every customer update and runs the SLA clocks.

SLA and escalation:

- ``NOTIFIER_SLA_INITIAL_RESPONSE_MIN`` = 10: someone (an engineer's ack, or the automation
  starting the work) must take a ticket revision up within this many minutes.
- ``NOTIFIER_SLA_STANDARD_MIN`` = 60, ``NOTIFIER_SLA_COMPLEX_MIN`` = 240,
  ``NOTIFIER_SLA_DATACENTER_MIN`` = 1440: the intervention clock per timeline.
- ``NOTIFIER_SLA_WARNING_FRACTION`` = 0.8: SlaWarning at this share of a clock's budget.
- ``NOTIFIER_QUEUED_NOTICE_AFTER_S`` = 30: a verified ticket the executor queued
  (InterventionQueued) and has not started this many seconds later gets the customer's
  "queued" update, which answers its initial-response clock; never later than the warning
  point of that clock (at once when the queueing arrives after it).
- ``NOTIFIER_ESCALATE_AFTER_MIN`` = 10: an unacknowledged page escalates to the next on-call
  tier after this many minutes, and again after each further interval until acknowledged.
- ``NOTIFIER_ESCALATION_TIERS`` = 3: the highest tier; later escalations repeat it.
- ``NOTIFIER_SWEEP_INTERVAL_S`` = 1.0: how often due deadlines are swept.
- ``NOTIFIER_ARCHIVE_AFTER_S`` = 60: a ticket with nothing open (no running clock, no
  waiting page) leaves the in-flight facts for the archive this long after its last fact,
  so the hot collection holds in-flight tickets only (:mod:`services.notifier.archive`);
  stragglers of its events arriving within it find the ticket live.
- ``NOTIFIER_ARCHIVE_INTERVAL_S`` = 10: how often finished tickets are moved.
- ``NOTIFIER_CLAIM_LEASE_S`` = 60: a claim (a deadline firing, an ack being published, a chat
  post being sent) older than this whose owner never finished is taken over.

Delivery to chat:

- ``NOTIFIER_DELIVERY_ATTEMPTS`` = 5 tries per round (429 ``retry_after`` honoured),
  ``NOTIFIER_DELIVERY_BACKOFF_S`` = 0.5 doubling; ``NOTIFIER_DELIVERY_ROUNDS`` = 20 rounds,
  spaced by ``NOTIFIER_DELIVERY_ROUND_DELAY_S`` = 5 doubling (capped at 10 min), before a
  post is given up.

Metrics: ``NOTIFIER_METRICS_REFRESH_S`` = 15: how often the open-ticket gauges (tickets by
state and age, pages waiting, overdue clocks) are re-read from the store.

Consumption: ``NOTIFIER_TICKET_CONSUMERS`` = 3 consumers of ``intervention.ticket-submitted``
in this process, taking its partitions in parallel (more than the topic's partitions idle).

HTTP (Slack interactivity, Telegram webhook): ``NOTIFIER_HTTP_HOST`` = 127.0.0.1,
``NOTIFIER_HTTP_PORT`` = 8082; served only when Slack or Telegram is enabled.

Matrix (the reference adapter): ``MATRIX_HOMESERVER_URL``, ``MATRIX_USER_ID``,
``MATRIX_PASSWORD`` or ``MATRIX_ACCESS_TOKEN``, ``MATRIX_ROOM_ID`` (the on-call room),
``MATRIX_DEVICE_ID`` = ``intervention-notifier`` (a fixed device keeps Synapse's
transaction-id deduplication across restarts).

Slack: ``SLACK_WEBHOOK_URL`` (incoming webhook), ``SLACK_SIGNING_SECRET``.

Telegram: ``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_CHAT_ID``, ``TELEGRAM_WEBHOOK_SECRET``,
``TELEGRAM_API_URL`` = ``https://api.telegram.org``.

Signed facts (:mod:`services.runtime.facts`): ``NOTIFIER_SIGNING_KEY``, the path of the
notifier's private Ed25519 key that signs every EngineerAcknowledged and ManualStepCompleted
it publishes (default ``<INTERVENTION_KEYS_DIR or var/keys>/notifier-signing.key``; missing
or group-readable, the notifier does not start). ``NOTIFIER_FACT_VERIFY_KEYS``:
comma-separated paths of earlier notifier public keys still trusted during a rotation; the
notifier checks the facts it consumes back against its own key and these.

``SLACK_SIGNING_SECRET`` and ``TELEGRAM_WEBHOOK_SECRET`` are all that stands between the
Internet and an engineer's acknowledgement: set but empty or shorter than
:data:`MIN_CHAT_SECRET` (16) characters, they stop the notifier at start naming the variable
(an empty one would otherwise enable an endpoint anyone can sign for).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from services.notifier.sla import SlaPolicy
from services.runtime.keys import NOTIFIER_SIGNING_PRIVATE_FILE, default_keys_dir
from services.runtime.settings import RuntimeSettings, SettingsError

MIN_CHAT_SECRET = 16  # Slack's signing secrets are 32 hex characters; Telegram allows 256


class NotifierSettings(RuntimeSettings):
    notifier_sla_initial_response_min: float = Field(default=10.0, gt=0, le=10_080)
    notifier_sla_standard_min: float = Field(default=60.0, gt=0, le=10_080)
    notifier_sla_complex_min: float = Field(default=240.0, gt=0, le=10_080)
    notifier_sla_datacenter_min: float = Field(default=1440.0, gt=0, le=43_200)
    notifier_sla_warning_fraction: float = Field(default=0.8, gt=0, lt=1)
    notifier_queued_notice_after_s: float = Field(default=30.0, ge=0, le=3600)
    notifier_escalate_after_min: float = Field(default=10.0, gt=0, le=1440)
    notifier_escalation_tiers: int = Field(default=3, ge=1, le=10)
    notifier_sweep_interval_s: float = Field(default=1.0, gt=0, le=60)
    notifier_claim_lease_s: float = Field(default=60.0, gt=0, le=3600)
    notifier_archive_after_s: float = Field(default=60.0, ge=0, le=86_400)
    notifier_archive_interval_s: float = Field(default=10.0, gt=0, le=3600)

    notifier_delivery_attempts: int = Field(default=5, ge=1, le=20)
    notifier_delivery_backoff_s: float = Field(default=0.5, ge=0, le=60)
    notifier_delivery_rounds: int = Field(default=20, ge=1, le=1000)
    notifier_delivery_round_delay_s: float = Field(default=5.0, ge=0, le=600)

    notifier_ticket_consumers: int = Field(default=3, ge=1, le=64)
    notifier_metrics_refresh_s: float = Field(default=15.0, gt=0, le=3600)

    notifier_signing_key: Path | None = None
    notifier_fact_verify_keys: str | None = None

    notifier_http_host: str = "127.0.0.1"
    notifier_http_port: int = Field(default=8082, ge=0, le=65535)

    matrix_homeserver_url: str | None = None
    matrix_user_id: str | None = None
    matrix_password: SecretStr | None = None
    matrix_access_token: SecretStr | None = None
    matrix_room_id: str | None = None
    matrix_device_id: str = "intervention-notifier"

    slack_webhook_url: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None

    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org"

    @model_validator(mode="after")
    def _check_chat_secrets(self) -> NotifierSettings:
        # SettingsError, not ValueError: pydantic would echo the raw (secret) input.
        for name, value in (("SLACK_SIGNING_SECRET", self.slack_signing_secret),
                            ("TELEGRAM_WEBHOOK_SECRET", self.telegram_webhook_secret)):
            if value is not None and len(value.get_secret_value().strip()) < MIN_CHAT_SECRET:
                raise SettingsError(
                    f"{name} is empty or shorter than {MIN_CHAT_SECRET} characters: anyone "
                    "could sign an engineer's acknowledgement. Set a long random secret, or "
                    "unset it to disable the endpoint.")
        return self

    def sla_policy(self) -> SlaPolicy:
        return SlaPolicy(
            initial_response=timedelta(minutes=self.notifier_sla_initial_response_min),
            standard=timedelta(minutes=self.notifier_sla_standard_min),
            complex=timedelta(minutes=self.notifier_sla_complex_min),
            datacenter=timedelta(minutes=self.notifier_sla_datacenter_min),
            warning_fraction=self.notifier_sla_warning_fraction,
            queued_notice_after=timedelta(seconds=self.notifier_queued_notice_after_s),
            escalate_after=timedelta(minutes=self.notifier_escalate_after_min),
            tiers=self.notifier_escalation_tiers,
        )

    @property
    def signing_key_path(self) -> Path:
        """The notifier's private signing key file."""
        if self.notifier_signing_key is not None:
            return self.notifier_signing_key.expanduser()
        base = (Path(self.intervention_keys_dir).expanduser() if self.intervention_keys_dir
                else default_keys_dir())
        return base / NOTIFIER_SIGNING_PRIVATE_FILE

    @property
    def fact_verify_key_paths(self) -> tuple[Path, ...]:
        """Earlier notifier public keys still trusted (rotation); none by default."""
        value = self.notifier_fact_verify_keys or ""
        return tuple(Path(p.strip()).expanduser() for p in value.split(",") if p.strip())

    @property
    def matrix_enabled(self) -> bool:
        return bool(
            self.matrix_homeserver_url
            and self.matrix_user_id
            and self.matrix_room_id
            and (self.matrix_password or self.matrix_access_token)
        )

    @property
    def slack_enabled(self) -> bool:
        return self.slack_webhook_url is not None and self.slack_signing_secret is not None

    @property
    def telegram_enabled(self) -> bool:
        return (
            self.telegram_bot_token is not None
            and self.telegram_chat_id is not None
            and self.telegram_webhook_secret is not None
        )

    def secrets(self) -> list[str]:
        """Every secret value configured, for the redactor: none may reach a log line."""
        values = (
            self.matrix_password,
            self.matrix_access_token,
            self.slack_webhook_url,
            self.slack_signing_secret,
            self.telegram_bot_token,
            self.telegram_webhook_secret,
        )
        return [v.get_secret_value() for v in values if v is not None]
