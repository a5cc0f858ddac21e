"""The committed interface documents pass the tools their readers use (issue 19).

Ajv in strict mode for the JSON Schemas, the AsyncAPI parser's ruleset (``asyncapi
validate``) for docs/asyncapi.json, ``redocly lint`` for docs/openapi.json and Grafana's
dashboard-linter for the dashboards. A test fails on any error or warning the tool reports;
the tools are installed on first use into .cache/linters (tests/document_linters.py). Each
tool is also shown a document broken the way ours used to be, so a tool that silently
accepts everything cannot pass these tests.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import document_linters as linters

from services.intake.examples import example_request

ROOT = linters.ROOT
SCHEMAS = sorted((ROOT / "schemas" / "json").glob("*.json"))
ASYNCAPI = ROOT / "docs" / "asyncapi.json"
OPENAPI = ROOT / "docs" / "openapi.json"
REDOCLY_CONFIG = linters.TOOLS / "redocly.yaml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))


def tool(install: Any, *args: Any) -> Any:
    try:
        return install(*args)
    except linters.ToolUnavailable as exc:
        pytest.fail(str(exc))  # never a skip: an uninstalled linter proves nothing


def run(args: list[str | Path], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


# --- JSON Schemas: Ajv, strict ------------------------------------------------------------


def ajv_compile(*files: Path) -> subprocess.CompletedProcess[str]:
    ajv = tool(linters.npm_bin, "lint", "ajv")
    args: list[str | Path] = [ajv, "compile", "--spec=draft2020", "--strict=true",
                              "-c", "ajv-formats"]
    for file in files:
        args += ["-s", file]
    return run(args, cwd=linters.CACHE / "npm-lint")  # where `-c ajv-formats` resolves


def test_every_json_schema_compiles_in_ajv_strict_mode() -> None:
    assert len(SCHEMAS) >= 15
    result = ajv_compile(*SCHEMAS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("is valid") == len(SCHEMAS), result.stdout


def test_every_json_schema_names_its_dialect_and_id() -> None:
    ids = set()
    for file in SCHEMAS:
        schema = json.loads(file.read_text(encoding="utf-8"))
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", file.name
        assert schema["$id"].endswith(file.name), file.name
        ids.add(schema["$id"])
    assert len(ids) == len(SCHEMAS)


@pytest.mark.parametrize("ip", ["203.0.113.10", "2001:db8::10"])
def test_ajv_accepts_the_helpdesk_example_request_and_refuses_a_bad_address(
        tmp_path: Path, ip: str) -> None:
    ajv = tool(linters.npm_bin, "lint", "ajv")
    schema = ROOT / "schemas" / "json" / "HelpdeskTicketRequest.json"
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(example_request(server={"ip": ip})), encoding="utf-8")
    bad.write_text(json.dumps(example_request(server={"ip": ip + "x"})), encoding="utf-8")
    args = [ajv, "validate", "--spec=draft2020", "--strict=true", "-c", "ajv-formats",
            "-s", schema]
    accepted = run([*args, "-d", good], cwd=linters.CACHE / "npm-lint")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    refused = run([*args, "-d", bad], cwd=linters.CACHE / "npm-lint")
    assert refused.returncode != 0
    assert "/server/ip" in refused.stdout + refused.stderr


def test_ajv_strict_rejects_a_format_it_does_not_know(tmp_path: Path) -> None:
    schema = json.loads((ROOT / "schemas" / "json" / "TicketSubmitted.json").read_text())
    schema["$defs"]["ServerRef"]["properties"]["ip"] = {"type": "string",
                                                        "format": "ipvanyaddress"}
    broken = tmp_path / "TicketSubmitted.json"
    broken.write_text(json.dumps(schema), encoding="utf-8")
    result = ajv_compile(broken)
    assert result.returncode != 0
    assert 'unknown format "ipvanyaddress"' in result.stderr


# --- AsyncAPI -------------------------------------------------------------------------------


def asyncapi_validate(file: Path) -> subprocess.CompletedProcess[str]:
    return run([*tool(linters.asyncapi_validator), file])


def test_the_asyncapi_document_validates_without_errors_or_warnings() -> None:
    result = asyncapi_validate(ASYNCAPI)
    assert result.returncode == 0, result.stdout + result.stderr


def test_asyncapi_validation_reports_an_invalid_binding(tmp_path: Path) -> None:
    document = json.loads(ASYNCAPI.read_text(encoding="utf-8"))
    operation = next(o for o in document["operations"].values() if o["action"] == "receive")
    group = operation["bindings"]["kafka"]["groupId"]
    group["enum"] = group["enum"] * 2  # duplicate consumer groups: invalid JSON Schema
    broken = tmp_path / "asyncapi.json"
    broken.write_text(json.dumps(document, indent=2), encoding="utf-8")
    result = asyncapi_validate(broken)
    assert result.returncode == 1
    assert " error " in result.stdout


# --- OpenAPI: redocly lint ------------------------------------------------------------------


def redocly_lint(file: Path) -> subprocess.CompletedProcess[str]:
    redocly = tool(linters.npm_bin, "lint", "redocly")
    return run([redocly, "lint", file, "--config", REDOCLY_CONFIG, "--format=stylish"])


def test_the_openapi_document_passes_redocly_lint_without_errors_or_warnings() -> None:
    result = redocly_lint(OPENAPI)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output, output


def test_redocly_lint_reports_a_document_without_servers(tmp_path: Path) -> None:
    document = json.loads(OPENAPI.read_text(encoding="utf-8"))
    document.pop("servers", None)
    broken = tmp_path / "openapi.json"
    broken.write_text(json.dumps(document, indent=2), encoding="utf-8")
    result = redocly_lint(broken)
    assert result.returncode != 0
    assert "no-empty-servers" in result.stdout + result.stderr


# --- Grafana: dashboard-linter --------------------------------------------------------------


def dashboard_lint(file: Path) -> subprocess.CompletedProcess[str]:
    # --strict: warnings fail too. The .lint file next to the dashboard is read from the
    # dashboard's folder (its exclusions name one panel each, with the reason).
    return run([tool(linters.dashboard_linter), "lint", "--strict", file])


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=[d.name for d in DASHBOARDS])
def test_every_dashboard_passes_the_dashboard_linter_strictly(dashboard: Path) -> None:
    result = dashboard_lint(dashboard)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_linter_reports_a_panel_without_unit_or_description(
    tmp_path: Path,
) -> None:
    board = json.loads(DASHBOARDS[0].read_text(encoding="utf-8"))
    panel = next(p for p in board["panels"] if p["type"] == "timeseries")
    broken_panel = copy.deepcopy(panel)
    broken_panel["description"] = ""
    broken_panel["fieldConfig"]["defaults"].pop("unit", None)
    board["panels"] = [p if p is not panel else broken_panel for p in board["panels"]]
    broken = tmp_path / "dashboard.json"
    broken.write_text(json.dumps(board), encoding="utf-8")
    result = dashboard_lint(broken)
    assert result.returncode != 0
    assert "has missing title or description" in result.stdout + result.stderr
    assert "has no or invalid units defined" in result.stdout + result.stderr


def test_node_versions_are_compared_by_major_then_minor() -> None:
    assert linters.node_version("v20.19.2") == (20, 19)
    assert linters.node_version("v18.20.8\n") < linters.NODE_MIN <= linters.node_version(
        "v22.1.0")
