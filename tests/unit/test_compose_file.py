"""Structural checks on deploy/compose.yaml.

No Docker engine runs where the tests run, so the compose file is kept right by reading it:
these tests pin the invariants whose breakage would only show on a Docker host.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
APP_SERVICES = ("intake", "auth", "executor", "notifier")

# What key material or a credential looks like when pasted into an environment value.
SECRET_PATTERNS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),  # user:password@ in a URI
    re.compile(r"^[A-Za-z0-9+/]{43}=$"),  # a bare base64 32-byte key (X25519 / Ed25519)
    re.compile(r"^[0-9a-fA-F]{64}$"),  # a bare hex 32-byte key
)
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|PRIVATE|TOKEN|PASSPHRASE)", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the `<<: *anchor` merges, as Compose does.
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- NAME=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # the short form means service_started
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def test_every_dependency_names_a_service_with_a_valid_condition(services):
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dep, spec in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert spec.get("condition", "service_started") in conditions, (name, dep)


def test_healthy_conditions_wait_on_services_that_have_a_healthcheck(services):
    for name, service in services.items():
        for dep, spec in _depends_on(service).items():
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"


def test_the_app_services_share_one_build_of_the_one_dockerfile(services):
    builds = {name: services[name].get("build") for name in APP_SERVICES}
    assert all(builds.values()), f"every app service is built: {builds}"
    assert len({repr(b) for b in builds.values()}) == 1, builds
    build = builds["intake"]
    context = (DEPLOY / build["context"]).resolve()
    assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert (context / "pyproject.toml").is_file(), "the build context is the repository root"


def test_each_app_service_runs_its_own_module(services):
    for name in APP_SERVICES:
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]


def test_app_services_reach_the_bus_the_store_and_the_collector(services):
    for name in APP_SERVICES:
        env = _environment(services[name])
        assert env.get("KAFKA_BOOTSTRAP_SERVERS") == "kafka:9092", name
        assert env.get("MONGODB_URI", "").startswith("mongodb://mongo:"), name
        assert env.get("MONGODB_DATABASE"), name
        assert env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").startswith("http://otel-collector:")
        assert env.get("OTEL_SERVICE_NAME") == name


def test_app_services_start_after_topics_exist_and_the_store_is_healthy(services):
    for name in APP_SERVICES:
        deps = _depends_on(services[name])
        assert deps["kafka"]["condition"] == "service_healthy", name
        assert deps["mongo"]["condition"] == "service_healthy", name
        assert deps["topics"]["condition"] == "service_completed_successfully", name


def test_topics_are_created_explicitly_and_never_by_auto_create(services):
    kafka_env = _environment(services["kafka"])
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"
    topics = services["topics"]
    assert topics["command"] == ["intervene", "topics", "create"]
    assert topics["build"] == services["intake"]["build"]
    assert _depends_on(topics)["kafka"]["condition"] == "service_healthy"
    # Only the one-shot creates; services check theirs exist (the production ACL pattern).
    for name in APP_SERVICES:
        assert _environment(services[name])["KAFKA_CREATE_TOPICS"] == "false", name
    assert _environment(topics)["KAFKA_REPLICATION_FACTOR"] == "1"  # one broker here


def test_single_node_kafka_gives_internal_topics_one_replica(services):
    env = _environment(services["kafka"])
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    ):
        assert env.get(key) == "1", key
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_intake_listens_on_all_interfaces_at_the_published_port(services):
    intake = services["intake"]
    env = _environment(intake)
    # Inside its container intake must not listen on loopback only, or the port is unreachable.
    assert ipaddress.ip_address(env["INTAKE_HTTP_HOST"]).is_unspecified
    assert f"8080:{env['INTAKE_HTTP_PORT']}" in [str(p) for p in intake.get("ports", [])]


def test_no_secret_or_key_material_in_environment_values(services):
    for name, service in services.items():
        for key, value in _environment(service).items():
            for pattern in SECRET_PATTERNS:
                assert not pattern.search(value), f"{name}.{key} looks like a secret"
            if SECRET_NAME.search(key):
                # A secret may only be named by reference (a file path), never inlined.
                assert value.startswith("/"), f"{name}.{key} inlines a secret"


# Every secret and who may receive it: a service's own keys and its own Kafka password; the
# broker's JAAS file to the broker; the administrator's credentials to the one-shots that
# create topics and ACLs (and to the broker, for its authenticated health check).
SECRET_OWNERS: dict[str, set[str]] = {
    "auth-signing-private-key": {"auth"},
    "executor-sealing-private-key": {"executor"},
    "notifier-signing-private-key": {"notifier"},
    "intake-signing-private-key": {"intake"},
    "intake-integrations-key": {"intake"},
    **{f"audit-{s}-private-key": {s} for s in APP_SERVICES},
    **{f"kafka-{s}-password": {s} for s in APP_SERVICES},
    "kafka-admin-password": {"topics"},
    "kafka-broker-jaas": {"kafka"},
    "kafka-admin-properties": {"kafka", "acls"},
}


def test_private_keys_reach_only_their_owner_and_only_as_secrets(compose, services):
    owners = SECRET_OWNERS
    assert set(compose.get("secrets", {})) == set(owners)
    for name, service in services.items():
        received = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        assert received == {s for s, owner in owners.items() if name in owner}, name
        for mount in service.get("volumes", []):
            source = mount.get("source", "") if isinstance(mount, dict) else mount.split(":")[0]
            # The key folder is never bind-mounted whole: that would hand out every private key.
            assert "keys" not in source, f"{name} mounts {mount}"
    for secret in compose["secrets"].values():
        assert "file" in secret, "a secret comes from a file, never from an inline value"



def test_the_executor_gets_the_notifiers_public_key_to_check_engineers_reports(services):
    # Without it the executor would refuse every report (its default trusted key file).
    targets = {c["source"]: c["target"] for c in services["executor"]["configs"]}
    assert targets["notifier-signing-public-key"] == "/keys/notifier-signing.pub"
    assert {s["target"] for s in services["notifier"]["secrets"]} >= {
        "/keys/notifier-signing.key"}


def test_auth_gets_intakes_public_key_to_check_tickets(services):
    targets = {c["source"]: c["target"] for c in services["auth"]["configs"]}
    assert targets["intake-signing-public-key"] == "/keys/intake-signing.pub"
    assert {s["target"] for s in services["intake"]["secrets"]} >= {"/keys/intake-signing.key"}



# --- Kafka with SASL and per-service ACLs ---------------------------------------------------

SERVICE_PRINCIPALS = {s: f"intervention-{s}" for s in APP_SERVICES}
GRANT = re.compile(r"^\s*grant (\S+) (Read|Write) (literal|prefixed) (topic|group) (\S+)\s*$")


def _grants(services: dict[str, dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    script = "\n".join(services["acls"]["command"])
    return {m.groups() for line in script.splitlines() if (m := GRANT.match(line))}  # type: ignore[misc]


def _doc_acls() -> set[tuple[str, str, str]]:
    """(principal, Read|Write, topic) from the ACL table of docs/operations.md."""
    lines = (DEPLOY.parent / "docs" / "operations.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines)
                 if "| principal | Read (topics) | Write (topics) |" in line)
    grants: set[tuple[str, str, str]] = set()

    def full(name: str) -> str:
        return name if "." in name else f"intervention.{name}"

    for line in lines[start + 2:]:
        if not line.strip().startswith("|"):
            break
        who, read, write = (c.strip() for c in line.strip().strip("|").split("|"))
        if who.startswith("every service"):
            principals = list(SERVICE_PRINCIPALS.values())
        elif who.startswith("the auditor"):
            principals = ["intervention-auditor"]
        else:
            principals = [SERVICE_PRINCIPALS[who]]
        reads = [full(n) for n in re.findall(r"`([a-z][a-z.-]+)`", read)]
        writes = [full(n) for n in re.findall(r"`([a-z][a-z.-]+)`", write) if n != ".dlq"]
        if "`.dlq`" in write:  # "its .dlq" / "their .dlq": of the topics it reads
            writes += [t + ".dlq" for t in reads]
        for principal in principals:
            grants |= {(principal, "Read", t) for t in reads}
            grants |= {(principal, "Write", t) for t in writes}
    return grants


def test_the_broker_authenticates_every_listener_and_authorizes_by_acl(services):
    env = _environment(services["kafka"])
    protocols = dict(pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                     .split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}, "no PLAINTEXT listener at all"
    for listener in env["KAFKA_LISTENERS"].split(","):
        assert listener.split("://")[0] in protocols
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "SASL_PLAINTEXT://kafka:9092"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:intervention-admin"  # no service is a super user
    assert "/run/secrets/kafka-broker-jaas.conf" in env["KAFKA_OPTS"]
    assert "--command-config /run/secrets/kafka-admin.properties" in " ".join(
        services["kafka"]["healthcheck"]["test"])


def test_each_service_connects_as_its_own_principal_with_its_own_password(services):
    for name in APP_SERVICES:
        env = _environment(services[name])
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env["KAFKA_SASL_USERNAME"] == SERVICE_PRINCIPALS[name]
        assert env["KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/kafka-password"
        targets = {s["source"]: s["target"] for s in services[name]["secrets"]}
        assert targets[f"kafka-{name}-password"] == "kafka-password"
        assert targets[f"audit-{name}-private-key"] == f"/keys/audit-{name}.key"
    topics = _environment(services["topics"])
    assert topics["KAFKA_SASL_USERNAME"] == "intervention-admin"  # only it creates topics


def test_the_acl_one_shot_grants_exactly_the_documented_table(services):
    grants = _grants(services)
    topics = {(p, op, name) for p, op, pattern, kind, name in grants if kind == "topic"}
    assert all(pattern == "literal" for _, _, pattern, kind, _ in grants if kind == "topic")
    assert topics == _doc_acls()
    groups = {(p, name) for p, op, pattern, kind, name in grants
              if kind == "group" and op == "Read" and pattern == "prefixed"}
    assert groups == {(principal, name) for name, principal in SERVICE_PRINCIPALS.items()}


def test_the_documented_acls_are_what_each_service_uses():
    # The table in docs/operations.md is what the services ensure at start: Read on what
    # they consume, Write on those topics' DLQs and on what they produce (anchors included).
    from schemas.topics import DLQ_SUFFIX
    from services.cli.commands_docs import service_runtimes

    documented = _doc_acls()
    with service_runtimes() as runtimes:
        for name, runtime in runtimes.items():
            principal = SERVICE_PRINCIPALS[name]
            reads = {t for p, op, t in documented if p == principal and op == "Read"}
            writes = {t for p, op, t in documented if p == principal and op == "Write"}
            assert reads == runtime.consumed_topics, name
            assert writes == (runtime.produced_topics
                              | {t + DLQ_SUFFIX for t in runtime.consumed_topics}), name


def test_services_start_after_the_acls_are_granted(services):
    assert _depends_on(services["acls"])["topics"]["condition"] == \
        "service_completed_successfully"
    for name in APP_SERVICES:
        assert _depends_on(services[name])["acls"]["condition"] == \
            "service_completed_successfully", name


def test_keys_kafka_writes_every_credential_file_compose_mounts(compose, tmp_path):
    from services.cli.main import main

    # What an operator runs: `intervene keys init` (with intake's integration key), then
    # `intervene keys kafka`.
    assert main(["keys", "init", "--dir", str(tmp_path)]) == 0
    from services.runtime.kafka_credentials import init_kafka_credentials

    written = {p.name for p in init_kafka_credentials(tmp_path)}
    for name, secret in compose["secrets"].items():
        assert (tmp_path / Path(secret["file"]).name).is_file(), name
    jaas = (tmp_path / "kafka-broker-jaas.conf").read_text()
    for principal in [*SERVICE_PRINCIPALS.values(), "intervention-admin",
                      "intervention-auditor"]:
        assert f'user_{principal}="' in jaas
    assert "kafka-admin.properties" in written
    for path in tmp_path.glob("kafka-*"):
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"
