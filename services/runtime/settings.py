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
- ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other standard ``OTEL_*``
  variables are read by the OpenTelemetry SDK itself.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = ""
    mongodb_uri: str = "mongodb://127.0.0.1:27017"
    mongodb_database: str = "intervention"
    intervention_keys_dir: str | None = None
    handler_max_attempts: int = Field(default=3, ge=1, le=10)
    # Bounded: attempts x backoff must stay far below aiokafka's max.poll.interval (5 min).
    handler_retry_backoff_s: float = Field(default=0.5, ge=0.0, le=10.0)
    graceful_timeout_s: float = Field(default=15.0, gt=0)
    ops_http_host: str = "127.0.0.1"
    ops_http_port: int | None = Field(default=None, ge=0, le=65535)
