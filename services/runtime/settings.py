"""Settings every service shares; each service subclasses with its own fields.

Environment variables (ARCHITECTURE §3), with their defaults:

- ``KAFKA_BOOTSTRAP_SERVERS`` = ``127.0.0.1:9092``
- ``KAFKA_TOPIC_PREFIX`` = empty (tests and demos isolate themselves with one)
- ``MONGODB_URI`` = ``mongodb://127.0.0.1:27017``
- ``MONGODB_DATABASE`` = ``intervention``
- ``INTERVENTION_KEYS_DIR`` = ``var/keys`` under the repository
- ``HANDLER_MAX_ATTEMPTS`` = 3 tries of a handler before its message goes to the DLQ
- ``HANDLER_RETRY_BACKOFF_S`` = 0.5 s, doubled after each failed try (with jitter)
- ``OPS_HTTP_HOST`` = ``127.0.0.1``, ``OPS_HTTP_PORT`` = unset (no endpoint): the
  service's ``/healthz`` and ``/metrics``
- ``AUDIT_ANCHOR_INTERVAL_S`` = 60: how often the heads of the audit chains this process
  appended to are published to ``intervention.audit-anchored`` (also at once at a ticket's
  final event). The service signs its audit records with ``audit-<service>.key`` from the
  keys directory; without that file it writes unsigned records (with a WARNING), which
  ``intervene audit verify`` reports once audit keys exist.
- ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other standard ``OTEL_*``
  variables are read by the OpenTelemetry SDK itself.

Kafka topics (:mod:`services.runtime.kafka_admin`):

- ``KAFKA_CREATE_TOPICS`` = ``true``: at start a service creates the topics *it* uses (the
  ones it consumes, their DLQs, the ones it produces) that are missing. ``false`` (production
  with per-service ACLs): an administrator creates them (``intervene topics create``) and
  the service only checks that they exist and that it may describe them; if not it refuses
  to start with one line naming them (exit 2).
- ``KAFKA_REPLICATION_FACTOR`` = 1 (the local single broker; 3 on a production cluster) and
  ``KAFKA_MIN_INSYNC_REPLICAS`` = unset (the broker's default; 2 with a factor of 3): for the
  topics a service or ``intervene topics create`` creates. Topics that exist are left alone.

Kafka TLS and SASL, for every Kafka client of the process (the services' broker, topic
administration, ``intervene submit --via kafka``, ``intervene topics create``); see
:mod:`services.runtime.kafka_security`:

- ``KAFKA_SECURITY_PROTOCOL`` = ``PLAINTEXT``; or ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``
  (the production choice: a hosting provider's Kafka authenticates and encrypts).
- ``KAFKA_SASL_MECHANISM`` = ``PLAIN`` under a ``SASL_*`` protocol; or ``SCRAM-SHA-256``,
  ``SCRAM-SHA-512``. Setting it with a non-SASL protocol is an error, not ignored.
- ``KAFKA_SASL_USERNAME`` and ``KAFKA_SASL_PASSWORD``, or ``KAFKA_SASL_PASSWORD_FILE`` (a
  mounted secret; one trailing newline is dropped): both required under ``SASL_*``, and
  refused without it (credentials must never silently travel unused, or in clear). The
  password is a ``SecretStr``: it appears in no repr, log line, error, span or ``/healthz``,
  and the service's redactor learns it.
- ``KAFKA_SSL_CAFILE``: PEM file of the CA(s) that signed the brokers' certificates; unset
  = the system's trust store. The broker's certificate must name the host in
  ``KAFKA_BOOTSTRAP_SERVERS`` (hostname verification is always on).
- ``KAFKA_SSL_CERTFILE`` / ``KAFKA_SSL_KEYFILE``: the client certificate and its
  (unencrypted PEM) key, for brokers that require mutual TLS; the key may also sit in the
  certificate file. Only with ``SSL`` or ``SASL_SSL``.

An impossible combination, a missing or unreadable file or a file that is not PEM stops the
process at start with a :class:`SettingsError` naming the variable (never its secret value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.kafka_security import (
    KafkaSaslMechanism,
    KafkaSecurityProtocol,
    check_tls_files,
    warn_if_exposed,
)


class SettingsError(Exception):
    """A combination of settings the process cannot run with; the message names the variables.

    Deliberately not a ``ValueError``: pydantic would wrap one into a ``ValidationError``
    whose ``errors()`` carry the whole raw input, the Kafka password included.
    """


def _protocol(value: object) -> object:
    if isinstance(value, str):
        return value.strip().upper() or "PLAINTEXT"
    return value


def _mechanism(value: object) -> object:
    if isinstance(value, str):  # "scram_sha_512" and "SCRAM-SHA-512" are the same mechanism
        return value.strip().upper().replace("_", "-") or None
    return value


def _blank_to_none(value: object) -> object:
    # Compose and Helm templates often render an unset variable as an empty string.
    if isinstance(value, str) and not value.strip():
        return None
    return value


OptionalPath = Annotated[Path | None, BeforeValidator(_blank_to_none)]


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = ""
    kafka_security_protocol: Annotated[
        KafkaSecurityProtocol, BeforeValidator(_protocol)] = "PLAINTEXT"
    kafka_sasl_mechanism: Annotated[KafkaSaslMechanism | None, BeforeValidator(_mechanism)] = None
    kafka_sasl_username: Annotated[str | None, BeforeValidator(_blank_to_none)] = None
    kafka_sasl_password: Annotated[SecretStr | None, BeforeValidator(_blank_to_none)] = None
    kafka_sasl_password_file: OptionalPath = None
    kafka_ssl_cafile: OptionalPath = None
    kafka_ssl_certfile: OptionalPath = None
    kafka_ssl_keyfile: OptionalPath = None
    mongodb_uri: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = "intervention"
    intervention_keys_dir: str | None = None
    audit_anchor_interval_s: float = Field(default=60.0, gt=0, le=86400)
    handler_max_attempts: int = Field(default=3, ge=1, le=10)
    # Bounded: attempts x backoff must stay far below aiokafka's max.poll.interval (5 min).
    handler_retry_backoff_s: float = Field(default=0.5, ge=0.0, le=10.0)
    graceful_timeout_s: float = Field(default=15.0, gt=0)
    # Group commit (services.runtime.consumer): each subscription takes up to this many
    # messages the broker already has, handles different tickets concurrently (up to the
    # lanes) and commits once per batch. The linger is the longest a poll waits for the
    # first message when there is none (it returns as soon as one arrives, and an empty
    # poll is followed at once by the next); what arrives while a batch is handled (the
    # fetcher runs in the background) forms the next batch, so a burst batches by itself.
    consumer_batch_max_records: int = Field(default=200, ge=1, le=10_000)
    consumer_batch_linger_ms: int = Field(default=100, ge=1, le=10_000)
    consumer_lanes: int = Field(default=64, ge=1, le=10_000)
    ops_http_host: str = "127.0.0.1"
    ops_http_port: int | None = Field(default=None, ge=0, le=65535)
    kafka_create_topics: bool = True
    kafka_replication_factor: int = Field(default=1, ge=1, le=32767)
    kafka_min_insync_replicas: Annotated[
        Annotated[int, Field(ge=1, le=32767)] | None, BeforeValidator(_blank_to_none)] = None

    # The password read from KAFKA_SASL_PASSWORD_FILE (private: in no repr or dump).
    _sasl_password_from_file: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_kafka_security(self) -> RuntimeSettings:
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol in ("SSL", "SASL_SSL")
        if self.kafka_sasl_password is not None and self.kafka_sasl_password_file is not None:
            raise SettingsError("set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both")
        if not sasl:
            given = [name for name, value in (
                ("KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                ("KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                ("KAFKA_SASL_PASSWORD", self.kafka_sasl_password),
                ("KAFKA_SASL_PASSWORD_FILE", self.kafka_sasl_password_file),
            ) if value is not None]
            if given:
                raise SettingsError(
                    f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                    "SASL: use SASL_SSL (or SASL_PLAINTEXT), or unset them")
        if not tls:
            given = [name for name, value in (
                ("KAFKA_SSL_CAFILE", self.kafka_ssl_cafile),
                ("KAFKA_SSL_CERTFILE", self.kafka_ssl_certfile),
                ("KAFKA_SSL_KEYFILE", self.kafka_ssl_keyfile),
            ) if value is not None]
            if given:
                raise SettingsError(
                    f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                    "TLS: use SSL or SASL_SSL, or unset them")
        if sasl:
            if not self.kafka_sasl_username:
                raise SettingsError(
                    f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME")
            if self.kafka_sasl_password_file is not None:
                self._sasl_password_from_file = SecretStr(
                    _read_password_file(self.kafka_sasl_password_file))
            elif not (self.kafka_sasl_password and self.kafka_sasl_password.get_secret_value()):
                raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs "
                                    "KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE")
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise SettingsError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (the client "
                                "certificate the key belongs to)")
        if tls:
            try:
                check_tls_files(self)
            except ValueError as exc:
                raise SettingsError(str(exc)) from None
        if (self.kafka_min_insync_replicas is not None
                and self.kafka_min_insync_replicas > self.kafka_replication_factor):
            raise SettingsError(
                f"KAFKA_MIN_INSYNC_REPLICAS={self.kafka_min_insync_replicas} exceeds "
                f"KAFKA_REPLICATION_FACTOR={self.kafka_replication_factor}: no write could "
                "ever be acknowledged")
        return self

    @property
    def kafka_sasl_mechanism_effective(self) -> KafkaSaslMechanism | None:
        """The SASL mechanism in use: ``PLAIN`` when SASL is on and none was named."""
        if not self.kafka_security_protocol.startswith("SASL_"):
            return None
        return self.kafka_sasl_mechanism or "PLAIN"

    def kafka_sasl_secret(self) -> SecretStr | None:
        """The SASL password, from ``KAFKA_SASL_PASSWORD`` or ``KAFKA_SASL_PASSWORD_FILE``."""
        if not self.kafka_security_protocol.startswith("SASL_"):
            return None
        return self._sasl_password_from_file or self.kafka_sasl_password


def _read_password_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"KAFKA_SASL_PASSWORD_FILE {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"KAFKA_SASL_PASSWORD_FILE {path} cannot be read: {type(exc).__name__}") from None
    warn_if_exposed("KAFKA_SASL_PASSWORD_FILE", path)
    # A secret mounted from a file usually ends with one newline; the password does not.
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise SettingsError(f"KAFKA_SASL_PASSWORD_FILE {path} is empty")
    return text
