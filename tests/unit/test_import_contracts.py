"""The import boundaries hold, checked by a machine: `lint-imports` with the contracts in
pyproject.toml (services independent; tooling -> services -> runtime -> schemas; pure
decision modules free of I/O libraries; no import cycles in the shared runtime)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_are_declared() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ids = {contract["id"] for contract in config["contracts"]}
    assert ids == {"services-independent", "layers", "pure-modules", "runtime-acyclic"}
    pure = next(c for c in config["contracts"] if c["id"] == "pure-modules")
    assert {"services.executor.procedure", "services.executor.access",
            "services.executor.outcome", "services.auth.verdict", "services.notifier.sla",
            "services.notifier.updates", "services.intake.validation",
            "schemas"} <= set(pure["source_modules"])
    assert {"pymongo", "aiokafka", "faststream", "asyncssh", "aiohttp", "httpx",
            "fastapi"} <= set(pure["forbidden_modules"])


def test_lint_imports_finds_every_contract_kept() -> None:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) \
        or shutil.which("lint-imports")
    if command is None:
        pytest.fail("lint-imports is not installed: pip install import-linter (a dev "
                    "dependency in pyproject.toml)")
    result = subprocess.run([command, "--no-cache", "--no-logo"], cwd=ROOT,
                            capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
