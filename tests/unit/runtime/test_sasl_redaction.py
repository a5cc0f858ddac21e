"""The Kafka SASL password stays masked in logs: pinned, and its wire payload masked by type.

aiokafka logs ``Request to h:p n: SaslAuthenticateRequest_v1(sasl_auth_bytes=b'\\x00user
\\x00password')`` at DEBUG. The redaction pipeline itself masks that payload, so the mask
holds however logging is set up (intake's record-factory redaction formats a record before
any logger filter could see the request object), and the password is *pinned* in the
redactor, so a bounded redactor does not forget it after a few ticket secrets.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.protocol.admin import SaslAuthenticateRequest_v0, SaslAuthenticateRequest_v1
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.runtime import redaction
from services.runtime.kafka_security import _SaslPayloadFilter, warn_if_exposed
from services.runtime.redaction import (
    PLACEHOLDER,
    RedactingFilter,
    Redactor,
    install_log_redaction,
    mask_sasl_payloads,
)
from services.runtime.settings import RuntimeSettings
from services.runtime.telemetry import configure_logging

PASSWORD = "kafka-Sasl-Pa55word"
CONN = logging.getLogger("aiokafka.conn")


def _request(password: str = PASSWORD) -> SaslAuthenticateRequest_v1:
    return SaslAuthenticateRequest_v1(b"\x00svc\x00" + password.encode())


def _log_sasl_request(correlation: int = 7) -> None:
    # Exactly the call aiokafka.conn makes for every request it sends.
    CONN.debug("Request to %s:%d %d: %s", "broker", 9093, correlation, _request())


def _leaks(text: str) -> list[str]:
    forms = [PASSWORD, base64.b64encode(PASSWORD.encode()).decode().rstrip("=")]
    return [form for form in forms if form in text]


@pytest.fixture(params=["with the aiokafka.conn filter", "redaction pipeline alone"])
def logging_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Root handlers, filters, level and record factory restored after the test. The second
    variant drops kafka_security's logger filter on aiokafka.conn, so only the redaction
    pipeline stands between the payload and the log."""
    root = logging.getLogger()
    saved = (logging.getLogRecordFactory(), list(root.handlers), list(root.filters),
             root.level, list(CONN.filters), CONN.level)
    with pytest.MonkeyPatch.context() as patch:
        # The process-wide redactor, bounded as intake's, fresh for this test.
        patch.setattr(redaction, "_DEFAULT", Redactor(max_secrets=16))
        if request.param == "redaction pipeline alone":
            CONN.filters[:] = [f for f in CONN.filters if not isinstance(f, _SaslPayloadFilter)]
        CONN.setLevel(logging.DEBUG)
        try:
            yield
        finally:
            factory, handlers, filters, level, conn_filters, conn_level = saved
            logging.setLogRecordFactory(factory)
            root.handlers[:] = handlers
            root.filters[:] = filters
            root.setLevel(level)
            CONN.filters[:] = conn_filters
            CONN.setLevel(conn_level)


@pytest.mark.usefixtures("logging_state")
def test_intake_style_logging_never_shows_the_sasl_password(
        capsys: pytest.CaptureFixture[str]) -> None:
    # services/intake/__main__.py: JSON handler, its filter swapped for intake's own small
    # redactor installed on the root logger (record factory included).
    handler = configure_logging("intake", level=logging.DEBUG)
    for existing in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
        handler.removeFilter(existing)
    own = Redactor(max_secrets=16)
    install_log_redaction(redactor=own)
    own.pin(PASSWORD)  # what ServiceRuntime does with the SASL password

    _log_sasl_request(1)
    own.add_all(f"customer-secret-{i:04d}" for i in range(17))  # evicts every unpinned one
    _log_sasl_request(2)
    logging.getLogger("services.test").error("SASL failed for %s", PASSWORD)

    err = capsys.readouterr().err
    assert _leaks(err) == []
    assert err.count(f"SaslAuthenticateRequest_v1(sasl_auth_bytes={PLACEHOLDER})") == 2
    assert f"SASL failed for {PLACEHOLDER}" in err


@pytest.mark.usefixtures("logging_state")
def test_default_logging_never_shows_the_sasl_password(
        capsys: pytest.CaptureFixture[str]) -> None:
    # run_service: configure_logging only (a RedactingFilter on the handler, with the
    # process-wide redactor).
    configure_logging("auth", level=logging.DEBUG)
    redaction.default_redactor().pin(PASSWORD)

    _log_sasl_request(1)
    redaction.default_redactor().add_all(f"ticket-secret-{i:04d}" for i in range(17))
    _log_sasl_request(2)
    logging.getLogger("services.test").error("SASL failed for %s", PASSWORD)

    err = capsys.readouterr().err
    assert _leaks(err) == []
    assert err.count(f"SaslAuthenticateRequest_v1(sasl_auth_bytes={PLACEHOLDER})") == 2
    assert f"SASL failed for {PLACEHOLDER}" in err


def test_the_payload_is_masked_even_by_a_redactor_that_never_learnt_the_password() -> None:
    record = logging.LogRecord("aiokafka.conn", logging.DEBUG, __file__, 1,
                               "Request to %s:%d %d: %s", ("h", 1, 2, _request()), None)

    redaction.redact_record(record, Redactor())

    assert record.getMessage() == (
        f"Request to h:1 2: SaslAuthenticateRequest_v1(sasl_auth_bytes={PLACEHOLDER})")


@pytest.mark.parametrize("password", [
    PASSWORD,
    "it's-a-pass",           # repr switches to double quotes
    "pa)ss'wo\"rd\\x",       # a ")" inside, both quotes escaped, a backslash
    "pässwörd-ü",            # non-ASCII: \\x escapes in the repr
    "x" * 150,               # aiokafka truncates the repr to 100 bytes plus b"..."
])
def test_any_sasl_request_repr_in_text_is_masked(password: str) -> None:
    for request in (_request(password), SaslAuthenticateRequest_v0(
            b"n,,n=svc,r=" + password.encode())):
        text = f"before {request!r} after"
        masked = mask_sasl_payloads(text)
        assert masked == f"before {type(request).__name__}(sasl_auth_bytes={PLACEHOLDER}) after"
        assert Redactor().redact_text(text) == masked


def test_an_unterminated_sasl_request_repr_is_masked_to_the_end_of_the_line() -> None:
    text = f"cut: {_request()!r}"[:-12] + "\nnext line"
    assert mask_sasl_payloads(text) == (
        f"cut: SaslAuthenticateRequest_v1(sasl_auth_bytes={PLACEHOLDER})\nnext line")


def test_redact_turns_a_request_object_into_its_masked_form() -> None:
    assert Redactor().redact(("h", _request())) == (
        "h", f"SaslAuthenticateRequest_v1(sasl_auth_bytes={PLACEHOLDER})")


# --- pinned secrets -----------------------------------------------------------------------


def test_a_pinned_secret_outlives_the_bound() -> None:
    r = Redactor(max_secrets=2)
    r.pin(PASSWORD)
    r.add_all(["first-secret", "second-secret", "third-secret"])

    assert r.redact_text(f"{PASSWORD} first-secret third-secret") == (
        f"{PLACEHOLDER} first-secret {PLACEHOLDER}")
    assert r.secret_count == 3  # two learnt, one pinned


def test_pinning_a_learnt_secret_keeps_it_and_adding_a_pinned_one_does_not_unpin_it() -> None:
    r = Redactor(max_secrets=1)
    r.add(PASSWORD)
    r.pin(PASSWORD)
    r.add(PASSWORD)  # e.g. ServiceRuntime learning it again: still pinned
    r.add_all(["other-secret-1", "other-secret-2"])

    assert r.redact_text(PASSWORD) == PLACEHOLDER
    assert r.redact_text(base64.b64encode(PASSWORD.encode()).decode()) == PLACEHOLDER
    assert r.secret_count == 2


def test_pin_ignores_values_below_min_length_like_add() -> None:
    r = Redactor()
    r.pin("abc")
    r.pin_all(["", "xyz"])
    assert r.secret_count == 0
    assert r.redact_text("abc xyz") == "abc xyz"


def test_a_bytes_or_str_repr_of_a_secret_is_masked() -> None:
    r = Redactor()
    secret = "wörd's \"quoted\""
    r.add(secret)
    for text in (repr(secret), repr(secret.encode()), repr({"x": secret})):
        masked = r.redact_text(text)
        assert PLACEHOLDER in masked
        assert "quoted" not in masked, masked


# --- mode of the secret files (S3a) -------------------------------------------------------


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o400, False), (0o640, True),
                                              (0o444, True)])
def test_a_secret_file_readable_by_others_is_warned_about_not_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD)
    secret.chmod(mode)
    caplog.set_level(logging.WARNING, logger="services.runtime.kafka_security")

    warn_if_exposed("KAFKA_SASL_PASSWORD_FILE", secret)

    messages = [r.getMessage() for r in caplog.records]
    if not warned:
        assert messages == []
        return
    [message] = messages
    assert f"KAFKA_SASL_PASSWORD_FILE {secret}" in message
    assert f"mode {stat.S_IMODE(secret.stat().st_mode):04o}" in message
    assert PASSWORD not in message


def test_a_missing_file_is_left_to_the_read_to_report(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="services.runtime.kafka_security")
    warn_if_exposed("KAFKA_SSL_KEYFILE", tmp_path / "absent.key")
    assert caplog.records == []


def _client_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "client.pem", directory / "client.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o644, True)])
def test_settings_warn_about_a_client_key_readable_by_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        mode: int, warned: bool) -> None:
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
                 "KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CAFILE"):
        monkeypatch.delenv(name, raising=False)
    cert_file, key_file = _client_certificate(tmp_path)
    key_file.chmod(mode)
    caplog.set_level(logging.WARNING, logger="services.runtime.kafka_security")

    RuntimeSettings(kafka_security_protocol="SSL", kafka_ssl_certfile=cert_file,
                    kafka_ssl_keyfile=key_file)

    messages = [r.getMessage() for r in caplog.records]
    if warned:
        [message] = messages
        assert message.startswith(f"KAFKA_SSL_KEYFILE {key_file} is accessible by group or "
                                  "others (mode 0644)")
    else:
        assert messages == []


def test_service_runtime_pins_the_sasl_password() -> None:
    from services.runtime.service import ServiceRuntime

    settings = RuntimeSettings(kafka_security_protocol="SASL_PLAINTEXT",
                               kafka_sasl_username="svc", kafka_sasl_password=PASSWORD)
    runtime = ServiceRuntime("test", settings, redactor=Redactor(max_secrets=16))
    runtime.redactor.add_all(f"ticket-secret-{i:04d}" for i in range(17))
    assert runtime.redactor.redact_text(f"pw {PASSWORD}") == f"pw {PLACEHOLDER}"


def test_settings_warn_about_a_password_file_readable_by_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o444)
    caplog.set_level(logging.WARNING, logger="services.runtime.kafka_security")
    RuntimeSettings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="svc",
                    kafka_sasl_password_file=secret)
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"KAFKA_SASL_PASSWORD_FILE {secret} is accessible by group "
                              "or others (mode 0444)")
    assert PASSWORD not in message
