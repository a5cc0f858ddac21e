"""Redaction by value: a learnt secret appears in no output, in any common encoding."""

from __future__ import annotations

import base64
import json
import logging
import shlex
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from services.runtime import redaction
from services.runtime.redaction import (
    PLACEHOLDER,
    RedactingFilter,
    Redactor,
    install_log_redaction,
    is_sensitive_field,
)

CANARY = "Canary-p@ss w0rd/'\"&+=%!"


@pytest.fixture(autouse=True, scope="module")
def _own_default_redactor() -> Iterator[None]:
    """Sealing/opening teaches the process-wide redactor; keep this module's test secrets
    (hypothesis generates values like four spaces) from masking other tests' output."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redaction, "_DEFAULT", redaction.Redactor(max_secrets=256))
        yield


@pytest.fixture
def redactor() -> Redactor:
    r = Redactor()
    r.add(CANARY)
    return r


class Capture(logging.Handler):
    """Keeps what a real handler would write, formatted, plus the records themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s %(ticket)s"))
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.__dict__.setdefault("ticket", "-")
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def captured(
    redactor: Redactor, request: pytest.FixtureRequest
) -> Iterator[tuple[logging.Logger, Capture]]:
    logger = logging.getLogger(f"test.redaction.{request.node.name}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = Capture()
    logger.addHandler(handler)
    install_log_redaction(logger, redactor=redactor)
    yield logger, handler
    logger.removeHandler(handler)


# --- text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda s: s, id="plain"),
        pytest.param(lambda s: base64.b64encode(s.encode()).decode(), id="base64"),
        pytest.param(lambda s: base64.urlsafe_b64encode(s.encode()).decode(), id="base64url"),
        pytest.param(lambda s: base64.b64encode(s.encode()).decode().rstrip("="), id="b64-nopad"),
        pytest.param(lambda s: quote(s, safe=""), id="url-quote"),
        pytest.param(lambda s: quote(s), id="url-quote-path"),
        pytest.param(quote_plus, id="url-quote-plus"),
        pytest.param(lambda s: json.dumps(s)[1:-1], id="json-escaped"),
        pytest.param(lambda s: json.dumps(s, ensure_ascii=False)[1:-1], id="json-utf8"),
        pytest.param(shlex.quote, id="shell-quoted"),
    ],
)
def test_canary_in_any_common_encoding_is_masked(
    redactor: Redactor, encode: Callable[[str], str]
) -> None:
    encoded = encode(CANARY)
    text = f"before {encoded} after"

    redacted = redactor.redact_text(text)

    assert encoded not in redacted
    assert redacted == f"before {PLACEHOLDER} after"


@pytest.mark.parametrize("prefix", ["", "a", "ab", "admin:", "root:x"])
def test_canary_base64_encoded_inside_a_longer_value_is_masked(
    redactor: Redactor, prefix: str
) -> None:
    # e.g. an HTTP basic auth header: base64("user:" + password)
    header = "Authorization: Basic " + base64.b64encode(f"{prefix}{CANARY}".encode()).decode()

    redacted = redactor.redact_text(header)

    assert PLACEHOLDER in redacted
    decoded_tail = redacted.rsplit(PLACEHOLDER, 1)[-1]
    assert len(decoded_tail) <= 4  # at most the partial last group stays


def test_canary_inside_multi_line_command_output_is_masked(redactor: Redactor) -> None:
    output = (
        "Changing password for user admin.\n"
        f"New password: {CANARY}\n"
        f"echo {shlex.quote(CANARY)} | chpasswd\n"
        f"curl 'https://u:{quote(CANARY, safe='')}@example.net/'\n"
        "passwd: all authentication tokens updated successfully.\n"
    )

    redacted = redactor.redact_text(output)

    assert "w0rd" not in redacted
    assert redacted.count(PLACEHOLDER) == 3
    assert redacted.splitlines()[0] == "Changing password for user admin."


def test_multi_line_private_key_is_masked_even_when_rewrapped() -> None:
    body = base64.b64encode(bytes(range(200))).decode()
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    key = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + "\n".join(lines)
        + "\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    r = Redactor()
    r.add(key)

    crlf = key.replace("\n", "\r\n")
    redacted = r.redact_text(f"got key:\n{crlf}done")

    assert not any(line in redacted for line in lines)
    assert "done" in redacted


def test_unlearnt_pem_private_key_in_output_is_masked() -> None:
    output = (
        "$ cat /etc/ssh/ssh_host_ed25519_key\n"
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----\n$ exit\n"
    )

    redacted = Redactor().redact_text(output)

    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in redacted
    assert redacted == f"$ cat /etc/ssh/ssh_host_ed25519_key\n{PLACEHOLDER}\n$ exit\n"


def test_truncated_pem_private_key_is_masked_to_the_end() -> None:
    redacted = Redactor().redact_text("x\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow")

    assert redacted == f"x\n{PLACEHOLDER}"


def test_values_shorter_than_four_characters_are_not_learnt() -> None:
    r = Redactor()
    r.add("abc")
    r.add("")

    assert r.secret_count == 0
    assert r.redact_text("abc abcd") == "abc abcd"


def test_overlapping_secrets_leave_no_fragment() -> None:
    r = Redactor()
    r.add("abcdef")
    r.add("defghi")

    assert r.redact_text("xx abcdefghi yy") == f"xx {PLACEHOLDER} yy"


def test_the_longest_secret_wins_over_its_prefix() -> None:
    r = Redactor()
    r.add("secret")
    r.add("secret-extended")

    assert r.redact_text("secret-extended!") == f"{PLACEHOLDER}!"


def test_learning_a_secret_after_first_use_takes_effect() -> None:
    r = Redactor()
    assert r.redact_text("token-1234") == "token-1234"
    r.add("token-1234")

    assert r.redact_text("token-1234") == PLACEHOLDER


def test_bounded_redactor_forgets_the_oldest_secret() -> None:
    r = Redactor(max_secrets=2)
    r.add_all(["first-secret", "second-secret", "third-secret"])

    assert r.secret_count == 2
    assert r.redact_text("first-secret third-secret") == f"first-secret {PLACEHOLDER}"


def test_concurrent_adds_are_all_learnt() -> None:
    r = Redactor()
    secrets = [f"concurrent-secret-{i:04d}" for i in range(200)]

    def learn(chunk: list[str]) -> None:
        for n, s in enumerate(chunk):
            r.add(s)
            if n % 5 == 0:
                r.redact_text(s)  # interleave compiles with adds

    threads = [threading.Thread(target=learn, args=(secrets[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert r.secret_count == len(secrets)
    assert r.redact_text(" ".join(secrets)) == " ".join([PLACEHOLDER] * len(secrets))


def test_repr_never_shows_learnt_values(redactor: Redactor) -> None:
    assert CANARY not in repr(redactor)


@settings(max_examples=100, deadline=None)
@given(
    secret=st.text(min_size=4, max_size=40).filter(lambda s: s.strip() == s),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
def test_a_learnt_secret_never_survives_in_any_surrounding_text(
    secret: str, before: str, after: str
) -> None:
    r = Redactor()
    r.add(secret)

    assert secret not in r.redact_text(before + secret + after)


# --- structured data ----------------------------------------------------------------------


def test_canary_in_nested_dicts_and_lists_is_masked(redactor: Redactor) -> None:
    data: dict[str, Any] = {
        "ticket_id": "HD-1",
        "steps": [
            {"command": "chpasswd", "output": f"ok {CANARY}\n", "exit": 0},
            ("tuple", CANARY.encode()),
        ],
        "notes": {CANARY: "key is the secret"},
    }

    redacted = redactor.redact(data)

    assert CANARY not in json.dumps(redacted, default=str)
    assert redacted["steps"][0] == {
        "command": "chpasswd",
        "output": f"ok {PLACEHOLDER}\n",
        "exit": 0,
    }
    assert redacted["steps"][1] == ("tuple", PLACEHOLDER.encode())
    assert redacted["notes"] == {PLACEHOLDER: "key is the secret"}
    assert data["steps"][0]["output"] == f"ok {CANARY}\n"  # the input is not modified


def test_sensitive_field_names_are_masked_without_learning() -> None:
    data = {
        "username": "admin",
        "password": "never-learnt-1",
        "Private-Key": "never-learnt-2",
        "nested": {"rootPassword": "never-learnt-3", "api_token": "never-learnt-4"},
        "headers": {"Authorization": "Bearer never-learnt-5", "Accept": "text/plain"},
        "client_secret": 12345,
        "passphrase": None,
        "token_type": "bearer",
        "key_id": "exec-0123456789ab",
    }

    redacted = Redactor().redact(data)

    assert "never-learnt" not in json.dumps(redacted)
    assert redacted["username"] == "admin"
    assert redacted["client_secret"] == PLACEHOLDER
    assert redacted["passphrase"] is None  # "none given" stays visible
    assert redacted["headers"]["Accept"] == "text/plain"
    assert redacted["token_type"] == "bearer"
    assert redacted["key_id"] == "exec-0123456789ab"


def test_the_written_authorization_object_stays_readable() -> None:
    # Named like the HTTP header, but it is the customer's consent: evidence for the audit.
    consent = {"statement": "I authorize ...", "signed_by": "Jane Doe"}

    assert Redactor().redact({"authorization": consent}) == {"authorization": consent}


@pytest.mark.parametrize(
    ("name", "sensitive"),
    [
        ("password", True),
        ("PASSWD", True),
        ("new_password", True),
        ("X-Auth-Token", True),
        ("aws_secret_access_key", True),
        ("privateKey", True),
        ("authorization", True),
        ("Proxy-Authorization", True),
        ("passwordless", False),
        ("ssh_host_key", False),
        ("public_key", False),
        ("token_type", False),
        ("ticket_id", False),
    ],
)
def test_sensitive_field_name_rules(name: str, sensitive: bool) -> None:
    assert is_sensitive_field(name, "value") is sensitive


def test_pydantic_models_and_dataclasses_are_redacted() -> None:
    class Step(BaseModel):
        command: str
        output: str
        password: str

    @dataclass
    class Action:
        step: Step
        token: str

    r = Redactor()
    r.add("learnt-canary")

    redacted = r.redact(Action(Step(command="x", output="learnt-canary", password="p"), "t"))

    assert redacted == {
        "step": {"command": "x", "output": PLACEHOLDER, "password": PLACEHOLDER},
        "token": PLACEHOLDER,
    }


def test_undecodable_bytes_survive_redaction_untouched(redactor: Redactor) -> None:
    data = b"\xff\xfe " + CANARY.encode() + b" \x80"

    assert redactor.redact(data) == b"\xff\xfe " + PLACEHOLDER.encode() + b" \x80"


# --- logging ------------------------------------------------------------------------------


def test_log_arguments_are_formatted_then_redacted(
    captured: tuple[logging.Logger, Capture],
) -> None:
    logger, handler = captured

    logger.info("pw=%s", CANARY)

    assert handler.lines == [f"INFO pw={PLACEHOLDER} -"]
    record = handler.records[0]
    assert record.args == ()
    assert CANARY not in record.getMessage()


def test_canary_in_the_message_itself_is_redacted(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured

    logger.warning(f"login with {CANARY} failed")

    assert CANARY not in handler.lines[0]


def test_dict_argument_loses_its_password_field(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured

    logger.info("request %s", {"username": "admin", "password": "unlearnt-pw-99"})

    assert "unlearnt-pw-99" not in handler.lines[0]
    assert "admin" in handler.lines[0]


def test_exception_containing_the_secret_is_redacted(
    captured: tuple[logging.Logger, Capture],
) -> None:
    logger, handler = captured

    try:
        raise RuntimeError(f"ssh auth failed for password {CANARY}")
    except RuntimeError:
        logger.exception("step failed")

    (line,) = handler.lines
    assert "RuntimeError: ssh auth failed for password [REDACTED]" in line
    assert CANARY not in line
    record = handler.records[0]
    assert record.exc_info is None  # so no handler can render the original exception
    assert CANARY not in (record.exc_text or "")


def test_extra_fields_are_redacted(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured

    logger.info("step", extra={"ticket": f"HD-1 {CANARY}", "password": "unlearnt-77"})

    assert CANARY not in handler.lines[0]
    assert handler.records[0].password == PLACEHOLDER  # type: ignore[attr-defined]


def test_mismatched_format_arguments_are_dropped_not_leaked(
    captured: tuple[logging.Logger, Capture],
) -> None:
    logger, handler = captured

    logger.info("%d items", "unlearnt-arg-55")

    assert "unlearnt-arg-55" not in handler.lines[0]
    assert "dropped" in handler.lines[0]


def test_propagated_records_are_redacted_by_the_handler_filter(redactor: Redactor) -> None:
    parent = logging.getLogger("test.redaction.parent")
    parent.propagate = False
    handler = Capture()
    parent.addHandler(handler)
    install_log_redaction(parent, redactor=redactor)
    try:
        logging.getLogger("test.redaction.parent.child").error("pw=%s", CANARY)
    finally:
        parent.removeHandler(handler)

    assert handler.lines == [f"ERROR pw={PLACEHOLDER} -"]


def test_root_installation_redacts_records_of_every_logger_even_for_later_handlers(
    redactor: Redactor,
) -> None:
    root = logging.getLogger()
    saved_factory, saved_filters = logging.getLogRecordFactory(), list(root.filters)
    logger = logging.getLogger("test.redaction.root-install")
    logger.propagate = False
    try:
        install_log_redaction(redactor=redactor)
        install_log_redaction(redactor=redactor)  # idempotent
        handler = Capture()  # added after installation, without a filter
        logger.addHandler(handler)
        logger.warning("pw=%s", CANARY)
        logger.removeHandler(handler)
    finally:
        logging.setLogRecordFactory(saved_factory)
        root.filters[:] = saved_filters
        for h in root.handlers:
            h.filters[:] = [f for f in h.filters if not isinstance(f, RedactingFilter)]

    assert handler.lines == [f"WARNING pw={PLACEHOLDER} -"]


def test_filter_is_idempotent(redactor: Redactor) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pw=%s %%", (CANARY,), None)
    f = RedactingFilter(redactor)

    f.filter(record)
    f.filter(record)

    assert record.getMessage() == f"pw={PLACEHOLDER} %"


def test_empty_redactor_passed_explicitly_is_used_not_the_default() -> None:
    from services.runtime.redaction import default_redactor

    default_redactor().add("only-in-the-default-1")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "only-in-the-default-1", (), None)

    RedactingFilter(Redactor()).filter(record)

    assert record.getMessage() == "only-in-the-default-1"


def test_learning_one_more_secret_among_many_recompiles_only_its_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.runtime import redaction

    redactor = redaction.Redactor(max_secrets=1024)
    learnt = [f"Secret-{i:04d}-{'x' * 12}" for i in range(512)]
    redactor.add_all(learnt)
    assert redactor.redact_text(" ".join(learnt[:3])) == " ".join(["[REDACTED]"] * 3)

    compiled: list[int] = []
    real = redaction._forms_pattern

    def counting(forms: object) -> object:
        compiled.append(len(forms))  # type: ignore[arg-type]
        return real(forms)  # type: ignore[arg-type]

    monkeypatch.setattr(redaction, "_forms_pattern", counting)
    redactor.add("Another-secret-value")
    masked = redactor.redact_text(f"{learnt[0]} and Another-secret-value and {learnt[-1]}")
    assert masked == "[REDACTED] and [REDACTED] and [REDACTED]"
    # One small group recompiled, not the 513 secrets' thousands of forms.
    assert len(compiled) == 1
    assert compiled[0] < 40


def test_overlapping_secrets_in_different_groups_leave_no_fragment() -> None:
    from services.runtime.redaction import Redactor

    redactor = Redactor()
    redactor.add("abcdef-first")
    redactor.add_all(f"filler-secret-{i}" for i in range(20))  # push the next into a new group
    redactor.add("first-and-more")
    assert redactor.redact_text("abcdef-first-and-more!") == "[REDACTED]!"


SECRET_PW = "Tr0ub4dor&3-horse-battery"


def test_hex_forms_of_a_secret_are_masked() -> None:
    redactor = Redactor()
    redactor.add(SECRET_PW)
    raw = SECRET_PW.encode().hex()
    for text in (f"xxd: {raw}", f"HEX {raw.upper()} end"):
        redacted = redactor.redact_text(text)
        assert raw not in redacted.lower()
        assert PLACEHOLDER in redacted


@pytest.mark.parametrize("breaker", ["\n", "\r\n", "\n    ", "\n\t"])
def test_a_secret_split_across_lines_is_masked(breaker: str) -> None:
    redactor = Redactor()
    redactor.add(SECRET_PW)
    text = f"before {SECRET_PW[:9]}{breaker}{SECRET_PW[9:]} after\nnext line"
    redacted = redactor.redact_text(text)
    assert SECRET_PW[:9] not in redacted
    assert SECRET_PW[9:] not in redacted
    assert redacted.startswith("before ")
    assert redacted.endswith(" after\nnext line")


def test_a_wrapped_base64_secret_is_masked() -> None:
    secret = "k" * 10 + "-a-long-api-token-" + "z" * 60
    redactor = Redactor()
    redactor.add(secret)
    encoded = base64.b64encode(secret.encode()).decode()
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    redacted = redactor.redact_text(wrapped)
    assert all(line not in redacted for line in wrapped.splitlines() if len(line) > 8)


def test_output_is_redacted_before_it_is_cut() -> None:
    redactor = Redactor()
    redactor.add(SECRET_PW)
    limit = 1000
    # The cut falls inside the secret: its second half would survive a cut-then-redact.
    text = "x" * 5000 + SECRET_PW + "y" * (limit - len(SECRET_PW) // 2)
    naive = redactor.redact_text(text[-limit:])
    assert SECRET_PW[len(SECRET_PW) // 2 + 1:] in naive  # the bug this guards against
    kept = redactor.redact_tail(text, limit)
    assert SECRET_PW[len(SECRET_PW) // 2 + 1:] not in kept
    assert kept.startswith("[… 5013 earlier characters cut …]\n" + PLACEHOLDER)
    assert kept.endswith("y" * 100)
    assert redactor.redact_tail("short " + SECRET_PW, limit) == "short " + PLACEHOLDER


def test_secrets_held_by_a_running_claim_are_never_evicted() -> None:
    redactor = Redactor(max_secrets=4)
    with redactor.holding("HD-1:1"):
        redactor.add(SECRET_PW)
        for n in range(20):  # other tickets' secrets arrive meanwhile
            with redactor.holding(f"HD-{n + 2}:1"):
                redactor.add(f"other-secret-{n:04d}")
        assert SECRET_PW in redactor.held("HD-1:1")
        assert redactor.redact_text(f"pw {SECRET_PW}") == f"pw {PLACEHOLDER}"
        assert redactor.secret_count <= 5
    # Once the run is over it is an ordinary learnt secret again, bounded like the rest.
    for n in range(10):
        redactor.add(f"later-secret-{n:04d}")
    assert redactor.redact_text(f"pw {SECRET_PW}") == f"pw {SECRET_PW}"
    assert redactor.held("HD-1:1") == frozenset()


def test_a_held_secret_learnt_before_the_run_is_held_when_learnt_again() -> None:
    redactor = Redactor(max_secrets=2)
    redactor.add(SECRET_PW)
    with redactor.holding("HD-1:1"):
        redactor.add(SECRET_PW)  # the run re-teaches the credential it opened earlier
        for n in range(5):
            redactor.add(f"other-secret-{n:04d}")
        assert redactor.redact_text(SECRET_PW) == PLACEHOLDER
