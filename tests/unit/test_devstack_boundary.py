"""Dev tooling stays out of the product: devstack/ (the local stack and the demo) is not in
the service distribution, no service imports it, and `intervene` without it keeps every
product command and says clearly why the local-stack ones are unavailable."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_the_distribution_ships_the_services_and_not_devstack() -> None:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    packages = set(find_packages(where=str(ROOT), include=find["include"],
                                 exclude=find.get("exclude", ())))
    assert {"services.executor.procedure", "services.notifier.templates", "schemas",
            "services.cli"} <= packages
    assert not {p for p in packages if p.split(".")[0] == "devstack" or "demo" in p}
    assert not (ROOT / "services" / "demo").exists()
    assert not (ROOT / "services" / "runtime" / "localstack.py").exists()


_WITHOUT_DEVSTACK = """
import sys
sys.modules["devstack"] = None  # as in an installed distribution: the package is absent
from services.cli.main import build_parser, main
commands = set(build_parser()._subparsers._group_actions[0].choices)
print(sorted(commands))
sys.exit(main(["down"]))
"""


def test_intervene_without_devstack_keeps_its_product_commands() -> None:
    result = subprocess.run([sys.executable, "-c", _WITHOUT_DEVSTACK], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    listed = result.stdout
    for command in ("'audit'", "'executor'", "'status'", "'topics'", "'keys'"):
        assert command in listed
    assert "'demo'" not in listed
    assert "development tooling (devstack/)" in result.stderr
