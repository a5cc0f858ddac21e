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


def test_private_keys_reach_only_their_owner_and_only_as_secrets(compose, services):
    owners = {"auth-signing-private-key": "auth", "executor-sealing-private-key": "executor",
              "intake-integrations-key": "intake"}
    assert set(compose.get("secrets", {})) == set(owners)
    for name, service in services.items():
        received = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        assert received == {s for s, owner in owners.items() if owner == name}, name
        for mount in service.get("volumes", []):
            source = mount.get("source", "") if isinstance(mount, dict) else mount.split(":")[0]
            # The key folder is never bind-mounted whole: that would hand out every private key.
            assert "keys" not in source, f"{name} mounts {mount}"
    for secret in compose["secrets"].values():
        assert "file" in secret, "a secret comes from a file, never from an inline value"
