"""The Helm chart (deploy/helm/os-intervention): it lints, renders for the value sets an
operator would use, every rendered object is valid against the Kubernetes schemas (the
``kubernetes-validate`` package) or the vendored Strimzi, KEDA and Prometheus Operator CRD
schemas (deploy/helm/schemas), and it cannot drift from the code: topics, ACLs, consumer
groups, key files, environment variables, ports, alert rules and intake's signature headers
are all checked against what the services do.

No cluster runs here: rendering and offline schema validation are what can be checked, and
they catch what a ``kubectl apply`` would refuse (and, with the CRDs made strict, what the API
server would silently prune).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_topology import CHART, ROOT, TOPOLOGY, code_topology, render

from schemas.topics import DEFAULT_PARTITIONS, all_topics

pytestmark = pytest.mark.timeout(1500)  # the first test may build helm (about two minutes)

KUBE_VERSION = "1.33.0"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - inside a pod, where the kubelet's probes come from
CRD_SCHEMAS = ROOT / "deploy" / "helm" / "schemas"
SERVICES = ("intake", "auth", "executor", "notifier")
RULES = ROOT / "deploy" / "prometheus" / "rules"
OPERATIONS = ROOT / "docs" / "operations.md"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "strimzi": ["strimzi.enabled=true", "kafka.sasl.passwordFrom=strimzi"],
    "keda": ["keda.enabled=true", "keda.authenticationRef=kafka-scaler",
             "services.executor.maxReplicas=10"],
    "ingress": ["ingress.enabled=true", "ingress.tlsSecret=intake-tls",
                "monitoring.serviceMonitor.enabled=true",
                "monitoring.prometheusRule.enabled=true"],
    "plaintext": ["kafka.securityProtocol=PLAINTEXT", "kafka.tls.caSecret.name=",
                  "otel.endpoint=http://otel-collector:4318"],
    "everything": ["strimzi.enabled=true", "keda.enabled=true", "ingress.enabled=true",
                   "monitoring.serviceMonitor.enabled=true",
                   "monitoring.prometheusRule.enabled=true", "kafka.topicPrefix=staging_",
                   "strimzi.namespace=kafka",
                   "services.auth.env.AUTH_REVIEW_THRESHOLD=5"],
}


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120,
                          check=False)


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def rendered(helm: Path, value_set: str) -> list[dict[str, Any]]:
    if value_set not in _RENDERED:
        sets = [arg for value in VALUE_SETS[value_set] for arg in ("--set", value)]
        done = run_helm(helm, "template", "rel", str(CHART), "--namespace", "ops",
                        "--kube-version", KUBE_VERSION, *sets)
        assert done.returncode == 0, done.stderr
        _RENDERED[value_set] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return _RENDERED[value_set]


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in of_kind(objects, "Deployment").values()}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [main] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(main)


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(deployment)["env"]}


def chart_values() -> dict[str, Any]:
    loaded = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


# --- helm's own checks --------------------------------------------------------------------


@pytest.mark.parametrize("value_set", ["defaults", "everything"])
def test_helm_lint_passes(helm: Path, value_set: str) -> None:
    sets = [arg for value in VALUE_SETS[value_set] for arg in ("--set", value)]
    done = run_helm(helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *sets)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_rendered_object_is_valid_offline(helm: Path, value_set: str) -> None:
    objects = rendered(helm, value_set)
    assert objects
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        assert DNS_SUBDOMAIN.match(obj["metadata"]["name"]), name
        schema = crd_schema(obj["apiVersion"], obj["kind"])
        if schema is not None:
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj),
                            key=lambda e: list(e.absolute_path))
            assert not errors, f"{name}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])
        else:
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {exc.path}: {exc.message}")


def test_value_sets_render_what_they_turn_on(helm: Path) -> None:
    kinds = {name: {o["kind"] for o in rendered(helm, name)} for name in VALUE_SETS}
    base = {"Deployment", "Service", "PodDisruptionBudget"}
    assert kinds["defaults"] == base
    assert kinds["strimzi"] == base | {"KafkaTopic", "KafkaUser"}
    assert kinds["keda"] == base | {"ScaledObject"}
    assert kinds["ingress"] == base | {"Ingress", "ServiceMonitor", "PrometheusRule"}
    assert kinds["everything"] == (base | {"KafkaTopic", "KafkaUser", "ScaledObject",
                                           "Ingress", "ServiceMonitor", "PrometheusRule"})


@pytest.mark.parametrize(("values", "message"), [
    (["kafka.securityProtocol=SASL_TLS"], "kafka.securityProtocol must be one of"),
    (["kafka.sasl.passwordFrom=strimzi"], "needs strimzi.enabled=true"),
    (["strimzi.enabled=true", "kafka.sasl.passwordFrom=strimzi", "strimzi.namespace=kafka"],
     'Strimzi writes each KafkaUser\'s password Secret in "kafka", which pods in "ops" cannot'),
])
def test_values_that_could_not_start_are_refused_with_the_reason(
        helm: Path, values: list[str], message: str) -> None:
    sets = [arg for value in values for arg in ("--set", value)]
    done = run_helm(helm, "template", "rel", str(CHART), "--namespace", "ops",
                    "--kube-version", KUBE_VERSION, *sets)
    assert done.returncode != 0
    assert message in done.stderr


def test_the_strict_crd_schemas_refuse_a_misspelt_field() -> None:
    # The check above would be toothless if the vendored schemas let anything through.
    user = {"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaUser",
            "metadata": {"name": "u"},
            "spec": {"authentication": {"type": "scram-sha-512"},
                     "authorization": {"type": "simple", "acls": [
                         {"resource": {"type": "topic", "name": "t"}, "operation": "Read"}]}}}
    schema = crd_schema("kafka.strimzi.io/v1", "KafkaUser")
    assert schema is not None
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(user)]
    assert any("'operations' is a required property" in m for m in messages), messages
    assert any("'operation' was unexpected" in m for m in messages), messages


# --- no drift from the code ---------------------------------------------------------------


def test_chart_topology_matches_the_services_as_wired() -> None:
    expected = render(code_topology())
    assert TOPOLOGY.read_text(encoding="utf-8") == expected, (
        f"{TOPOLOGY.relative_to(ROOT)} is out of date: run "
        "`python -m tests.unit.deploy.chart_topology` and commit it")


def test_kafka_topics_are_the_catalogue_and_its_dlqs(helm: Path) -> None:
    for value_set, prefix in (("strimzi", ""), ("everything", "staging_")):
        topics = of_kind(rendered(helm, value_set), "KafkaTopic").values()
        assert sorted(t["spec"]["topicName"] for t in topics) == sorted(
            s.name for s in all_topics(prefix))
        for topic in topics:
            assert topic["spec"]["partitions"] == chart_values()["kafka"]["partitions"]
            dlq = topic["spec"]["topicName"].endswith(".dlq")
            days = topic["spec"]["config"]["retention.ms"] / 86_400_000
            assert days == (30 if dlq else 7), topic["spec"]["topicName"]
            # Where Strimzi's operators watch: the Kafka cluster's namespace when named.
            assert topic["metadata"]["namespace"] == ("kafka" if value_set == "everything"
                                                      else "ops")
    assert chart_values()["kafka"]["partitions"] == DEFAULT_PARTITIONS


def _acls(user: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"Read": set(), "Write": set(), "group": set()}
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        assert resource.get("patternType", "literal") == "literal", acl
        if resource["type"] == "group":
            assert acl["operations"] == ["Read"]
            found["group"].add(resource["name"])
        else:
            [operation] = set(acl["operations"]) - {"Describe"}
            found[operation].add(resource["name"])
    return found


def test_kafka_users_carry_exactly_the_acls_each_service_uses(helm: Path) -> None:
    topology = code_topology()["services"]
    for value_set, prefix in (("strimzi", ""), ("everything", "staging_")):
        users = of_kind(rendered(helm, value_set), "KafkaUser")
        assert set(users) == {f"intervention-{s}" for s in SERVICES}
        for service in SERVICES:
            acls = _acls(users[f"intervention-{service}"])
            consumed = {c["topic"] for c in topology[service]["consumes"]}
            assert acls["Read"] == {prefix + t for t in consumed}, service
            assert acls["Write"] == {prefix + t for t in
                                     {*topology[service]["produces"],
                                      *(t + ".dlq" for t in consumed)}}, service
            assert acls["group"] == {prefix + c["group"]
                                     for c in topology[service]["consumes"]}, service
            deployment = deployments(rendered(helm, value_set))[service]
            assert env_of(deployment)["KAFKA_SASL_USERNAME"]["value"] == f"intervention-{service}"


def _documented_acls() -> dict[str, dict[str, set[str]]]:
    """The ACL table of docs/operations.md ("Kafka in production")."""
    table: dict[str, dict[str, set[str]]] = {}
    everyone: set[str] = set()  # the row "every service above" (the audit anchors)

    def names(cell: str) -> set[str]:
        return {n if "." in n else f"intervention.{n}"
                for n in re.findall(r"`([^`]+)`", cell) if n != ".dlq"}

    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("every service"):
            everyone |= names(cells[2])
        if len(cells) != 3 or cells[0] not in SERVICES:
            continue
        read = names(cells[1])
        write = names(cells[2]) | ({t + ".dlq" for t in read} if "`.dlq`" in cells[2] else set())
        table[cells[0]] = {"Read": read, "Write": write}
    for acls in table.values():
        acls["Write"] |= everyone
    return table


def test_the_documented_acl_table_is_what_the_chart_grants(helm: Path) -> None:
    documented = _documented_acls()
    assert set(documented) == set(SERVICES)
    users = of_kind(rendered(helm, "strimzi"), "KafkaUser")
    for service in SERVICES:
        acls = _acls(users[f"intervention-{service}"])
        assert documented[service] == {"Read": acls["Read"], "Write": acls["Write"]}, service


def _settings_variables(service: str) -> set[str]:
    from services.auth.settings import AuthSettings
    from services.executor.settings import ExecutorSettings
    from services.intake.settings import IntakeSettings
    from services.notifier.settings import NotifierSettings

    settings = {"intake": IntakeSettings, "auth": AuthSettings, "executor": ExecutorSettings,
                "notifier": NotifierSettings}[service]
    return {name.upper() for name in settings.model_fields}


def test_every_environment_variable_is_one_the_service_reads(helm: Path) -> None:
    for value_set in VALUE_SETS:
        for service, deployment in deployments(rendered(helm, value_set)).items():
            unread = {name for name in env_of(deployment) if not name.startswith("OTEL_")}
            unread -= _settings_variables(service)
            assert not unread, f"{value_set}/{service} sets variables it never reads: {unread}"


def test_services_only_check_topics_and_keep_secrets_out_of_the_pod_spec(helm: Path) -> None:
    for value_set in VALUE_SETS:
        for service, deployment in deployments(rendered(helm, value_set)).items():
            env = env_of(deployment)
            assert env["KAFKA_CREATE_TOPICS"]["value"] == "false"
            assert env["INTERVENTION_KEYS_DIR"]["value"] == "/keys"
            assert "secretKeyRef" in env["MONGODB_URI"]["valueFrom"], service
            for name, entry in env.items():
                if re.search(r"PASSWORD$|SECRET|TOKEN|WEBHOOK_URL", name):
                    assert "value" not in entry or entry["value"].startswith("/keys/"), (
                        f"{value_set}/{service}: {name} is inlined, not from its Secret")


def test_probes_use_the_ops_port_the_service_is_told_to_serve(helm: Path) -> None:
    for service, deployment in deployments(rendered(helm, "defaults")).items():
        main = container(deployment)
        env = env_of(deployment)
        assert env["OPS_HTTP_HOST"]["value"] == ALL_INTERFACES, service
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports["ops"] == int(env["OPS_HTTP_PORT"]["value"]) == chart_values()["opsPort"]
        assert main["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
        assert main["livenessProbe"]["httpGet"]["port"] == "ops"
        assert main["startupProbe"]["httpGet"]["port"] == "ops"
        if service == "intake":
            assert ports["http"] == int(env["INTAKE_HTTP_PORT"]["value"])
            assert ports["ops"] != ports["http"]  # /metrics never on the public API
            assert env["INTAKE_HTTP_HOST"]["value"] == ALL_INTERFACES
            assert env["INTAKE_CREATE_INTEGRATION_KEY"]["value"] == "false"


def test_each_service_gets_only_its_own_key_files_owner_only_and_read_only(
        helm: Path) -> None:
    topology = code_topology()["services"]
    for value_set in VALUE_SETS:
        for service, deployment in deployments(rendered(helm, value_set)).items():
            pod = deployment["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            sasl = "KAFKA_SASL_PASSWORD_FILE" in env_of(deployment)
            wanted = set(topology[service]["keys"]) | ({"kafka-password"} if sasl else set())
            if not wanted:
                assert "secret" not in volumes, service
                assert not pod.get("initContainers"), service
                continue
            projected = volumes["secret"]["projected"]
            assert projected["defaultMode"] == 0o400
            items = {i["path"] for s in projected["sources"] for i in s["secret"]["items"]}
            assert items == wanted, f"{value_set}/{service}"
            [init] = pod["initContainers"]
            assert "install -m 0400" in init["command"][-1]
            assert {m["name"]: m.get("readOnly", False) for m in init["volumeMounts"]} == {
                "secret": True, "keys": False}
            assert volumes["keys"]["emptyDir"]["medium"] == "Memory"
            mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
            assert mounts["keys"]["mountPath"] == "/keys"
            assert mounts["keys"]["readOnly"]
            assert "secret" not in mounts  # the service sees only the 0400 copies
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def test_a_service_whose_key_files_mode_the_chart_sets_loads_them(tmp_path: Path) -> None:
    """What the init container does (install -m 0400, owned by the service's user) gives key
    files the services accept; what a Secret volume with an fsGroup gives (0440) they refuse."""
    from services.runtime.keys import KeyFileError, init_keys, load_signing_key

    paths = init_keys(tmp_path / "keys")
    copied = tmp_path / "copied" / paths.signing_private.name
    copied.parent.mkdir()
    subprocess.run(["install", "-m", "0400", str(paths.signing_private), str(copied)],
                   check=True)
    assert load_signing_key(copied).key_id == load_signing_key(paths.signing_private).key_id
    copied.chmod(0o440)
    with pytest.raises(KeyFileError, match="group or others"):
        load_signing_key(copied)


def test_keda_scales_on_every_consumer_group_lag_capped_at_the_partitions(helm: Path) -> None:
    topology = code_topology()["services"]
    for value_set, prefix in (("keda", ""), ("everything", "staging_")):
        objects = rendered(helm, value_set)
        scaled = {o["spec"]["scaleTargetRef"]["name"]: o
                  for o in of_kind(objects, "ScaledObject").values()}
        for service, deployment in deployments(objects).items():
            assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
            spec = scaled[deployment["metadata"]["name"]]["spec"]
            assert spec["maxReplicaCount"] <= DEFAULT_PARTITIONS
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            triggers = {(t["metadata"]["consumerGroup"], t["metadata"]["topic"])
                        for t in spec["triggers"] if t["type"] == "kafka"}
            assert triggers == {(prefix + c["group"], prefix + c["topic"])
                                for c in topology[service]["consumes"]}, service
            assert len({t["name"] for t in spec["triggers"]}) == len(spec["triggers"])
            if value_set == "keda":
                assert all(t["authenticationRef"]["name"] == "kafka-scaler"
                           for t in spec["triggers"])


def test_fixed_replicas_and_one_disruption_at_a_time_without_keda(helm: Path) -> None:
    objects = rendered(helm, "defaults")
    for deployment in deployments(objects).values():
        assert deployment["spec"]["replicas"] >= 2
    budgets = of_kind(objects, "PodDisruptionBudget")
    assert len(budgets) == len(SERVICES)
    assert all(b["spec"]["maxUnavailable"] == 1 for b in budgets.values())


def test_prometheus_rule_carries_the_repository_rule_files(helm: Path) -> None:
    [rule] = of_kind(rendered(helm, "ingress"), "PrometheusRule").values()
    expected = [g for f in sorted(RULES.glob("*.yml"))
                for g in yaml.safe_load(f.read_text(encoding="utf-8"))["groups"]]
    assert expected
    assert rule["spec"]["groups"] == expected
    link = CHART / "files" / "prometheus-rules"
    assert link.is_symlink()
    assert link.resolve() == RULES.resolve()


def test_service_monitor_names_each_job_as_the_rules_expect(helm: Path) -> None:
    objects = rendered(helm, "ingress")
    [monitor] = of_kind(objects, "ServiceMonitor").values()
    job_label = monitor["spec"]["jobLabel"]
    jobs = {s["metadata"]["labels"][job_label] for s in of_kind(objects, "Service").values()}
    assert jobs == set(SERVICES)
    selector = monitor["spec"]["selector"]["matchLabels"]
    for service in of_kind(objects, "Service").values():
        assert selector.items() <= service["metadata"]["labels"].items()
        assert "ops" in {p["name"] for p in service["spec"]["ports"]}
    pipeline = (RULES / "pipeline.yml").read_text(encoding="utf-8")
    assert 'job=~"intake|auth|executor|notifier"' in pipeline
    assert monitor["spec"]["endpoints"] == [{"port": "ops", "path": "/metrics",
                                             "interval": "30s"}]


def _intake_headers() -> set[str]:
    """The X- request headers intake's code reads (signatures, delivery ids)."""
    return {h for path in (ROOT / "services" / "intake").glob("*.py")
            for h in re.findall(r"""["'](X-[A-Za-z-]+)["']""", path.read_text(encoding="utf-8"))}


def test_ingress_passes_every_signature_header_and_the_path_unchanged(helm: Path) -> None:
    [ingress] = of_kind(rendered(helm, "ingress"), "Ingress").values()
    listed = set(chart_values()["ingress"]["signatureHeaders"])
    assert _intake_headers() <= listed, _intake_headers() - listed
    annotations = ingress["metadata"]["annotations"]
    assert set(annotations["os-intervention/signature-headers"].split(",")) == listed
    # The signature covers method and path: a rewrite or a stripped header breaks it.
    assert not [a for a in annotations if "rewrite" in a or "snippet" in a]
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["path"] == "/v1/"
    assert path["pathType"] == "Prefix"
    assert path["backend"]["service"]["port"] == {"name": "http"}
    assert ingress["spec"]["tls"] == [{"hosts": ["intake.example.net"],
                                       "secretName": "intake-tls"}]
    body_cap = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    from services.intake.settings import IntakeSettings

    limit = IntakeSettings.model_fields["intake_max_body_bytes"].default
    assert int(body_cap.removesuffix("k")) * 1024 > limit  # intake answers 413 itself


def test_chart_app_version_is_the_distribution_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == project["project"]["version"]


# --- the vendored CRD schemas -------------------------------------------------------------


def crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The vendored openAPIV3Schema for a custom resource, made strict; None for core kinds.

    The API server prunes fields a structural schema does not declare, so a misspelt field
    would vanish without an error; declaring ``additionalProperties: false`` wherever the
    schema lists properties (and does not preserve unknown fields) turns that into a failure.
    """
    group, _, version = api_version.rpartition("/")
    vendored = {p.name.split("-", 1)[1].rsplit("-", 1)[0] for p in CRD_SCHEMAS.glob("*.json")}
    if group not in vendored:
        return None
    path = CRD_SCHEMAS / f"{kind.lower()}-{group}-{version}.json"
    assert path.exists(), f"no vendored schema for {api_version} {kind} in {CRD_SCHEMAS}"
    schema = json.loads(path.read_text(encoding="utf-8"))
    strict = copy.deepcopy(schema)
    for node in _schema_nodes(strict):
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
    # apiVersion/kind/metadata are the API server's to check, not the CRD's.
    strict.setdefault("properties", {}).update(
        {"apiVersion": {"const": api_version}, "kind": {"const": kind},
         "metadata": {"type": "object"}})
    return strict


def _schema_nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schema_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schema_nodes(value)
