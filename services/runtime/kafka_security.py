"""Kafka TLS and SASL: the one place that turns settings into client options.

Every Kafka client of the code base connects through here, so a hosting provider's broker
(``SASL_SSL`` with PLAIN or SCRAM, or mutual TLS) works everywhere at once:

- :func:`faststream_security` — the ``security=`` object of the services' ``KafkaBroker``;
- :func:`kafka_security_options` / :func:`kafka_client_options` — keyword arguments for
  aiokafka's ``AIOKafkaAdminClient``, ``AIOKafkaProducer`` and ``AIOKafkaConsumer``;
- :func:`connect_failure` — when a client cannot bootstrap, *why*: aiokafka only says
  "Unable to bootstrap", which reads the same for a wrong password, an untrusted
  certificate and a stopped broker.

The settings themselves (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``, ``KAFKA_SSL_*``) and
their validation live in :mod:`services.runtime.settings`. The SASL password leaves a
``SecretStr`` only inside the options handed to the client library; it is never formatted
into a message here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)
from pydantic import SecretStr

from services.runtime.redaction import mask_sasl_payloads, masked_sasl_request

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaClientSettings(Protocol):
    """The Kafka connection settings this module reads (``RuntimeSettings`` has them)."""

    @property
    def kafka_bootstrap_servers(self) -> str: ...

    @property
    def kafka_security_protocol(self) -> KafkaSecurityProtocol: ...

    @property
    def kafka_sasl_mechanism_effective(self) -> KafkaSaslMechanism | None: ...

    @property
    def kafka_sasl_username(self) -> str | None: ...

    def kafka_sasl_secret(self) -> SecretStr | None: ...

    @property
    def kafka_ssl_cafile(self) -> Path | None: ...

    @property
    def kafka_ssl_certfile(self) -> Path | None: ...

    @property
    def kafka_ssl_keyfile(self) -> Path | None: ...

log = logging.getLogger(__name__)

_SASL_SECURITY = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256,
                  "SCRAM-SHA-512": SASLScram512}


class _SaslPayloadFilter(logging.Filter):
    """Masks SASL authentication payloads in aiokafka's DEBUG request log.

    ``aiokafka.conn`` logs every request it sends at DEBUG, the ``SaslAuthenticateRequest``
    included, and a PLAIN payload is ``\\0user\\0password`` in clear. The record keeps its
    place in the log; only that argument is replaced.

    The redaction pipeline (:mod:`services.runtime.redaction`) masks these payloads itself,
    however logging is set up; this filter covers a process that installed no redaction.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(masked_sasl_request(arg) for arg in record.args)
        if isinstance(record.msg, str):  # formatted upstream already (args emptied)
            record.msg = mask_sasl_payloads(record.msg)
        return True


def _install_sasl_payload_filter() -> None:
    conn_log = logging.getLogger("aiokafka.conn")
    if not any(isinstance(f, _SaslPayloadFilter) for f in conn_log.filters):
        conn_log.addFilter(_SaslPayloadFilter())


_install_sasl_payload_filter()


class KafkaConnectError(RuntimeError):
    """No Kafka client could connect; the message says why (never with the password)."""


class _EncryptedKeyError(Exception):
    pass


def _no_key_password() -> bytes:
    # Without a password callback OpenSSL *prompts on the terminal* for an encrypted key,
    # which would hang a service at start. Refuse instead.
    raise _EncryptedKeyError


def _readable_file(variable: str, path: Path) -> None:
    if not path.exists():
        raise ValueError(f"{variable} {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{variable} {path} is not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{variable} {path} cannot be read: {exc.strerror}") from None


def warn_if_exposed(variable: str, path: Path) -> None:
    """Log a WARNING when the secret file ``path`` is accessible by group or others.

    For ``KAFKA_SASL_PASSWORD_FILE`` and the client key (``KAFKA_SSL_KEYFILE``, or the
    certificate file holding the key). A warning, not a refusal as for the service keys
    (:mod:`services.runtime.keys`): Docker and Compose mount secrets mode 0444 inside a
    container nobody else shares. Names the file and its mode, never its content; a file
    that cannot be examined is left to the read that follows to report.
    """
    if os.name != "posix":  # POSIX mode bits mean nothing on Windows ACLs
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s %s is accessible by group or others (mode %04o): whoever can read it "
                    "holds a Kafka credential; restrict it to the service's user (chmod 600) "
                    "unless it is a container secret mount", variable, path, mode)


def _build_ssl_context(cafile: Path | None, certfile: Path | None,
                       keyfile: Path | None) -> ssl.SSLContext:
    # create_default_context: TLS 1.2+, certificate and hostname verification on.
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile is not None else None)
    except ssl.SSLError as exc:
        raise ValueError(f"KAFKA_SSL_CAFILE {cafile} holds no usable PEM CA certificate: "
                         f"{exc.reason or exc}") from None
    if certfile is not None:
        try:
            context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None,
                                    password=_no_key_password)
        except _EncryptedKeyError:
            raise ValueError(f"KAFKA_SSL_KEYFILE {keyfile or certfile}: the key is encrypted; "
                             "only unencrypted PEM keys are supported") from None
        except ssl.SSLError as exc:
            key = keyfile if keyfile is not None else "(in the certificate file)"
            raise ValueError(
                f"KAFKA_SSL_CERTFILE {certfile} / KAFKA_SSL_KEYFILE {key}: not a usable PEM "
                f"certificate and matching key: {exc.reason or exc}") from None
    return context


def check_tls_files(settings: KafkaClientSettings) -> None:
    """Raise ``ValueError`` naming the variable when a TLS file is missing or not PEM.

    Warns (:func:`warn_if_exposed`) when the client key is readable by group or others.
    """
    for variable, path in (("KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
                           ("KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
                           ("KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile)):
        if path is not None:
            _readable_file(variable, path)
    if settings.kafka_ssl_keyfile is not None:
        warn_if_exposed("KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile)
    elif settings.kafka_ssl_certfile is not None:  # the key sits in the certificate file
        warn_if_exposed("KAFKA_SSL_CERTFILE (holding the key)", settings.kafka_ssl_certfile)
    _build_ssl_context(settings.kafka_ssl_cafile, settings.kafka_ssl_certfile,
                       settings.kafka_ssl_keyfile)


def uses_tls(settings: KafkaClientSettings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def ssl_context(settings: KafkaClientSettings) -> ssl.SSLContext | None:
    """The client TLS context (CA, optional client certificate), None without TLS."""
    if not uses_tls(settings):
        return None
    try:
        return _build_ssl_context(settings.kafka_ssl_cafile, settings.kafka_ssl_certfile,
                                  settings.kafka_ssl_keyfile)
    except ValueError as exc:  # a file changed since the settings were validated
        raise KafkaConnectError(str(exc)) from None


def kafka_security_options(settings: KafkaClientSettings | None) -> dict[str, Any]:
    """``security_protocol``, ``ssl_context`` and the SASL options of any aiokafka client.

    Empty for ``None`` (the client's PLAINTEXT default).
    """
    if settings is None:
        return {}
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if uses_tls(settings):
        options["ssl_context"] = ssl_context(settings)
    secret = settings.kafka_sasl_secret()
    if secret is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism_effective
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = secret.get_secret_value()
    return options


def kafka_client_options(settings: KafkaClientSettings) -> dict[str, Any]:
    """:func:`kafka_security_options` plus ``bootstrap_servers``: ``AIOKafkaProducer(**…)``."""
    return {"bootstrap_servers": settings.kafka_bootstrap_servers,
            **kafka_security_options(settings)}


def faststream_security(settings: KafkaClientSettings) -> BaseSecurity | None:
    """The FastStream ``KafkaBroker(security=…)`` object; None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    secret = settings.kafka_sasl_secret()
    if secret is None:  # SSL without SASL
        return BaseSecurity(ssl_context=context, use_ssl=True)
    mechanism = settings.kafka_sasl_mechanism_effective or "PLAIN"
    return _SASL_SECURITY[mechanism](
        settings.kafka_sasl_username or "", secret.get_secret_value(),
        ssl_context=context, use_ssl=protocol == "SASL_SSL",
    )


def describe(settings: KafkaClientSettings | None) -> str:
    """How the clients connect, for messages: protocol, mechanism and user, never the password."""
    if settings is None or settings.kafka_security_protocol == "PLAINTEXT":
        return "PLAINTEXT"
    parts: list[str] = [settings.kafka_security_protocol]
    if settings.kafka_sasl_secret() is not None:
        parts.append(f"{settings.kafka_sasl_mechanism_effective} as "
                     f"{settings.kafka_sasl_username!r}")
    if uses_tls(settings):
        parts.append(f"CA {settings.kafka_ssl_cafile}" if settings.kafka_ssl_cafile
                     else "system CAs")
        if settings.kafka_ssl_certfile is not None:
            parts.append(f"client certificate {settings.kafka_ssl_certfile}")
    return ", ".join(parts)


async def start_client(start: Callable[[], Awaitable[None]], close: Callable[[], Awaitable[None]],
                       bootstrap: str, settings: KafkaClientSettings | None) -> None:
    """Start an aiokafka client (``start``); when it cannot bootstrap, ``close`` it and raise
    a :class:`KafkaConnectError` saying why (:func:`connect_failure`), not aiokafka's
    "Unable to bootstrap"."""
    from aiokafka.errors import KafkaConnectionError

    try:
        await start()
    except KafkaConnectionError:
        await close()
        raise await connect_failure(bootstrap, settings) from None


async def connect_failure(bootstrap: str, settings: KafkaClientSettings | None, *,
                          timeout: float = 10.0) -> KafkaConnectError:
    """Why no client can bootstrap from ``bootstrap``: one probe connection per address.

    Called after a client failed to start, to turn aiokafka's "Unable to bootstrap" into the
    cause an operator can fix (wrong credentials, an untrusted or mismatched certificate, a
    mechanism the broker does not enable, nothing listening).
    """
    from aiokafka.conn import collect_hosts, create_conn
    from aiokafka.errors import (
        IllegalSaslStateError,
        KafkaConnectionError,
        KafkaError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )
    from aiokafka.protocol.metadata import MetadataRequest

    options = kafka_security_options(settings)
    how = describe(settings)
    reasons: list[str] = []
    for host, port, _family in collect_hosts(bootstrap, randomize=False):
        where = f"{host}:{port}"
        try:
            conn = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=int(timeout * 1000), **options),
                timeout)
        except SaslAuthenticationFailed as exc:
            reasons.append(f"{where}: SASL authentication failed for user "
                           f"{getattr(settings, 'kafka_sasl_username', None)!r} "
                           f"({exc}); check KAFKA_SASL_USERNAME, the password and "
                           "KAFKA_SASL_MECHANISM")
        except UnsupportedSaslMechanismError as exc:
            reasons.append(f"{where}: {exc}; set KAFKA_SASL_MECHANISM to one of them")
        except ssl.SSLCertVerificationError as exc:
            reasons.append(f"{where}: the broker's TLS certificate is not trusted "
                           f"({exc.verify_message}); set KAFKA_SSL_CAFILE to the CA that "
                           "signed it, and make sure it names the host you connect to")
        except ssl.SSLError as exc:
            reasons.append(f"{where}: TLS handshake failed ({exc.reason or exc}); is the "
                           "listener TLS, and does it require a client certificate "
                           "(KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE)?")
        except TimeoutError:
            reasons.append(f"{where}: no answer within {timeout:.0f}s (a TLS listener spoken "
                           "to in plaintext, or the reverse, looks like this)")
        except ConnectionRefusedError:
            reasons.append(f"{where}: connection refused (nothing listening)")
        except ConnectionResetError:
            reasons.append(f"{where}: the broker reset the connection"
                           + (" during the TLS handshake; is this listener TLS "
                              "(KAFKA_SECURITY_PROTOCOL, the port)?"
                              if settings and uses_tls(settings) else ""))
        except IllegalSaslStateError:
            reasons.append(f"{where}: this listener does not take SASL; check "
                           "KAFKA_SECURITY_PROTOCOL and the port")
        except KafkaConnectionError:
            reasons.append(
                f"{where}: the broker closed the connection; "
                + ("with TLS that is usually a client certificate it requires or does not "
                   "trust (KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE)" if settings and uses_tls(settings)
                   else "is the listener TLS or SASL (KAFKA_SECURITY_PROTOCOL)?"))
        except (OSError, KafkaError, ValueError) as exc:  # ValueError: a SCRAM exchange gone bad
            reasons.append(f"{where}: {type(exc).__name__}: {exc}")
        else:
            try:  # TLS 1.3 reports a refused client certificate only at the first request
                await asyncio.wait_for(conn.send(MetadataRequest([])), timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                reasons.append(
                    f"{where}: connected, but the broker dropped the first request "
                    f"({type(exc).__name__}); with TLS that is usually a client certificate it "
                    "requires (KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE) or does not trust")
            else:
                reasons.append(f"{where}: answers now (it was not ready before?)")
            finally:
                conn.close()
    return KafkaConnectError(f"cannot connect to Kafka at {bootstrap} ({how}): "
                             + "; ".join(reasons or ["no address in the bootstrap list"]))
