"""The Kafka principals of a Compose deployment and their credentials
(`intervene keys kafka`): one SASL user per service, an administrator and an auditor.

``deploy/compose.yaml`` runs the broker with SASL (PLAIN, inside the Compose network) and
the StandardAuthorizer with no access without an ACL; each service connects as its own
principal and gets only the ACLs of the table in ``docs/operations.md``. This writes, into
the key directory, the files Compose hands out as secrets (all mode 0600)::

    kafka-<role>.password      one per role: the password alone, for KAFKA_SASL_PASSWORD_FILE
    kafka-broker-jaas.conf     the broker's JAAS file: its own login and every user
    kafka-admin.properties     client settings of the administrator, for Kafka's own tools
                               (kafka-acls.sh, the broker's health check)

Passwords are 32 random bytes, URL-safe base64 (no quoting issue in JAAS or properties).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from services.runtime.keys import KeyFileExistsError, _write_text_atomically

__all__ = ["PRINCIPALS", "init_kafka_credentials", "password_file"]

# role -> SASL user name. "admin" creates topics and ACLs (a super user); "auditor" runs
# `intervene audit verify` (Read on the audit anchors).
PRINCIPALS: dict[str, str] = {
    "admin": "intervention-admin",
    "intake": "intervention-intake",
    "auth": "intervention-auth",
    "executor": "intervention-executor",
    "notifier": "intervention-notifier",
    "auditor": "intervention-auditor",
}
_PLAIN = "org.apache.kafka.common.security.plain.PlainLoginModule"


def password_file(role: str) -> str:
    return f"kafka-{role}.password"


def _jaas(passwords: dict[str, str]) -> str:
    admin = PRINCIPALS["admin"]
    users = "\n".join(f'    user_{PRINCIPALS[role]}="{pw}"' for role, pw in passwords.items())
    # The broker logs in as the administrator on its own listeners (inter-broker and
    # controller traffic) and accepts every user listed.
    return (f"KafkaServer {{\n    {_PLAIN} required\n"
            f'    username="{admin}"\n    password="{passwords["admin"]}"\n{users};\n}};\n')


def _admin_properties(password: str) -> str:
    return ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n"
            f'sasl.jaas.config={_PLAIN} required username="{PRINCIPALS["admin"]}" '
            f'password="{password}";\n')


def init_kafka_credentials(directory: Path, *, force: bool = False) -> list[Path]:
    """Write fresh credentials for every principal; refuses to replace existing ones unless
    ``force`` (the broker's JAAS file and every service's password change together)."""
    files = [directory / password_file(role) for role in PRINCIPALS]
    files += [directory / "kafka-broker-jaas.conf", directory / "kafka-admin.properties"]
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise KeyFileExistsError(
            f"Kafka credentials already exist: {', '.join(str(p) for p in existing)}; pass "
            "force (`intervene keys kafka --force`) to replace them all")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    passwords = {role: secrets.token_urlsafe(32) for role in PRINCIPALS}
    for role, password in passwords.items():
        _write_text_atomically(directory / password_file(role), password + "\n", 0o600)
    _write_text_atomically(directory / "kafka-broker-jaas.conf", _jaas(passwords), 0o600)
    _write_text_atomically(directory / "kafka-admin.properties",
                           _admin_properties(passwords["admin"]), 0o600)
    return files
