"""The Prometheus configuration and alert rules: valid, unit-tested with promtool, wired.

``promtool test rules`` runs tests/promtool/*.yml: each alert fires on the input series that
should page and stays quiet on those that should not. promtool comes with Debian's
``prometheus`` package; without it these tests fail (never skip).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.yml"))
COMPOSE = ROOT / "deploy" / "compose.yaml"
CATALOGUE_DOC = ROOT / "docs" / "operations-metrics.md"
APP_SERVICES = ("intake", "auth", "executor", "notifier")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: apt-get install --no-install-recommends prometheus")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, check=False)


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for file in RULE_FILES for group in _load(file)["groups"]
            for rule in group["rules"] if "alert" in rule}


def test_rule_files_are_valid() -> None:
    assert RULE_FILES
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    assert RULE_TESTS
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_both_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for file in RULE_TESTS:
        for case in _load(file)["tests"]:
            for check in case.get("alert_rule_test") or []:
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - firing == set(), "never shown to fire"
    assert alerts - quiet == set(), "never shown to stay quiet"


def test_the_expected_alerts_exist() -> None:
    assert set(_alerts()) == {
        "InitialResponseBudgetFastBurn", "InitialResponseBudgetSlowBurn",
        "CompletionBudgetFastBurn", "CompletionBudgetSlowBurn",
        "InterventionServiceDown", "ConsumerLagGrowing", "DeadLetterQueueReceiving",
        "AcceptedTicketsNotPublished", "TicketsWaitingForPickup", "InitialResponseAtRisk"}


def test_burn_rate_alerts_pair_a_long_and_a_short_window() -> None:
    pairs = {"FastBurn": ("rate1h", "rate5m", "14.4"), "SlowBurn": ("rate6h", "rate30m", "6")}
    for name, rule in _alerts().items():
        for kind, (long_window, short_window, factor) in pairs.items():
            if name.endswith(kind):
                expr = rule["expr"]
                assert long_window in expr, name
                assert short_window in expr, name
                assert re.search(rf"\(\s*{re.escape(factor)}\s*\*", expr), name
                assert " and " in " ".join(expr.split()), name


def test_every_alert_has_a_severity_and_a_documented_runbook() -> None:
    doc = CATALOGUE_DOC.read_text(encoding="utf-8")
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in ("page", "warning"), name
        assert rule["annotations"]["runbook"] == f"docs/operations-metrics.md#{name.lower()}"
        assert re.search(rf"^#+ `?{name}`?$", doc, re.MULTILINE), f"{name} not in the doc"


def test_prometheus_config_is_valid_with_its_rules(tmp_path: Path) -> None:
    config = _load(PROMETHEUS / "prometheus.yml")
    # In the container the rules sit at /etc/prometheus/rules; check these very files.
    config["rule_files"] = [str(PROMETHEUS / "rules" / "*.yml")]
    file = tmp_path / "prometheus.yml"
    file.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = promtool("check", "config", str(file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout, result.stdout


def test_each_service_is_scraped_at_the_port_compose_gives_its_metrics() -> None:
    config = _load(PROMETHEUS / "prometheus.yml")
    services = _load(COMPOSE)["services"]
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in config["scrape_configs"]}
    assert set(jobs) == set(APP_SERVICES), "one job per service: `job` names the service"
    for name, targets in jobs.items():
        [target] = targets
        host, port = target.split(":")
        assert host == name
        assert host in services
        env = services[name]["environment"]
        # Every service, intake included, serves /metrics on its ops port, not a public one.
        assert str(env["OPS_HTTP_PORT"]) == port, f"{name} serves /metrics on {port}"
        assert env["OPS_HTTP_HOST"] == "0.0.0.0", f"{name} must listen beyond loopback"  # noqa: S104
        published = [str(p).split(":")[-1] for p in services[name].get("ports", [])]
        assert port not in published, f"{name}'s /metrics must not be published"


def test_compose_runs_prometheus_and_grafana_with_the_files_from_deploy() -> None:
    services = _load(COMPOSE)["services"]
    for name in ("prometheus", "grafana"):
        mounts = [v.split(":")[0] for v in services[name]["volumes"] if v.startswith("./")]
        assert mounts, name
        for source in mounts:
            assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
    prom_mounts = {v.split(":")[0]: v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert prom_mounts["./prometheus/rules"] == "/etc/prometheus/rules"
    assert _load(PROMETHEUS / "prometheus.yml")["rule_files"] == ["/etc/prometheus/rules/*.yml"]
