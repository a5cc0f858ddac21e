"""Software installation: detect the package manager, then per package check, simulate,
install, verify — and remove again what this run installed if verification fails.

One step per package, so an interrupted run resumes at the package it was installing and a
package that was already there is reported as such. Names are validated against the
package naming rules of Debian and RPM before they reach a command, and are passed after
the options so none can be read as an option. Windows hosts are not automated here (there
is no package manager every Windows server has); access selection sends them to an engineer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from services.executor.runbooks.model import (
    Command,
    Context,
    Platform,
    Results,
    Runbook,
    Step,
    sh,
)

# Debian policy (lower-case, digits, "+-.") and RPM names (also upper-case and "_"); a
# leading letter or digit keeps any name from looking like an option.
PACKAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
PackageName = Annotated[str, Field(pattern=PACKAGE_PATTERN)]
MAX_PACKAGES = 20


class SoftwareParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    packages: Annotated[list[PackageName], Field(min_length=1, max_length=MAX_PACKAGES)]


Ctx = Context[SoftwareParams]

_MANAGERS = ("apt-get", "dnf", "yum", "zypper")
_DETECT = ('for t in "$@"; do command -v "$t" >/dev/null 2>&1 && { echo "$t"; exit 0; }; done; '
           "exit 0")
# dpkg's lock is held while another install runs (an unattended upgrade, or our own
# interrupted run still finishing); waiting for it beats failing on it.
_APT_LOCK_WAIT = ("-o", "DPkg::Lock::Timeout=300")


def _learn_manager(results: Results, ctx: Ctx) -> Mapping[str, Any]:
    found = results[0].stdout.strip() if results else ""
    return {"package_manager": found if found in _MANAGERS else ""}


def _refuse_no_manager(results: Results, ctx: Ctx) -> str | None:
    if not ctx.fact("package_manager"):
        return "no supported package manager (apt, dnf, yum, zypper) found"
    return None


def _installed_query(package: str) -> Any:
    def commands(ctx: Ctx) -> list[Command]:
        if ctx.fact("package_manager") == "apt-get":
            # Exit 1 means "not known to dpkg": an answer, not a failure.
            return [Command(argv=("dpkg-query", "-W", "-f=${Status}\\n", "--", package),
                            ok_exit=frozenset({0, 1}))]
        return [Command(argv=("rpm", "-q", "--", package), ok_exit=frozenset({0, 1}))]

    return commands


def _is_installed(results: Results, ctx: Ctx) -> bool:
    if not results or results[0].exit_status != 0:
        return False
    if ctx.fact("package_manager") == "apt-get":
        return results[0].stdout.strip().endswith("install ok installed")
    return True


def _simulate(package: str) -> Any:
    def commands(ctx: Ctx) -> list[Command]:
        manager = ctx.fact("package_manager")
        if manager == "apt-get":
            return [Command(argv=("apt-get", "-s", "-y", "--no-install-recommends", "install",
                                  package))]
        if manager == "zypper":
            return [Command(argv=("zypper", "--non-interactive", "install", "--dry-run",
                                  package), root=True)]
        # dnf/yum: a test transaction resolves and checks everything, writes nothing.
        return [Command(argv=(manager, "install", "-y", "--setopt=tsflags=test", package),
                        root=True)]

    return commands


def _install(package: str) -> Any:
    def commands(ctx: Ctx) -> list[Command]:
        manager = ctx.fact("package_manager")
        if manager == "apt-get":
            return [Command(argv=("env", "DEBIAN_FRONTEND=noninteractive", "apt-get",
                                  *_APT_LOCK_WAIT, "-y", "--no-install-recommends", "install",
                                  package), root=True)]
        if manager == "zypper":
            return [Command(argv=("zypper", "--non-interactive", "install", package), root=True)]
        return [Command(argv=(manager, "install", "-y", package), root=True)]

    return commands


def _remove(package: str) -> Any:
    def commands(ctx: Ctx) -> list[Command]:
        manager = ctx.fact("package_manager")
        if manager == "apt-get":
            return [Command(argv=("env", "DEBIAN_FRONTEND=noninteractive", "apt-get",
                                  *_APT_LOCK_WAIT, "-y", "remove", package), root=True)]
        if manager == "zypper":
            return [Command(argv=("zypper", "--non-interactive", "remove", package), root=True)]
        return [Command(argv=(manager, "remove", "-y", package), root=True)]

    return commands


def _linux(params: SoftwareParams) -> tuple[Step[SoftwareParams], ...]:
    steps: list[Step[SoftwareParams]] = [
        Step(name="detect", title="Find the package manager",
             precheck=lambda ctx: [sh(_DETECT, *_MANAGERS)], learn=_learn_manager,
             refuse=_refuse_no_manager),
    ]
    for package in dict.fromkeys(params.packages):  # the order given, duplicates once
        steps.append(Step(
            name=f"install:{package}", title=f"Install package {package}",
            precheck=_installed_query(package),
            needed=lambda results, ctx: not _is_installed(results, ctx),
            simulate=_simulate(package), change=_install(package),
            verify=_installed_query(package), verified=_is_installed,
            rollback=_remove(package),
            # Re-runnable: the pre-check asks the package database, which knows whether
            # an interrupted install completed; the install itself waits for dpkg's lock.
            rerunnable=True,
        ))
    return tuple(steps)


def _build(params: SoftwareParams, platform: Platform) -> tuple[Step[SoftwareParams], ...]:
    return _linux(params)


SOFTWARE_INSTALLATION: Runbook[SoftwareParams] = Runbook(
    name="software_installation", category="software_installation",
    title="Software installation", platforms=frozenset({"linux"}), params=SoftwareParams,
    build=_build,
)
