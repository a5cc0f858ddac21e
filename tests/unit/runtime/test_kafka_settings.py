"""Kafka TLS/SASL settings: validation at start, the client options, no password anywhere.

The real broker round trips (SASL_SSL, mutual TLS, wrong password, untrusted CA) are in
``tests/integration/test_kafka_security.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from services.runtime.kafka_security import (
    describe,
    faststream_security,
    kafka_client_options,
    kafka_security_options,
)
from services.runtime.settings import RuntimeSettings, SettingsError

PASSWORD = "s3cr3t-kafka-pw"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
                 "KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CAFILE",
                 "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):
        monkeypatch.delenv(name, raising=False)


def _self_signed(directory: Path, *, encrypted_key: bool = False) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(b"pass") if encrypted_key
        else serialization.NoEncryption())
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8, encryption))
    return cert_file, key_file


def _sasl(**extra: object) -> dict[str, object]:
    return {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "svc",
            "kafka_sasl_password": PASSWORD, **extra}


def test_default_is_plaintext_with_no_security_object() -> None:
    settings = RuntimeSettings()
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert kafka_client_options(settings) == {"bootstrap_servers": "127.0.0.1:9092",
                                              "security_protocol": "PLAINTEXT"}
    assert kafka_security_options(None) == {}
    assert faststream_security(settings) is None
    assert settings.kafka_sasl_secret() is None


def test_environment_variables_are_read_case_insensitively(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    ca, _ = _self_signed(tmp_path)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram_sha_512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(ca))
    monkeypatch.setenv("KAFKA_SSL_CERTFILE", "")  # a template's unset variable
    settings = RuntimeSettings()
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka_ssl_certfile is None
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == PASSWORD
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert options["ssl_context"].check_hostname


@pytest.mark.parametrize(("protocol", "mechanism", "kind", "wire"), [
    ("SASL_SSL", None, SASLPlaintext, "SASL_SSL"),  # PLAIN unless named
    ("SASL_SSL", "SCRAM-SHA-256", SASLScram256, "SASL_SSL"),
    ("SASL_PLAINTEXT", "SCRAM-SHA-512", SASLScram512, "SASL_PLAINTEXT"),
])
def test_faststream_security_object_matches_the_settings(
    protocol: str, mechanism: str | None, kind: type[BaseSecurity], wire: str,
) -> None:
    settings = RuntimeSettings(**_sasl(kafka_security_protocol=protocol,  # type: ignore[arg-type]
                                       kafka_sasl_mechanism=mechanism))
    security = faststream_security(settings)
    assert type(security) is kind
    parsed = parse_security(security)
    assert parsed["security_protocol"] == wire
    assert parsed["sasl_mechanism"] == (mechanism or "PLAIN")
    assert parsed["sasl_plain_password"] == PASSWORD
    assert (parsed["ssl_context"] is not None) == (wire == "SASL_SSL")
    # What the rest of the broker options look like, aiokafka gets the same from both paths.
    options = kafka_security_options(settings)
    assert {k: v for k, v in parsed.items() if k != "ssl_context"} == {
        k: v for k, v in options.items() if k != "ssl_context"}


def test_ssl_with_a_client_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings = RuntimeSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=cert,
                               kafka_ssl_certfile=cert, kafka_ssl_keyfile=key)
    security = faststream_security(settings)
    assert type(security) is BaseSecurity
    assert parse_security(security)["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in kafka_security_options(settings)
    assert "client certificate" in describe(settings)


@pytest.mark.parametrize(("settings", "expected"), [
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_password": PASSWORD},
     "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "svc"},
     "needs KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE"),
    ({"kafka_sasl_username": "svc", "kafka_sasl_password": PASSWORD},
     "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ({"kafka_security_protocol": "SSL", "kafka_sasl_mechanism": "PLAIN"},
     "KAFKA_SASL_MECHANISM set but KAFKA_SECURITY_PROTOCOL=SSL does not use SASL"),
    (_sasl(kafka_security_protocol="SASL_PLAINTEXT", kafka_ssl_cafile="/etc/hostname"),
     "KAFKA_SSL_CAFILE set but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use TLS"),
    (_sasl(kafka_ssl_cafile="/nonexistent/ca.pem"),
     "KAFKA_SSL_CAFILE /nonexistent/ca.pem does not exist"),
    (_sasl(kafka_ssl_cafile="/"), "KAFKA_SSL_CAFILE / is not a file"),
    (_sasl(kafka_ssl_keyfile="/etc/hostname"), "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE"),
    (_sasl(kafka_sasl_password_file="/nonexistent/pw"),
     "set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both"),
])
def test_impossible_combinations_are_refused_naming_the_variable(
    settings: dict[str, object], expected: str,
) -> None:
    with pytest.raises(SettingsError) as refused:
        RuntimeSettings(**settings)  # type: ignore[arg-type]
    assert expected in str(refused.value)
    assert PASSWORD not in str(refused.value)
    # Not a ValueError: pydantic would wrap it with the raw input (the password) attached.
    assert not isinstance(refused.value, ValueError)


def test_files_that_are_not_pem_or_do_not_match_are_refused(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    with pytest.raises(SettingsError, match=r"KAFKA_SSL_CAFILE .* no usable PEM CA certificate"):
        RuntimeSettings(**_sasl(kafka_ssl_cafile=not_pem))  # type: ignore[arg-type]
    cert, _ = _self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, foreign_key = _self_signed(other)
    with pytest.raises(SettingsError, match="not a usable PEM certificate and matching key"):
        RuntimeSettings(**_sasl(kafka_ssl_certfile=cert,  # type: ignore[arg-type]
                                kafka_ssl_keyfile=foreign_key))


def test_an_encrypted_client_key_is_refused_not_prompted_for(tmp_path: Path) -> None:
    # Without a password callback OpenSSL would prompt on the terminal and hang the service.
    cert, key = _self_signed(tmp_path, encrypted_key=True)
    with pytest.raises(SettingsError, match="KAFKA_SSL_KEYFILE"):
        RuntimeSettings(**_sasl(kafka_ssl_certfile=cert,  # type: ignore[arg-type]
                                kafka_ssl_keyfile=key))


def test_password_from_a_mounted_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(secret))
    settings = RuntimeSettings()
    assert settings.kafka_sasl_secret() is not None
    assert settings.kafka_sasl_secret().get_secret_value() == PASSWORD  # type: ignore[union-attr]
    assert kafka_security_options(settings)["sasl_plain_password"] == PASSWORD
    assert PASSWORD not in repr(settings)

    secret.write_text("\n")
    with pytest.raises(SettingsError, match=r"KAFKA_SASL_PASSWORD_FILE .* is empty"):
        RuntimeSettings()
    secret.unlink()
    with pytest.raises(SettingsError, match=r"KAFKA_SASL_PASSWORD_FILE .* does not exist"):
        RuntimeSettings()


def test_the_password_is_in_no_repr_dump_or_description() -> None:
    settings = RuntimeSettings(**_sasl(kafka_sasl_mechanism="SCRAM-SHA-256"))  # type: ignore[arg-type]
    for text in (repr(settings), str(settings), settings.model_dump_json(),
                 repr(settings.model_dump()), describe(settings),
                 repr(faststream_security(settings))):
        assert PASSWORD not in text
    assert describe(settings) == "SASL_SSL, SCRAM-SHA-256 as 'svc', system CAs"


def test_aiokafka_debug_log_of_the_sasl_request_is_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

    request = SaslAuthenticateRequest_v1(b"\x00svc\x00" + PASSWORD.encode())
    caplog.set_level(logging.DEBUG, logger="aiokafka.conn")
    # Exactly the call aiokafka.conn makes for every request it sends.
    logging.getLogger("aiokafka.conn").debug("Request to %s:%d %d: %s", "h", 9093, 7, request)
    [record] = caplog.records
    assert PASSWORD not in record.getMessage()
    assert "SaslAuthenticateRequest" in record.getMessage()


@pytest.mark.parametrize("service", ["auth", "executor", "notifier", "intake"])
def test_a_service_with_impossible_kafka_settings_refuses_to_start_in_one_line(
        service: str) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "OTEL_", "OPS_"))}
    env.update({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "svc",
                "KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem",
                "INTAKE_HTTP_PORT": "0"})
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"{service}: ")
    assert "KAFKA_SSL_CAFILE" in line
    assert PASSWORD not in done.stderr + done.stdout
