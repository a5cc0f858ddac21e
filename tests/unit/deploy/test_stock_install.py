"""A stock distribution's python3: the project lives in its own ``.venv``, never the system's.

Debian 12 and Ubuntu 24.04 refuse ``pip install`` into their python3 (PEP 668), so the
bootstrap makes ``.venv`` and every Makefile target runs its tools from there. What is
checked here is the part a test can run without reinstalling anything: the interpreter
check at the top of the bootstrap, the Makefile's recipes, and the pip calls' target.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BOOTSTRAP = ROOT / "deploy" / "local" / "bootstrap.sh"
MAKEFILE = ROOT / "Makefile"
TOOLS = ("intervene", "ruff", "mypy", "pytest", "python", "python3", "pip")


def _bootstrap(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(BOOTSTRAP)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env}, check=False)


def test_bootstrap_refuses_a_missing_interpreter_naming_what_to_install() -> None:
    done = _bootstrap({"PYTHON": "/nonexistent/python3"})
    assert done.returncode == 2
    assert "Python >= 3.11" in done.stderr
    assert "python3-venv" in done.stderr


def test_bootstrap_refuses_python_older_than_3_11_stand_in_interpreter(tmp_path: Path) -> None:
    # No Python 3.10 exists on this machine: a stand-in answers the two questions the
    # bootstrap asks an interpreter (is it >= 3.11, which version is it) as 3.10 would.
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\n"
                   "case \"$2\" in *version_info*) exit 1 ;; *) echo 3.10.12 ;; esac\n")
    old.chmod(0o755)
    done = _bootstrap({"PYTHON": str(old)})
    assert done.returncode == 2, done.stderr
    assert f"{old} is Python 3.10.12; the project needs >= 3.11" in done.stderr


def test_bootstrap_installs_only_into_the_project_virtualenv() -> None:
    text = BOOTSTRAP.read_text(encoding="utf-8")
    pip_calls = [line.strip() for line in text.splitlines()
                 if "pip install" in line and not line.lstrip().startswith("#")]
    assert pip_calls, "the bootstrap installs the project with pip"
    for call in pip_calls:
        assert call.startswith('"$venv/bin/python" -m pip install'), call
    assert re.search(r'"\$python" -m venv "\$venv"', text)
    assert ".venv/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_every_make_recipe_runs_its_tools_from_the_venv() -> None:
    recipes = [line.strip() for line in MAKEFILE.read_text(encoding="utf-8").splitlines()
               if line.startswith("\t")]
    assert recipes
    for recipe in recipes:
        command = recipe.lstrip("@").split()[0]
        if command in ("bash",):
            continue
        assert command.startswith("$(BIN)/"), f"{recipe!r} runs a tool from PATH"
        assert command.removeprefix("$(BIN)/") in TOOLS
    assert re.search(r"^BIN := \$\(VENV\)/bin$", MAKEFILE.read_text(), re.MULTILINE)
    assert re.search(r"^VENV := \.venv$", MAKEFILE.read_text(), re.MULTILINE)


def test_nothing_runs_python_or_intervene_from_path() -> None:
    """Services, tests and benchmarks start Python as ``sys.executable`` (the venv's when
    pytest runs from it), never a bare ``python3``/``intervene`` that PATH may resolve to
    the system interpreter, which has none of the project's packages."""
    bare = re.compile(r"""\[\s*["'](python3?|intervene|pytest)["']""")
    offenders = [f"{path.relative_to(ROOT)}:{n}"
                 for folder in ("services", "tests", "bench")
                 for path in (ROOT / folder).rglob("*.py")
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if bare.search(line) and "compose" not in path.name]
    assert offenders == []


def test_bootstrap_names_the_go_to_install_when_the_one_on_path_is_too_old_stand_in_go(
        tmp_path: Path) -> None:
    # A copy of the bootstrap in a checkout without FerretDB built, and a stand-in `go` that
    # answers `go env GOVERSION` as Debian 12's golang-go (1.19) does: no such Go is here.
    checkout = tmp_path / "checkout"
    (checkout / "deploy" / "local").mkdir(parents=True)
    (checkout / "deploy" / "local" / "bootstrap.sh").write_text(
        BOOTSTRAP.read_text(encoding="utf-8"), encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "go").write_text("#!/bin/sh\necho go1.19.8\n")
    (bin_dir / "go").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    done = subprocess.run(["bash", str(checkout / "deploy" / "local" / "bootstrap.sh")],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 2, done.stderr
    assert "FerretDB 1.24 is built with Go >= 1.24, found go1.19" in done.stderr
    assert "go1.24.linux-amd64.tar.gz" in done.stderr
    assert not (checkout / ".venv").exists()
