"""The document linters, installed on first use into ``.cache/linters/`` (git-ignored).

Tools nobody on the project wrote check the committed interface documents
(tests/contract/test_document_linters.py):

- ``ajv`` (ajv-cli, Ajv 8 with ajv-formats), strict mode: the JSON Schemas in schemas/json/;
- ``redocly lint`` (@redocly/cli): docs/openapi.json;
- the AsyncAPI parser with its default ruleset, which is what ``asyncapi validate`` runs:
  docs/asyncapi.json (tests/tools/npm-asyncapi/validate.mjs says why not the CLI itself);
- Grafana's ``dashboard-linter``: deploy/grafana/dashboards/*.json.

The npm tools are pinned by tests/tools/npm-*/package-lock.json and installed with
``npm ci``; dashboard-linter is built with ``go build`` from its vendored source
(tests/tools/dashboard-linter/ORIGIN.md says why), its dependencies from the Go module
proxy. Each install is keyed by a digest of what it is built from, so a changed pin
reinstalls and an unchanged one costs nothing. A file lock keeps concurrent test processes
from installing twice.

``python tests/document_linters.py`` installs everything (what CI may run first to see the
install on its own).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tests" / "tools"
CACHE = ROOT / ".cache" / "linters"
NODE_MIN = (20, 19)  # @redocly/cli 2.x: node >= 20.19
INSTALL_TIMEOUT_S = 900


class ToolUnavailable(RuntimeError):
    """A linter cannot be installed here; the message says what to install."""


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(TOOLS)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(args: list[str], *, cwd: Path, what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False,
                            timeout=INSTALL_TIMEOUT_S, env=env)
    if result.returncode != 0:
        raise ToolUnavailable(f"{what} failed ({' '.join(args)}):\n"
                              f"{(result.stdout + result.stderr)[-3000:]}")


def _require(program: str, hint: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise ToolUnavailable(f"{program} not found: {hint}")
    return path


def node_version(text: str) -> tuple[int, int]:
    """``v20.19.2`` -> (20, 19)."""
    major, minor, *_ = text.strip().lstrip("v").split(".")
    return int(major), int(minor)


def _check_node() -> None:
    node = _require("node", "install Node.js >= 20.19 and npm (e.g. the NodeSource packages)")
    _require("npm", "install npm (it comes with Node.js)")
    found = subprocess.run([node, "--version"], capture_output=True, text=True, check=True,
                           timeout=30).stdout
    if node_version(found) < NODE_MIN:
        raise ToolUnavailable(f"Node.js {found.strip()} is too old for the document linters: "
                              f"install Node.js >= {NODE_MIN[0]}.{NODE_MIN[1]}")


def npm_tools(name: str) -> Path:
    """The installed ``node_modules`` folder of tests/tools/npm-<name>/ (installed if needed)."""
    source = TOOLS / f"npm-{name}"
    files = [source / "package.json", source / "package-lock.json"]
    files += sorted(source.glob("*.mjs"))
    target = CACHE / f"npm-{name}"
    stamp = target / ".installed"
    digest = _digest(files)
    with _locked():
        if stamp.exists() and stamp.read_text() == digest:
            return target / "node_modules"
        _check_node()
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for file in files:
            shutil.copy2(file, target / file.name)
        # --ignore-scripts: none of these packages needs an install script, and the one that
        # has one (@scarf/scarf, via redocly) only reports the download to its vendor.
        _run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=target,
             what=f"npm ci of tests/tools/npm-{name}")
        stamp.write_text(digest)
    return target / "node_modules"


def npm_bin(name: str, program: str) -> Path:
    return npm_tools(name) / ".bin" / program


def asyncapi_validator() -> list[str]:
    """The command that validates an AsyncAPI file (append the file)."""
    modules = npm_tools("asyncapi")
    return [_require("node", "install Node.js"), str(modules.parent / "validate.mjs")]


def dashboard_linter() -> Path:
    """The dashboard-linter binary, built from tests/tools/dashboard-linter/ if needed."""
    source = TOOLS / "dashboard-linter"
    files = [p for p in source.rglob("*") if p.is_file()]
    binary = CACHE / "bin" / "dashboard-linter"
    stamp = CACHE / "bin" / ".dashboard-linter"
    digest = _digest(files)
    with _locked():
        if binary.exists() and stamp.exists() and stamp.read_text() == digest:
            return binary
        go = _require("go", "install Go >= 1.26 (https://go.dev/dl/), as for FerretDB")
        binary.parent.mkdir(parents=True, exist_ok=True)
        # GOFLAGS=-mod=readonly: build exactly the vendored go.sum's dependencies.
        env = {**os.environ, "GOFLAGS": "-mod=readonly"}
        _run([go, "build", "-trimpath", "-o", str(binary), "."], cwd=source, env=env,
             what="building dashboard-linter")
        stamp.write_text(digest)
    return binary


def install_all() -> None:
    npm_tools("lint")
    npm_tools("asyncapi")
    dashboard_linter()


if __name__ == "__main__":
    try:
        install_all()
    except ToolUnavailable as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    print(f"document linters installed in {CACHE}")
