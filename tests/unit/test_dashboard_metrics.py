"""The Grafana dashboard asks only for what the services really export.

Every panel query must parse as PromQL (promtool checks it as a recording rule), and every
metric it names must be one the services export — derived by building the services'
instruments in-process and reading the names back from the real OpenTelemetry → Prometheus
exporter (tests/metrics_catalogue.py), so a renamed instrument fails here, not on a blank
panel. The alert rules are held to the same names.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics_catalogue as catalogue

DATASOURCES = catalogue.ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
CATALOGUE_DOC = catalogue.ROOT / "docs" / "operations-metrics.md"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        # Never a skip: without promtool these checks prove nothing.
        pytest.fail("promtool not found: apt-get install --no-install-recommends prometheus")
    return path


@pytest.fixture(scope="module")
def exported() -> catalogue.Exported:
    return catalogue.exported_metrics()


@pytest.fixture(scope="module")
def known(exported: catalogue.Exported) -> set[str]:
    return exported.samples | catalogue.recording_rules() | catalogue.PROMETHEUS_SERIES


def test_the_dashboard_has_panels_with_queries_on_the_provisioned_data_source() -> None:
    [file] = catalogue.dashboard_files()
    board = json.loads(file.read_text(encoding="utf-8"))
    provisioned = {d["uid"]: d["type"] for f in DATASOURCES.glob("*.yml")
                   for d in yaml.safe_load(f.read_text(encoding="utf-8"))["datasources"]}
    # One data source variable, of the provisioned data source's type and defaulting to it,
    # so an operator with another Prometheus picks it without editing the JSON.
    [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert provisioned.get(variable["current"]["value"]) == variable["query"] == "prometheus"
    uses_variable = {"type": "prometheus", "uid": "${" + variable["name"] + "}"}
    panels = [p for p in catalogue._panels(board["panels"]) if p["type"] != "row"]
    assert len(panels) >= 20
    ids = [p["id"] for p in catalogue._panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        assert panel.get("targets"), f"{panel['title']} has no query"
        assert panel["datasource"] == uses_variable, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == uses_variable, panel["title"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == uses_variable, variable["name"]


def test_sla_compliance_panels_count_from_the_first_occurrence() -> None:
    """A series that appears only when first incremented shows in ``increase()`` from its
    second sample (issue 19): share-of-clocks stat panels must use counters the notifier
    exports at zero from its start (intervention_sla_met/breaches_total), never histogram
    buckets of series that appear on first use."""
    [file] = catalogue.dashboard_files()
    board = json.loads(file.read_text(encoding="utf-8"))
    shares = [p for p in catalogue._panels(board["panels"])
              if p["type"] == "stat" and p["fieldConfig"]["defaults"].get("unit") == "percentunit"]
    assert len(shares) >= 4
    targets = catalogue.dashboard_targets(file)  # Grafana's variables replaced
    for panel in shares:
        names = {s.name for t in targets if t.panel == panel["title"]
                 for s in catalogue.selectors(t.expr)}
        assert names == {"intervention_sla_met_total", "intervention_sla_breaches_total"}, (
            panel["title"], names)


def test_stat_panels_over_the_dashboard_range_are_instant_queries() -> None:
    [file] = catalogue.dashboard_files()
    board = json.loads(file.read_text(encoding="utf-8"))
    single_value = [p for p in catalogue._panels(board["panels"])
                    if p["type"] in ("stat", "bargauge", "table")]
    assert single_value
    for panel in single_value:
        for target in panel["targets"]:
            where = (panel["title"], target["refId"])
            assert target.get("instant") is True, where
            assert target.get("range") is False, where


def test_every_panel_query_parses_as_promql(tmp_path: Path) -> None:
    targets = catalogue.dashboard_targets()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{n}", "expr": t.expr} for n, t in enumerate(targets)]}]}
    file = tmp_path / "dashboard_queries.yml"
    file.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = subprocess.run([promtool(), "check", "rules", str(file)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_a_panel_queries_is_one_the_services_export(known: set[str]) -> None:
    missing = [f"{t.panel} [{t.ref}]: {s.name}"
               for t, s in catalogue.dashboard_selectors() if s.name not in known]
    assert not missing, "not exported by any service:\n" + "\n".join(missing)


def test_every_histogram_bound_a_panel_asks_for_is_an_exported_bucket(
    exported: catalogue.Exported,
) -> None:
    asked = [(t, s, m) for t, s in catalogue.dashboard_selectors()
             for m in s.matchers if m.label == "le"]
    for target, selector, matcher in asked:
        assert matcher.op == "=", f"{target.panel}: select one bucket exactly"
        assert matcher.value in exported.buckets.get(selector.name, set()), (
            f"{target.panel}: {selector.name} has no bucket le={matcher.value!r}; "
            f"it has {sorted(exported.buckets.get(selector.name, set()))}")


def test_the_alert_rules_query_only_exported_metrics(known: set[str]) -> None:
    missing = []
    for file in sorted(catalogue.RULES.glob("*.yml")):
        for group in yaml.safe_load(file.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                missing += [f"{file.name} {name}: {s.name}"
                            for s in catalogue.selectors(rule["expr"]) if s.name not in known]
    assert not missing, "\n".join(missing)


def test_the_selector_reader_tells_metrics_from_functions_labels_and_durations() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, job) (rate(a_bucket{x="1",y=~"b|c"}[5m])))'
            ' / on (job) group_left(z) max without (w) (b_total offset 1h) > bool 2'
            ' and {__name__="c", d!="e"} unless sum(d) by (q)')
    found = catalogue.selectors(expr)
    assert [s.name for s in found] == ["a_bucket", "b_total", "c", "d"]
    assert [(m.label, m.op, m.value) for m in found[0].matchers] == [
        ("x", "=", "1"), ("y", "=~", "b|c")]
    assert [(m.label, m.op, m.value) for m in found[2].matchers] == [("d", "!=", "e")]


def test_the_metric_catalogue_documents_every_exported_metric(
    exported: catalogue.Exported,
) -> None:
    doc = CATALOGUE_DOC.read_text(encoding="utf-8")
    families = {n.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
                .removesuffix("_sum") for n in exported.samples
                if n.startswith(("intervention_", "messaging_"))}
    undocumented = sorted(f for f in families if f not in doc)
    assert not undocumented, f"add to {CATALOGUE_DOC.name}: {undocumented}"
